//! The state a model carries between steps, one entry per layer, of the kind its
//! architecture declares ([`CacheKind`]): key/value caches ([`KvLayer`]: global-attention
//! layers write into buffers grown 256 positions at a time — one in-place slice update per
//! step instead of re-copying the history — and sliding-window layers keep only their window),
//! recurrent state ([`Recurrent`]: linear-attention layers' convolution tail and state matrix),
//! or nothing (layers that read another layer's keys/values).

use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use mlx_rs::Array;

/// Positions a global layer's buffer grows by.
const STEP: i32 = 256;

use crate::diagnostic::Result;

/// Keys and values of one attention layer, `[B, kv_heads, T, head_dim]`.
#[derive(Debug, Default)]
pub struct KvLayer {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions held (global layers: the buffers may be longer).
    len: i32,
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
        if window.is_none() {
            return self.append(keys, values);
        }
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
    /// Keys and values held (views; for a global layer without the unused buffer tail), or
    /// `None` before the first update.
    pub fn state(&self) -> Option<(Array, Array)> {
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
#[derive(Debug, Default)]
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
#[derive(Debug)]
pub enum LayerCache {
    /// See [`KvLayer`].
    Kv(KvLayer),
    /// See [`Recurrent`].
    Recurrent(Recurrent),
    /// The layer keeps nothing.
    None,
}

/// The cache of a whole model: one [`LayerCache`] per layer plus the position offset.
#[derive(Debug)]
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
        "rmlx::engine::cache",
        format!("layer {layer} has no {kind} cache (internal error: cache kinds mismatch)"),
    )
}
