//! The state a model carries between steps, one entry per layer, of the kind its
//! architecture declares ([`CacheKind`]): key/value caches ([`KvLayer`]: global-attention
//! layers write into buffers grown 256 positions at a time — one in-place slice update per
//! step instead of re-copying the history — and sliding-window layers keep only their window),
//! recurrent state ([`Recurrent`]: linear-attention layers' convolution tail and state matrix),
//! or nothing (layers that read another layer's keys/values). On the CPU decode path a
//! key/value layer moves to host memory ([`KvLayer::host`], `attention::host::HostKv`) and
//! back to MLX arrays on the next MLX use ([`KvLayer::flush`]); a finished sequence's cache
//! reaches the prompt cache with those layers still on the host, copied once by
//! [`Cache::compact`].
//! While sequences decode together through MLX, each one's layer lends its keys/values to
//! the batch's shared buffer ([`batch_update`], [`BatchKv`]) and takes its row back at its
//! next use on its own (leaving the batch, the prompt cache, a clone). The prompt cache stores
//! compact copies ([`Cache::compact`]: exactly the positions held, in arrays of their own).

use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use std::sync::{Arc, Mutex};

use mlx_rs::Array;

use super::attention::host::HostKv;

/// Positions a global layer's buffer grows by.
pub(crate) const STEP: i32 = 256;

use crate::diagnostic::{code, Result};

/// Keys and values of one attention layer, `[B, kv_heads, T, head_dim]`.
/// Cloning shares the arrays (MLX arrays are values: a later write makes a new buffer); a
/// clone of a layer lent to a batch holds its row as it is at the time of the clone.
#[derive(Debug, Default)]
pub struct KvLayer {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions held (global layers: the buffers may be longer).
    len: i32,
    /// Updated with a sliding window (may have dropped old positions).
    sliding: bool,
    /// While decode steps run on the host: every position held, and `keys`/`values` are
    /// `None` (see [`Self::host`]).
    host: Option<HostKv>,
    /// While the sequence decodes in a batch through MLX: its row there, and `keys`/`values`
    /// are `None` (see [`batch_update`]).
    batch: Option<BatchSlot>,
}

impl Clone for KvLayer {
    fn clone(&self) -> Self {
        let mut out = Self {
            keys: self.keys.clone(),
            values: self.values.clone(),
            len: self.len,
            sliding: self.sliding,
            host: self.host.clone(),
            batch: None,
        };
        if let Some(slot) = &self.batch {
            match slot.row() {
                Ok(row) => out.set_row(row),
                // Unreachable in practice: the batch's lock is never held across a panic.
                Err(d) => tracing::error!("copying a batched key/value layer: {}", d.message),
            }
        }
        out
    }
}

impl KvLayer {
    /// Appends new keys/values and returns what the new queries attend over: the full history,
    /// or for a sliding-window layer the last `window - 1` cached positions plus the new ones.
    /// A sliding-window layer keeps only the last `window - 1` positions afterwards (the next
    /// query sees those plus itself).
    pub fn update(
        &mut self,
        keys: Array,
        values: Array,
        window: Option<usize>,
    ) -> Result<(Array, Array)> {
        self.flush()?;
        if window.is_none() {
            return self.append(keys, values);
        }
        self.sliding = true; // prompt cache: see `Cache::resumable_at`
        let (k, v) = match (self.keys.take(), self.values.take()) {
            (Some(pk), Some(pv)) => (concatenate(&[pk, keys], 2)?, concatenate(&[pv, values], 2)?),
            _ => (keys, values),
        };
        let (keep_k, keep_v) = match window {
            Some(w) if k.shape()[2] as usize >= w => {
                let len = k.shape()[2];
                let start = len - (w as i32 - 1);
                let idx = Array::from_iter(start..len, &[len - start]);
                (k.take_axis(&idx, 2)?, v.take_axis(&idx, 2)?)
            }
            _ => (k.clone(), v.clone()),
        };
        self.keys = Some(keep_k);
        self.values = Some(keep_v);
        Ok((k, v))
    }
}

impl KvLayer {
    /// Global layer: writes the new positions into the buffers (grown when full) and returns
    /// views of everything held.
    fn append(&mut self, keys: Array, values: Array) -> Result<(Array, Array)> {
        let new = keys.shape()[2];
        let need = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |k| k.shape()[2]);
        if need > capacity {
            let cap = (need + STEP - 1) / STEP * STEP;
            let grow = |old: Option<Array>, like: &Array| -> Result<Array> {
                let s = like.shape();
                let fresh = mlx_rs::ops::zeros_dtype(&[s[0], s[1], cap, s[3]], like.dtype())?;
                Ok(match old {
                    Some(old) if self.len > 0 => {
                        let mut fresh = fresh;
                        let held = old.index((.., .., ..self.len, ..));
                        fresh.try_index_mut((.., .., ..self.len, ..), &held)?;
                        fresh
                    }
                    _ => fresh,
                })
            };
            let k = grow(self.keys.take(), &keys)?;
            let v = grow(self.values.take(), &values)?;
            self.keys = Some(k);
            self.values = Some(v);
        }
        let (Some(kb), Some(vb)) = (self.keys.as_mut(), self.values.as_mut()) else {
            unreachable!("buffers exist after growing");
        };
        kb.try_index_mut((.., .., self.len..need, ..), &keys)?;
        vb.try_index_mut((.., .., self.len..need, ..), &values)?;
        self.len = need;
        Ok((
            kb.index((.., .., ..need, ..)),
            vb.index((.., .., ..need, ..)),
        ))
    }
}

impl KvLayer {
    /// The layer on the host for a decode step (`heads` key/value heads of width `dim`),
    /// copied out of the MLX arrays at the first call after an MLX update.
    pub fn host(&mut self, heads: usize, dim: usize, window: Option<usize>) -> Result<&mut HostKv> {
        if self.host.is_none() {
            self.flush()?; // a row lent to a batch comes back first
            let held = match self.state() {
                Some((k, v)) => HostKv::from_mlx(&k, &v, window)?,
                None => HostKv::empty(heads, dim, window, mlx_rs::Dtype::Float32),
            };
            self.sliding |= window.is_some();
            (self.keys, self.values, self.len) = (None, None, 0);
            self.host = Some(held);
        }
        self.host
            .as_mut()
            .ok_or_else(|| wrong_kind(0, "host key/value"))
    }

    /// Moves a host-held layer back into MLX arrays (a no-op when it is in MLX already).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(slot) = self.batch.take() {
            let row = slot.row()?;
            self.set_row(row);
        }
        let Some(host) = self.host.take() else {
            return Ok(());
        };
        if host.positions() > 0 {
            let (k, v) = host.to_mlx()?;
            self.len = k.shape()[2];
            (self.keys, self.values) = (Some(k), Some(v));
        }
        Ok(())
    }

    /// Keys and values held (views; for a global layer without the unused buffer tail), or
    /// `None` before the first update.
    pub fn state(&self) -> Option<(Array, Array)> {
        if let Some(slot) = &self.batch {
            return slot
                .row()
                .map_err(|d| tracing::error!("reading a batched key/value layer: {}", d.message))
                .ok()
                .flatten();
        }
        if let Some(host) = &self.host {
            return host
                .to_mlx()
                .map_err(|d| tracing::error!("reading a host key/value layer: {}", d.message))
                .ok();
        }
        let (k, v) = (self.keys.as_ref()?, self.values.as_ref()?);
        if k.shape()[2] == self.len || self.len == 0 {
            return Some((k.clone(), v.clone()));
        }
        Some((
            k.index((.., .., ..self.len, ..)),
            v.index((.., .., ..self.len, ..)),
        ))
    }
}

/// The recurrent state of a linear-attention layer: the last inputs of its short
/// convolution and its state matrix (shapes owned by the architecture).
#[derive(Debug, Default, Clone)]
pub struct Recurrent {
    /// The convolution's input tail.
    pub conv: Option<Array>,
    /// The recurrent state.
    pub state: Option<Array>,
}

/// What one layer keeps between steps, declared by the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// Keys and values (global or sliding-window attention).
    Kv,
    /// Recurrent state (linear attention).
    Recurrent,
    /// Nothing: the layer reads another layer's keys/values (shared KV) or has no memory.
    None,
}

/// One layer's cache.
#[derive(Debug, Clone)]
pub enum LayerCache {
    /// See [`KvLayer`].
    Kv(KvLayer),
    /// See [`Recurrent`].
    Recurrent(Recurrent),
    /// The layer keeps nothing.
    None,
}

/// The cache of a whole model: one [`LayerCache`] per layer plus the position offset.
/// A clone is an independent snapshot sharing the arrays (see [`KvLayer`]).
#[derive(Debug, Clone)]
pub struct Cache {
    /// Per-layer caches.
    pub layers: Vec<LayerCache>,
    /// Number of positions already processed.
    pub offset: usize,
}

impl Cache {
    /// An empty cache with one layer of each declared kind.
    pub fn new(kinds: &[CacheKind]) -> Self {
        let layers = kinds
            .iter()
            .map(|k| match k {
                CacheKind::Kv => LayerCache::Kv(KvLayer::default()),
                CacheKind::Recurrent => LayerCache::Recurrent(Recurrent::default()),
                CacheKind::None => LayerCache::None,
            })
            .collect();
        Self { layers, offset: 0 }
    }

    /// The key/value cache of layer `i`.
    pub fn kv(&mut self, i: usize) -> Result<&mut KvLayer> {
        match self.layers.get_mut(i) {
            Some(LayerCache::Kv(kv)) => Ok(kv),
            _ => Err(wrong_kind(i, "key/value")),
        }
    }

    /// The key/value cache of layer `i`, read-only (shared-KV layers).
    pub fn kv_ref(&self, i: usize) -> Result<&KvLayer> {
        match self.layers.get(i) {
            Some(LayerCache::Kv(kv)) => Ok(kv),
            _ => Err(wrong_kind(i, "key/value")),
        }
    }

    /// The recurrent state of layer `i`.
    pub fn recurrent(&mut self, i: usize) -> Result<&mut Recurrent> {
        match self.layers.get_mut(i) {
            Some(LayerCache::Recurrent(r)) => Ok(r),
            _ => Err(wrong_kind(i, "recurrent")),
        }
    }
}

/// An architecture asked for a cache its own declaration does not give that layer: a bug.
fn wrong_kind(layer: usize, kind: &str) -> crate::diagnostic::Diagnostic {
    crate::diagnostic::Diagnostic::error(
        code::Engine::Cache,
        format!("layer {layer} has no {kind} cache (internal error: cache kinds mismatch)"),
    )
}

/// What the prompt cache (`engine::prefix_cache`) needs of a cache: where it can be resumed,
/// a copy cut back to a prefix, its size.
impl Cache {
    /// Whether a copy cut back to `len` positions holds exactly what a run over the first
    /// `len` tokens would leave: at the length held always; at a shorter one only when every
    /// layer still holds every position (global key/value buffers, sliding windows not yet
    /// full, layers without state) — a full sliding window has dropped the positions a
    /// shorter run would keep, and a recurrent state cannot be rewound.
    pub fn resumable_at(&self, len: usize) -> bool {
        len == self.offset
            || (len < self.offset && self.layers.iter().all(|l| l.holds_all(self.offset)))
    }

    /// Whether some layer can lose the ability to be cut back (a recurrent state, a sliding
    /// window): such caches are stored at the lengths worth resuming, not only at the end.
    pub fn has_exact_only_layers(&self) -> bool {
        self.layers.iter().any(|l| match l {
            LayerCache::Kv(kv) => kv.sliding,
            LayerCache::Recurrent(_) => true,
            LayerCache::None => false,
        })
    }

    /// A copy cut back to `len` positions (sharing the arrays), or `None` where
    /// [`Self::resumable_at`] says no.
    pub fn trimmed(&self, len: usize) -> Option<Cache> {
        if !self.resumable_at(len) {
            return None;
        }
        let mut out = self.clone();
        if len < self.offset {
            for layer in &mut out.layers {
                if let LayerCache::Kv(kv) = layer {
                    kv.trim(len);
                }
            }
            out.offset = len;
        }
        Some(out)
    }

    /// A copy holding exactly what this cache holds, each array in a buffer of its own (see
    /// [`owned_copy`]): a global key/value layer its positions, not the buffer grown 256
    /// positions at a time it writes into; a layer lent to a batch its row, not the batch's
    /// shared buffer; a host-held layer its positions as MLX arrays; a recurrent layer its
    /// arrays, not the prefill chunk a convolution tail is a view of. What the prompt cache
    /// stores, so that [`Self::nbytes`] of the copy is what it keeps alive. The copy grows
    /// like any cache (a global layer's next update moves it into a new buffer).
    ///
    /// Lazy: evaluate it ([`Self::materialize`]) while `self` still holds its arrays, so that
    /// MLX cannot hand a copy the buffer of its source.
    pub fn compact(&self) -> Result<Cache> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(match l {
                    LayerCache::Kv(kv) => LayerCache::Kv(kv.compact()?),
                    LayerCache::Recurrent(r) => LayerCache::Recurrent(Recurrent {
                        conv: r.conv.as_ref().map(owned_copy).transpose()?,
                        state: r.state.as_ref().map(owned_copy).transpose()?,
                    }),
                    LayerCache::None => LayerCache::None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cache {
            layers,
            offset: self.offset,
        })
    }

    /// Bytes of the arrays held, host layers included: for a [`Self::compact`] copy what it
    /// keeps alive; otherwise a global layer counts its whole buffer, and a view (a
    /// convolution tail) only its own elements, not the buffer behind it.
    pub fn nbytes(&self) -> usize {
        let host: usize = self
            .layers
            .iter()
            .filter_map(|l| match l {
                LayerCache::Kv(KvLayer { host: Some(h), .. }) => Some(h.nbytes()),
                _ => None,
            })
            .sum();
        host + self.arrays().map(Array::nbytes).sum::<usize>()
    }

    /// Computes every array held, so a stored copy does not keep a pending graph (and the
    /// buffers it reads) alive.
    pub fn materialize(&self) -> Result<()> {
        let arrays: Vec<&Array> = self.arrays().collect();
        if !arrays.is_empty() {
            mlx_rs::transforms::eval(arrays)?;
        }
        Ok(())
    }

    fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.layers.iter().flat_map(|l| {
            let pair = match l {
                LayerCache::Kv(kv) => [kv.keys.as_ref(), kv.values.as_ref()],
                LayerCache::Recurrent(r) => [r.conv.as_ref(), r.state.as_ref()],
                LayerCache::None => [None, None],
            };
            pair.into_iter().flatten()
        })
    }
}

/// `a` in a new buffer of exactly its size, with the same values bit for bit. MLX's slices
/// and `copy` share their source's buffer, and so does `contiguous` when that buffer is at
/// most 16 KiB larger than the view (MLX 0.32.2, measured: a 250-position view of a
/// 256-position buffer of one head), so a stored view of a few positions would keep the whole buffer alive and its
/// byte count would miss the rest. An element-wise product with one always writes a new
/// array while its input's buffer is still held elsewhere (MLX donates an input's buffer to
/// the output only when nothing else holds it), which [`Cache::compact`]'s callers ensure.
fn owned_copy(a: &Array) -> Result<Array> {
    let one = mlx_rs::ops::ones_dtype(&[], a.dtype())?;
    Ok(a.multiply(&one)?)
}

fn owned_pair(k: &Array, v: &Array) -> Result<(Array, Array)> {
    Ok((owned_copy(k)?, owned_copy(v)?))
}

impl LayerCache {
    /// Whether the layer holds every one of the `offset` positions seen (so it can be cut
    /// back to any of them).
    fn holds_all(&self, offset: usize) -> bool {
        match self {
            LayerCache::Kv(kv) => kv.held() == offset,
            LayerCache::Recurrent(_) => offset == 0,
            LayerCache::None => true,
        }
    }
}

impl KvLayer {
    /// Positions held: a global layer's count, a sliding layer's window contents.
    fn held(&self) -> usize {
        if let Some(host) = &self.host {
            return host.held();
        }
        if self.batch.is_some() {
            return self.state().map_or(0, |(k, _)| k.shape()[2] as usize);
        }
        if self.sliding {
            self.keys.as_ref().map_or(0, |k| k.shape()[2] as usize)
        } else {
            self.len as usize
        }
    }

    /// The positions held as arrays of their own (see [`Cache::compact`]), outside any batch
    /// or host copy.
    fn compact(&self) -> Result<KvLayer> {
        let held = if let Some(slot) = &self.batch {
            slot.row()?.map(|(k, v)| owned_pair(&k, &v)).transpose()?
        } else if let Some(host) = &self.host {
            // `to_mlx` writes new arrays of exactly the positions held.
            (host.positions() > 0).then(|| host.to_mlx()).transpose()?
        } else {
            self.state().map(|(k, v)| owned_pair(&k, &v)).transpose()?
        };
        let mut out = KvLayer {
            sliding: self.sliding,
            ..KvLayer::default()
        };
        out.set_row(held);
        Ok(out)
    }

    /// Keeps only the first `len` positions (the caller checked they are all held).
    fn trim(&mut self, len: usize) {
        if let Err(d) = self.flush() {
            // Unreachable in practice: sequences hand their caches over flushed.
            tracing::error!("trimming a host key/value layer: {}", d.message);
        }
        if self.sliding {
            let cut = |a: &Array| a.index((.., .., ..len as i32, ..));
            self.keys = self.keys.as_ref().map(cut);
            self.values = self.values.as_ref().map(cut);
        } else {
            self.len = len as i32;
        }
    }
}

impl KvLayer {
    /// Whether the layer's keys/values are lent to a batch (see [`batch_update`]).
    pub fn in_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Holds `row` (a row taken back from a batch) as its keys and values.
    fn set_row(&mut self, row: Option<(Array, Array)>) {
        match row {
            Some((k, v)) => (self.len, self.keys, self.values) = (k.shape()[2], Some(k), Some(v)),
            None => (self.len, self.keys, self.values) = (0, None, None),
        }
    }
}

/// One layer's keys and values of every sequence of a decode batch, left-padded in one
/// buffer `[B, kv_heads, capacity, head_dim]`: row `b` holds its positions in columns
/// `starts[b]..end` and every row writes its next position at column `end` — one slice
/// update per step for the whole batch, each row's attention masked to its own columns.
/// Sliding-window layers keep growing here (their dead columns are dropped when the buffer
/// grows); a row taken back holds only its window, as [`KvLayer::update`] would.
#[derive(Debug)]
pub struct BatchKv {
    keys: Array,
    values: Array,
    starts: Vec<i32>,
    end: i32,
    window: Option<usize>,
}

/// A layer's row in a shared [`BatchKv`].
#[derive(Debug, Clone)]
struct BatchSlot {
    batch: Arc<Mutex<BatchKv>>,
    row: usize,
}

impl BatchSlot {
    fn row(&self) -> Result<Option<(Array, Array)>> {
        Ok(lock(&self.batch)?.row(self.row))
    }
}

fn lock(batch: &Mutex<BatchKv>) -> Result<std::sync::MutexGuard<'_, BatchKv>> {
    batch.lock().map_err(|_| {
        crate::diagnostic::Diagnostic::error(
            code::Engine::Cache,
            "a batch key/value buffer was left inconsistent by an earlier panic (internal error)",
        )
    })
}

/// The masks of one batched decode step (`[B, 1, 1, columns]`, true where a row's own
/// positions are), made once and shared by the layers whose rows start and end alike.
#[derive(Debug, Default)]
pub struct BatchMasks(Vec<(Vec<i32>, i32, i32, Array)>);

impl BatchMasks {
    fn get(&mut self, starts: &[i32], lo: i32, end: i32) -> Array {
        if let Some((.., m)) = self
            .0
            .iter()
            .find(|(s, l, e, _)| s == starts && *l == lo && *e == end)
        {
            return m.clone();
        }
        let m: Vec<bool> = starts
            .iter()
            .flat_map(|&s| (lo..end).map(move |c| c >= s))
            .collect();
        let m = Array::from_slice(&m, &[starts.len() as i32, 1, 1, end - lo]);
        self.0.push((starts.to_vec(), lo, end, m.clone()));
        m
    }
}

/// One decode step of a batch on one layer through MLX: `layers[b]` is row `b`'s layer,
/// `keys`/`values` the step's `[B, heads, 1, dim]`. When the rows are not yet (or no longer
/// exactly) one batch's — a sequence joined or left — every row's keys/values move into a
/// new shared buffer first; otherwise the step writes all rows with one slice update.
/// Returns the keys and values to attend over and the mask of each row's own columns
/// (`None`: every column is every row's).
pub fn batch_update(
    layers: &mut [&mut KvLayer],
    keys: &Array,
    values: &Array,
    window: Option<usize>,
    masks: &mut BatchMasks,
) -> Result<(Array, Array, Option<Array>)> {
    let batch = match current_batch(layers) {
        Some(batch) => batch,
        None => start_batch(layers, keys, values, window)?,
    };
    let mut batch = lock(&batch)?;
    batch.append(keys, values, masks)
}

/// The batch whose rows are exactly `layers`, in order.
fn current_batch(layers: &[&mut KvLayer]) -> Option<Arc<Mutex<BatchKv>>> {
    let first = layers.first()?.batch.as_ref()?.batch.clone();
    let rows = lock(&first).ok()?.starts.len();
    let same = rows == layers.len()
        && layers.iter().enumerate().all(|(b, l)| {
            l.batch
                .as_ref()
                .is_some_and(|s| s.row == b && Arc::ptr_eq(&s.batch, &first))
        });
    same.then_some(first)
}

/// Moves every row's keys/values into a new batch buffer.
fn start_batch(
    layers: &mut [&mut KvLayer],
    keys: &Array,
    values: &Array,
    window: Option<usize>,
) -> Result<Arc<Mutex<BatchKv>>> {
    let mut rows = Vec::with_capacity(layers.len());
    for layer in layers.iter_mut() {
        layer.flush()?;
        rows.push(layer.state());
    }
    let batch = Arc::new(Mutex::new(BatchKv::new(&rows, keys, values, window)?));
    for (row, layer) in layers.iter_mut().enumerate() {
        layer.sliding |= window.is_some();
        layer.set_row(None);
        layer.batch = Some(BatchSlot {
            batch: batch.clone(),
            row,
        });
    }
    Ok(batch)
}

impl BatchKv {
    /// A batch of `rows` (each row's keys/values held, `None` for none), right-aligned at
    /// column `end`, with room for the next positions; `keys`/`values` (the step's) give the
    /// shapes and dtype.
    fn new(
        rows: &[Option<(Array, Array)>],
        keys: &Array,
        values: &Array,
        window: Option<usize>,
    ) -> Result<Self> {
        let lens: Vec<i32> = rows
            .iter()
            .map(|r| r.as_ref().map_or(0, |(k, _)| k.shape()[2]))
            .collect();
        let end = lens.iter().copied().max().unwrap_or(0);
        let cap = (end + STEP) / STEP * STEP;
        let buffer = |like: &Array| -> Result<Array> {
            let s = like.shape();
            Ok(mlx_rs::ops::zeros_dtype(
                &[s[0], s[1], cap, s[3]],
                like.dtype(),
            )?)
        };
        let (mut kb, mut vb) = (buffer(keys)?, buffer(values)?);
        for (b, (row, &n)) in rows.iter().zip(&lens).enumerate() {
            if let Some((k, v)) = row {
                let b = b as i32;
                kb.try_index_mut((b..b + 1, .., end - n..end, ..), k)?;
                vb.try_index_mut((b..b + 1, .., end - n..end, ..), v)?;
            }
        }
        Ok(Self {
            keys: kb,
            values: vb,
            starts: lens.iter().map(|n| end - n).collect(),
            end,
            window,
        })
    }

    /// Row `b`'s positions (a sliding layer: at most the last `window - 1`), or `None` when
    /// it holds none.
    fn row(&self, b: usize) -> Option<(Array, Array)> {
        let mut lo = *self.starts.get(b)?;
        if let Some(w) = self.window {
            lo = lo.max(self.end - (w as i32 - 1));
        }
        if lo >= self.end {
            return None;
        }
        let b = b as i32;
        let cut = |a: &Array| a.index((b..b + 1, .., lo..self.end, ..));
        Some((cut(&self.keys), cut(&self.values)))
    }

    /// Writes the step's keys/values at column `end`; returns the columns the new queries
    /// attend over (a sliding layer: the last `window`) and their mask.
    fn append(
        &mut self,
        keys: &Array,
        values: &Array,
        masks: &mut BatchMasks,
    ) -> Result<(Array, Array, Option<Array>)> {
        if self.end >= self.keys.shape()[2] {
            self.grow()?;
        }
        let e = self.end;
        self.keys.try_index_mut((.., .., e..e + 1, ..), keys)?;
        self.values.try_index_mut((.., .., e..e + 1, ..), values)?;
        self.end += 1;
        let lo = self.window.map_or(0, |w| (self.end - w as i32).max(0));
        let view = |a: &Array| a.index((.., .., lo..self.end, ..));
        let mask =
            (self.starts.iter().any(|&s| s > lo)).then(|| masks.get(&self.starts, lo, self.end));
        Ok((view(&self.keys), view(&self.values), mask))
    }

    /// Drops the leading columns no row attends to any more and adds room for [`STEP`]
    /// more positions (one copy per `STEP` steps).
    fn grow(&mut self) -> Result<()> {
        let live = self.starts.iter().copied().min().unwrap_or(0);
        let dead = match self.window {
            Some(w) => live.max(self.end + 1 - w as i32),
            None => live,
        }
        .clamp(0, self.end);
        let (dead, end) = (dead, self.end);
        let extend = |a: &Array| -> Result<Array> {
            let s = a.shape();
            let tail = mlx_rs::ops::zeros_dtype(&[s[0], s[1], STEP, s[3]], a.dtype())?;
            Ok(concatenate(&[a.index((.., .., dead..end, ..)), tail], 2)?)
        };
        self.keys = extend(&self.keys)?;
        self.values = extend(&self.values)?;
        self.starts.iter_mut().for_each(|s| *s = (*s - dead).max(0));
        self.end -= dead;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::Array;

    use super::{batch_update, concatenate, BatchMasks, Cache, KvLayer, LayerCache, Recurrent};

    /// Head width of the test layers.
    const DIM: i32 = 64;

    /// `[1, heads, n, DIM]` float32 values, distinct per element, starting at `from`.
    fn positions(heads: i32, n: i32, from: f32) -> Array {
        let len = (heads * n * DIM) as usize;
        Array::from_iter(
            (0..len).map(|i| from + i as f32 / 1024.0),
            &[1, heads, n, DIM],
        )
    }

    /// The addresses of a float32 array's data, materialised first.
    fn span(a: &Array) -> Range<usize> {
        mlx_rs::transforms::eval([a]).expect("eval");
        let data = crate::mlx::host::host_slice::<f32>(a, "test").expect("float32 data");
        let start = data.as_ptr() as usize;
        start..start + std::mem::size_of_val(data)
    }

    fn disjoint(a: &Range<usize>, b: &Range<usize>) -> bool {
        a.end <= b.start || b.end <= a.start
    }

    fn same(a: &Array, b: &Array) -> bool {
        a.shape() == b.shape() && a.eq_values(b).expect("compare")
    }

    /// A cache of one key/value layer.
    fn one_layer(layer: KvLayer, offset: usize) -> Cache {
        Cache {
            layers: vec![LayerCache::Kv(layer)],
            offset,
        }
    }

    /// `cache`'s compact copy, evaluated.
    fn compacted(cache: &Cache) -> Cache {
        let copy = cache.compact().expect("compact");
        copy.materialize().expect("materialize");
        copy
    }

    fn state(cache: &Cache) -> (Array, Array) {
        let kv = cache.kv_ref(0).expect("key/value layer");
        kv.state().expect("positions held")
    }

    /// Bytes of `n` float32 positions of keys and values.
    fn kv_bytes(heads: i32, n: i32) -> usize {
        2 * (heads * n * DIM) as usize * 4
    }

    #[test]
    fn a_compact_copy_holds_exactly_the_positions_in_a_buffer_of_its_own() {
        // 250 positions of one head: a view MLX's `contiguous` would leave in the buffer.
        for (heads, n) in [(1, 5), (2, 5), (1, 250), (3, 255)] {
            let mut layer = KvLayer::default();
            let (k, v) = (positions(heads, n, 0.0), positions(heads, n, 1.0));
            layer.update(k, v, None).expect("update");
            let buffer = span(layer.keys.as_ref().expect("buffer"));
            let cache = one_layer(layer, n as usize);
            let copy = compacted(&cache);
            assert_eq!(
                copy.nbytes(),
                kv_bytes(heads, n),
                "{heads} heads, {n} positions"
            );
            assert!(
                cache.nbytes() > copy.nbytes(),
                "the running buffer holds 256"
            );
            let ((ck, cv), (sk, sv)) = (state(&copy), state(&cache));
            assert!(same(&ck, &sk) && same(&cv, &sv));
            assert!(disjoint(&span(&ck), &buffer), "{heads} heads, {n}: shares");
        }
    }

    #[test]
    fn a_compact_global_layer_resumes_at_a_prefix_and_grows_like_the_original() {
        let mut layer = KvLayer::default();
        let (k, v) = (positions(2, 10, 0.0), positions(2, 10, 1.0));
        layer.update(k, v, None).expect("update");
        let cache = one_layer(layer, 10);
        let copy = compacted(&cache);
        // Within the copy's own 10 positions, just past them, and past a grown buffer.
        for (len, more) in [(6, 3), (10, 5), (10, 300)] {
            let step = |c: &Cache| {
                let mut c = c.trimmed(len).expect("resumable");
                let (k, v) = (positions(2, more, 5.0), positions(2, more, 6.0));
                let kv = c.kv(0).expect("layer");
                kv.update(k, v, None).expect("update")
            };
            let ((a, b), (c, d)) = (step(&cache), step(&copy));
            assert!(
                same(&a, &c) && same(&b, &d),
                "resumed at {len}, {more} more"
            );
        }
        let ((ck, _), (sk, _)) = (state(&copy), state(&cache));
        assert!(same(&ck, &sk), "the stored copy is unchanged");
    }

    #[test]
    fn a_compact_sliding_layer_keeps_its_window_and_continues_like_the_original() {
        let mut layer = KvLayer::default();
        let (k, v) = (positions(2, 6, 0.0), positions(2, 6, 1.0));
        layer.update(k, v, Some(4)).expect("update");
        let mut cache = one_layer(layer, 6);
        let mut copy = compacted(&cache);
        assert_eq!(
            copy.nbytes(),
            kv_bytes(2, 3),
            "the window's last 3 positions"
        );
        assert!(!copy.resumable_at(5) && copy.resumable_at(6));
        let step = |c: &mut Cache| {
            let (k, v) = (positions(2, 1, 5.0), positions(2, 1, 6.0));
            c.kv(0)
                .expect("layer")
                .update(k, v, Some(4))
                .expect("update")
        };
        let ((a, b), (c, d)) = (step(&mut cache), step(&mut copy));
        assert!(same(&a, &c) && same(&b, &d));
    }

    #[test]
    fn a_compact_copy_of_a_batched_layer_holds_its_row_only() {
        let mut rows: Vec<KvLayer> = [3, 5]
            .iter()
            .map(|&n| {
                let mut layer = KvLayer::default();
                let (k, v) = (positions(2, n, 0.0), positions(2, n, 1.0));
                layer.update(k, v, None).expect("update");
                layer
            })
            .collect();
        let step = (positions(2, 2, 7.0), positions(2, 2, 8.0));
        let (k, v) = (
            step.0.reshape(&[2, 2, 1, DIM]),
            step.1.reshape(&[2, 2, 1, DIM]),
        );
        let (k, v) = (k.expect("reshape"), v.expect("reshape"));
        let mut refs: Vec<&mut KvLayer> = rows.iter_mut().collect();
        batch_update(&mut refs, &k, &v, None, &mut BatchMasks::default()).expect("batch step");
        let slot = rows[0].batch.clone().expect("lent to the batch");
        let buffer = span(&slot.batch.lock().expect("batch").keys);
        let cache = one_layer(rows.swap_remove(0), 4);
        let copy = compacted(&cache);
        assert_eq!(copy.nbytes(), kv_bytes(2, 4), "3 positions and the step's");
        let ((ck, cv), (sk, sv)) = (state(&copy), state(&cache));
        assert!(same(&ck, &sk) && same(&cv, &sv));
        assert!(disjoint(&span(&ck), &buffer), "shares the batch's buffer");
        assert!(!copy.kv_ref(0).expect("layer").in_batch());
    }

    #[test]
    fn a_compact_copy_of_a_host_layer_holds_its_positions_as_mlx_arrays() {
        let mut layer = KvLayer::default();
        let (k, v) = (positions(2, 5, 0.0), positions(2, 5, 1.0));
        layer.update(k, v, None).expect("update");
        let host = layer.host(2, DIM as usize, None).expect("to the host");
        let row = vec![9.0f32; 2 * DIM as usize];
        host.push(&row, &row);
        let cache = one_layer(layer, 6);
        let copy = compacted(&cache);
        assert_eq!(copy.nbytes(), kv_bytes(2, 6));
        // The 5 positions moved to the host, then the one pushed there, each head's in order.
        let nines = Array::from_slice(&row, &[1, 2, 1, DIM]);
        let want = |from: f32| {
            concatenate(&[positions(2, 5, from), nines.clone()], 2).expect("concatenate")
        };
        let (ck, cv) = state(&copy);
        assert!(same(&ck, &want(0.0)) && same(&cv, &want(1.0)));
        assert!(copy.kv_ref(0).expect("layer").host.is_none());
        assert!(
            cache.kv_ref(0).expect("layer").host.is_some(),
            "the source stays on the host"
        );
    }

    #[test]
    fn a_compact_recurrent_state_does_not_hold_the_chunk_its_tail_is_cut_from() {
        let chunk = Array::from_iter((0..40 * 8).map(|i| i as f32), &[1, 40, 8]);
        let source = span(&chunk);
        let conv = chunk.index((.., 37..40, ..));
        let state = Array::from_iter((0..16).map(|i| i as f32), &[1, 4, 4]);
        let cache = Cache {
            layers: vec![
                LayerCache::Recurrent(Recurrent {
                    conv: Some(conv.clone()),
                    state: Some(state.clone()),
                }),
                LayerCache::None,
            ],
            offset: 40,
        };
        let copy = compacted(&cache);
        assert_eq!(copy.nbytes(), (3 * 8 + 16) * 4);
        let LayerCache::Recurrent(r) = &copy.layers[0] else {
            panic!("a recurrent layer");
        };
        let (c, s) = (
            r.conv.as_ref().expect("conv"),
            r.state.as_ref().expect("state"),
        );
        assert!(same(c, &conv) && same(s, &state));
        assert!(
            disjoint(&span(c), &source),
            "the tail shares the chunk's buffer"
        );
        assert!(matches!(copy.layers[1], LayerCache::None));
    }
}
