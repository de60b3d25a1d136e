//! One-token decode attention on the host (the CPU decode path of `engine::decoder`): a
//! layer's keys and values as plain float32 rows ([`HostKv`], owned by
//! [`crate::engine::cache::KvLayer`] while decode steps run on the host), the rotation of one
//! position ([`RopeTable`], its cosines and sines taken from MLX's own rope so every rope
//! variant is covered) and grouped-query attention of one query over the held positions
//! ([`attend`]), sliding windows included — for the several sequences of a batched step in
//! one kernel-pool job over all their query heads ([`attend_rows`]). Long prefill chunks attend in
//! [`super::prefill`], short ones and the GPU keep MLX's attention; per decode step this
//! replaces B small MLX graphs per block by a loop over host memory.

use mlx_rs::{Array, Dtype};

use super::super::layers::Rope;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::mlx::host::host_slice;

mod simd;

/// Keys and values of one layer on the host, position-major: position `p` of head `h` is
/// `data[((p - dropped) · heads + h) · dim ..][..dim]`. A sliding-window layer drops its
/// oldest positions lazily (at most one window's worth stays unused).
#[derive(Debug, Clone)]
pub struct HostKv {
    heads: usize,
    dim: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Leading positions of `keys`/`values` that fell out of the window.
    dropped: usize,
    window: Option<usize>,
    /// Dtype of the MLX arrays this layer came from (restored by [`Self::to_mlx`]).
    dtype: Dtype,
}

impl HostKv {
    /// An empty layer of `heads` key/value heads of width `dim`.
    pub fn empty(heads: usize, dim: usize, window: Option<usize>, dtype: Dtype) -> Self {
        Self {
            heads,
            dim,
            keys: Vec::new(),
            values: Vec::new(),
            dropped: 0,
            window,
            dtype,
        }
    }

    /// The host copy of MLX keys/values `[1, heads, T, dim]`.
    pub fn from_mlx(keys: &Array, values: &Array, window: Option<usize>) -> Result<Self> {
        let s = keys.shape();
        let (heads, dim) = (s[1] as usize, s[3] as usize);
        let mut out = Self::empty(heads, dim, window, keys.dtype());
        out.keys = position_major(keys)?;
        out.values = position_major(values)?;
        Ok(out)
    }

    /// Positions held (a sliding layer: those still inside or just behind the window).
    pub fn positions(&self) -> usize {
        self.keys.len() / (self.heads * self.dim) - self.dropped
    }

    /// Positions an MLX layer would hold after the same updates (see `KvLayer::update`: a
    /// sliding layer keeps `window - 1`).
    pub fn held(&self) -> usize {
        match self.window {
            Some(w) => self.positions().min(w.saturating_sub(1)),
            None => self.positions(),
        }
    }

    /// Bytes of host memory in use.
    pub fn nbytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * std::mem::size_of::<f32>()
    }

    /// The positions [`Self::held`] as MLX arrays `[1, heads, T, dim]` of the original dtype.
    ///
    /// The positions are put head-major on the host (a copy of `dim`-wide rows) and handed
    /// to MLX as a finished array: no MLX transpose to evaluate. The prompt cache stores
    /// every finished sequence through this (`Cache::compact`); with MLX's strided copy a
    /// 175-position SmolLM2 state took 4–9 ms of the scheduler thread.
    pub fn to_mlx(&self) -> Result<(Array, Array)> {
        let held = self.held();
        let from = self.keys.len() - held * self.heads * self.dim;
        let shape = [1, self.heads as i32, held as i32, self.dim as i32];
        let mlx = |data: &[f32]| -> Result<Array> {
            let a = Array::from_slice(&head_major(data, self.heads, self.dim), &shape);
            Ok(match self.dtype {
                Dtype::Float32 => a,
                dtype => a.as_dtype(dtype)?,
            })
        };
        Ok((mlx(&self.keys[from..])?, mlx(&self.values[from..])?))
    }

    /// Appends one position (`heads · dim` keys and values).
    pub fn push(&mut self, keys: &[f32], values: &[f32]) {
        self.keys.extend_from_slice(keys);
        self.values.extend_from_slice(values);
        let Some(w) = self.window else { return };
        let extra = self.positions().saturating_sub(w);
        self.dropped += extra;
        if self.dropped >= w.max(64) {
            let cut = self.dropped * self.heads * self.dim;
            self.keys.drain(..cut);
            self.values.drain(..cut);
            self.dropped = 0;
        }
    }

    /// Key (or value) rows of head `h`, counted from the first position held.
    fn rows<'a>(&self, data: &'a [f32], h: usize) -> simd::Rows<'a> {
        simd::Rows {
            data: &data[self.dropped * self.heads * self.dim..],
            stride: self.heads * self.dim,
            offset: h * self.dim,
        }
    }
}

/// Position-major rows (`[T, heads, dim]`) reordered head-major (`[heads, T, dim]`).
fn head_major(data: &[f32], heads: usize, dim: usize) -> Vec<f32> {
    let row = heads * dim;
    let positions = data.len() / row.max(1);
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for p in 0..positions {
            out.extend_from_slice(&data[p * row + h * dim..][..dim]);
        }
    }
    out
}

/// MLX `[1, heads, T, dim]` → host `[T, heads, dim]` float32.
fn position_major(a: &Array) -> Result<Vec<f32>> {
    let a = a
        .as_dtype(Dtype::Float32)?
        .transpose_axes(&[0, 2, 1, 3])?
        .contiguous()?;
    a.eval()?;
    Ok(host_slice::<f32>(&a, "key/value cache")?.to_vec())
}

/// The rotation of one position, as MLX's rope computes it: per rotated pair its cosine and
/// sine (times the rope's `mscale`), read back from MLX's rope applied to a basis vector.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    traditional: bool,
}

impl RopeTable {
    /// The rotations `rope` gives positions `offsets` of `head_dim`-wide heads, one per
    /// sequence of a decode step: one MLX evaluation for all of them (one per sequence was
    /// 1.5% of a four-sequence step), through the same per-row-offset rope for any number
    /// of sequences, so a sequence's table does not depend on the others.
    pub fn at_positions(rope: &Rope, offsets: &[usize], head_dim: usize) -> Result<Vec<Self>> {
        let (dims, traditional) = (rope.rotated_dims(), rope.is_traditional());
        let half = dims / 2;
        // Pair i's first feature 1, its second 0: the output is (cos_i, sin_i).
        let first = |i: usize| if traditional { 2 * i } else { i };
        let second = |i: usize| if traditional { 2 * i + 1 } else { i + half };
        let mut basis = vec![0f32; head_dim];
        (0..half).for_each(|i| basis[first(i)] = 1.0);
        let rows = basis.repeat(offsets.len());
        let b = i32::try_from(offsets.len()).map_err(|_| too_many("sequences"))?;
        let positions = offsets
            .iter()
            .map(|&o| i32::try_from(o).map_err(|_| too_many("positions")))
            .collect::<Result<Vec<i32>>>()?;
        let x = Array::from_slice(&rows, &[b, 1, 1, head_dim as i32]);
        let out = rope
            .forward_rows(&x, &Array::from_slice(&positions, &[b]))?
            .as_dtype(Dtype::Float32)?;
        out.eval()?;
        let out = host_slice::<f32>(&out, "rope table")?;
        Ok(out
            .chunks_exact(head_dim)
            .map(|row| Self {
                cos: (0..half).map(|i| row[first(i)]).collect(),
                sin: (0..half).map(|i| row[second(i)]).collect(),
                traditional,
            })
            .collect())
    }

    /// Rotates one head in place (features past the rotated ones stay).
    pub fn apply(&self, x: &mut [f32]) {
        let half = self.cos.len();
        for (i, (&c, &s)) in self.cos.iter().zip(&self.sin).enumerate() {
            let (j, k) = if self.traditional {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (a, b) = (x[j], x[k]);
            x[j] = a * c - b * s;
            x[k] = a * s + b * c;
        }
    }
}

/// A rope offset or batch size past MLX's int32.
fn too_many(what: &str) -> Diagnostic {
    Diagnostic::error(
        code::Engine::Rope,
        format!("rope table: too many {what} for MLX's int32 offsets"),
    )
}

/// Scratch of [`attend`], reused across calls.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Scores of every query head, `n_heads · positions`.
    scores: Vec<f32>,
}

/// Below this many multiply-adds (heads · positions · width · 2, summed over a step's
/// sequences) a layer's attention runs on the calling thread: handing it to the kernel pool
/// costs more than it saves.
const PARALLEL_WORK: usize = 1 << 16;

/// One sequence's part of a decode step's attention: its queries `q` (`n_heads · dim`,
/// already rotated) over every position `kv` holds within its window (the new one
/// included).
pub struct Query<'a> {
    pub q: &'a [f32],
    pub kv: &'a HostKv,
}

/// Attention of one position's queries `q` over `kv` (see [`attend_rows`]).
pub fn attend(q: &[f32], kv: &HostKv, scale: f32, scratch: &mut Scratch, out: &mut [f32]) {
    attend_rows(&[Query { q, kv }], scale, scratch, out);
}

/// Attention of a decode step's sequences, scaled by `scale`: writes each sequence's
/// `n_heads · dim` values to `out`, one sequence after another. Query head `h` reads
/// key/value head `h / (n_heads / kv heads)` of its sequence. The (sequence, key/value head)
/// pairs — each with the query heads that read it ([`head_items`]) — are the items of one
/// kernel-pool job (`engine::pool`) once the step's work is large enough; each runs
/// [`simd::head_kernel`] over its own scores, so a sequence's output does not depend on the
/// sequences beside it.
pub fn attend_rows(rows: &[Query<'_>], scale: f32, scratch: &mut Scratch, out: &mut [f32]) {
    let Some(dim) = rows.first().map(|r| r.kv.dim) else {
        return;
    };
    let kernel = simd::head_kernel(dim);
    let scores: usize = rows.iter().map(|r| r.q.len() / dim * r.span().len()).sum();
    scratch.scores.resize(scores, 0.0);
    let pooled = scores * dim * 2 >= PARALLEL_WORK;
    let pairs: usize = rows.iter().map(|r| r.kv.heads).sum();
    // Grouped items read each key/value head once for its query heads, but a lone
    // sequence's few groups would leave a pool thread idle: there one head per item.
    let grouped = !pooled || pairs >= GROUPS_PER_THREAD * crate::engine::pool::threads();
    let mut items = head_items(rows, scale, grouped, &mut scratch.scores, out);
    if pooled {
        crate::engine::pool::for_each_mut(&mut items, |(h, s, o)| kernel(h, s, o));
    } else {
        items.iter_mut().for_each(|(h, s, o)| kernel(h, s, o));
    }
}

/// (Sequence, key/value head) pairs per pool thread from which a pooled step's items hold
/// all the query heads of a key/value head (fewer: one query head per item, more items).
const GROUPS_PER_THREAD: usize = 4;

/// One item's work: its query heads, their scores scratch and their output.
type HeadItem<'a> = (simd::Head<'a>, &'a mut [f32], &'a mut [f32]);

/// The items of `rows`, each with its own part of `scores` and of `out`: per sequence and
/// key/value head, its query heads when `grouped` (in items of at most
/// [`simd::MAX_HEADS`], a divisor of the group), else one query head per item.
fn head_items<'a>(
    rows: &[Query<'a>],
    scale: f32,
    grouped: bool,
    mut scores: &'a mut [f32],
    mut out: &'a mut [f32],
) -> Vec<HeadItem<'a>> {
    let mut items = Vec::with_capacity(rows.iter().map(|r| r.q.len() / r.kv.dim).sum());
    for row in rows {
        let (kv, dim) = (row.kv, row.kv.dim);
        let group = (row.q.len() / dim / kv.heads).max(1);
        let per_item = match grouped {
            // The largest divisor of `group` the kernel takes, so no item straddles groups.
            true => (1..=group.min(simd::MAX_HEADS))
                .rev()
                .find(|d| group.is_multiple_of(*d))
                .unwrap_or(1),
            false => 1,
        };
        let positions = row.span();
        for (i, q) in row.q.chunks(per_item * dim).enumerate() {
            let heads = q.len() / dim;
            let (mine, rest) = std::mem::take(&mut scores).split_at_mut(heads * positions.len());
            scores = rest;
            let (o, rest) = std::mem::take(&mut out).split_at_mut(q.len());
            out = rest;
            let h = i * per_item / group;
            let head = simd::Head {
                q,
                dim,
                keys: kv.rows(&kv.keys, h),
                values: kv.rows(&kv.values, h),
                positions: positions.clone(),
                scale,
            };
            items.push((head, mine, o));
        }
    }
    items
}

impl Query<'_> {
    /// The positions attended, counted from the first one `kv` holds.
    fn span(&self) -> std::ops::Range<usize> {
        let total = self.kv.positions();
        let first = self.kv.window.map_or(0, |w| total.saturating_sub(w));
        first..total
    }
}

/// In-place softmax (max-subtracted, float32).
pub(super) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    x.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attention::{attend as mlx_attend, split_heads};
    use crate::engine::tests::values;

    /// Host attention of the last of `t` positions equals MLX's, global and windowed.
    #[test]
    fn matches_mlx_attention() {
        let (heads, kv_heads, dim, t) = (6usize, 2usize, 16usize, 11usize);
        for window in [None, Some(4)] {
            let k = values(t * kv_heads * dim, 1);
            let v = values(t * kv_heads * dim, 2);
            let q = values(heads * dim, 3);
            let to_heads = |d: &[f32], n: usize, l: usize| {
                let a = Array::from_slice(d, &[1, l as i32, (n * dim) as i32]);
                split_heads(a, n as i32, dim as i32).unwrap()
            };
            let (mk, mv) = (to_heads(&k, kv_heads, t), to_heads(&v, kv_heads, t));
            let (mk, mv) = match window {
                Some(w) => {
                    let idx = Array::from_iter((t - w) as i32..t as i32, &[w as i32]);
                    (
                        mk.take_axis(&idx, 2).unwrap(),
                        mv.take_axis(&idx, 2).unwrap(),
                    )
                }
                None => (mk, mv),
            };
            let mq = to_heads(&q, heads, 1);
            let want = mlx_attend(&mq, &mk, &mv, t - 1, window, 0.25, None).unwrap();
            let want = want.reshape(&[-1]).unwrap();
            let mut kv = HostKv::empty(kv_heads, dim, window, Dtype::Float32);
            let row = kv_heads * dim;
            for p in 0..t {
                kv.push(&k[p * row..(p + 1) * row], &v[p * row..(p + 1) * row]);
            }
            let mut out = vec![0f32; heads * dim];
            attend(&q, &kv, 0.25, &mut Scratch::default(), &mut out);
            for (a, b) in out.iter().zip(want.as_slice::<f32>()) {
                assert!((a - b).abs() < 1e-5, "{window:?}: host {a} vs MLX {b}");
            }
        }
    }

    /// Several sequences attended together (one pool job over all their heads) give each
    /// sequence exactly what it gets alone (on the calling thread).
    #[test]
    fn sequences_together_equal_each_alone() {
        let (heads, kv_heads, dim) = (6usize, 2usize, 16usize);
        let row = kv_heads * dim;
        let layers: Vec<HostKv> = [(200usize, None), (300, None), (90, Some(32))]
            .iter()
            .enumerate()
            .map(|(s, &(t, window))| {
                let (k, v) = (
                    values(t * row, 7 + s as u32),
                    values(t * row, 17 + s as u32),
                );
                let mut kv = HostKv::empty(kv_heads, dim, window, Dtype::Float32);
                (0..t).for_each(|p| kv.push(&k[p * row..][..row], &v[p * row..][..row]));
                kv
            })
            .collect();
        let qs: Vec<Vec<f32>> = (0..layers.len())
            .map(|s| values(heads * dim, 30 + s as u32))
            .collect();
        let rows: Vec<Query<'_>> = qs
            .iter()
            .zip(&layers)
            .map(|(q, kv)| Query { q, kv })
            .collect();
        // Alone each runs on the calling thread; together (532 positions) in the pool.
        assert!(heads * 300 * dim * 2 < PARALLEL_WORK);
        assert!(heads * (200 + 300 + 32) * dim * 2 >= PARALLEL_WORK);
        let mut together = vec![0f32; heads * dim * rows.len()];
        attend_rows(&rows, 0.25, &mut Scratch::default(), &mut together);
        for (s, (q, kv)) in qs.iter().zip(&layers).enumerate() {
            let mut alone = vec![0f32; heads * dim];
            attend(q, kv, 0.25, &mut Scratch::default(), &mut alone);
            assert_eq!(
                alone,
                together[s * heads * dim..][..heads * dim],
                "sequence {s}"
            );
        }
    }

    /// Decode steps on the host leave a layer, once flushed back to MLX, holding what the
    /// same steps through MLX's cache update leave (global and sliding window).
    #[test]
    fn host_steps_leave_the_cache_mlx_would() {
        use crate::engine::cache::KvLayer;
        let (heads, dim) = (2usize, 8usize);
        let mlx_rows = |seed: u32, l: usize| {
            let a = Array::from_slice(&values(l * heads * dim, seed), &[1, l as i32, 16]);
            split_heads(a, heads as i32, dim as i32).unwrap()
        };
        for window in [None, Some(4)] {
            let (mut by_mlx, mut by_host) = (KvLayer::default(), KvLayer::default());
            for layer in [&mut by_mlx, &mut by_host] {
                layer
                    .update(mlx_rows(1, 6), mlx_rows(2, 6), window)
                    .unwrap();
            }
            for step in 0..3 {
                let (k, v) = (
                    values(heads * dim, 10 + step),
                    values(heads * dim, 20 + step),
                );
                let one = |d: &[f32]| {
                    let a = Array::from_slice(d, &[1, 1, 16]);
                    split_heads(a, heads as i32, dim as i32).unwrap()
                };
                by_mlx.update(one(&k), one(&v), window).unwrap();
                by_host.host(heads, dim, window).unwrap().push(&k, &v);
            }
            // Row-contiguous copies (a global layer's state is a view into its buffer).
            let state = |l: &KvLayer| {
                let (k, v) = l.state().unwrap();
                (k.contiguous().unwrap(), v.contiguous().unwrap())
            };
            let (want_k, want_v) = state(&by_mlx);
            let (host_k, _) = state(&by_host);
            by_host.flush().unwrap();
            let (got_k, got_v) = state(&by_host);
            assert_eq!(got_k.shape(), want_k.shape(), "{window:?}");
            for got in [&got_k, &host_k] {
                assert_eq!(
                    got.as_slice::<f32>(),
                    want_k.as_slice::<f32>(),
                    "{window:?}"
                );
            }
            assert_eq!(
                got_v.as_slice::<f32>(),
                want_v.as_slice::<f32>(),
                "{window:?}"
            );
        }
    }

    /// The host copy of MLX keys round-trips, and a rope table rotates like MLX's rope.
    #[test]
    fn round_trip_and_rope() {
        let (heads, dim, t) = (2usize, 8usize, 5usize);
        let k = Array::from_slice(&values(heads * t * dim, 4), &[1, heads as i32, t as i32, 8]);
        let kv = HostKv::from_mlx(&k, &k, None).unwrap();
        assert_eq!(kv.positions(), t);
        let (back, _) = kv.to_mlx().unwrap();
        assert_eq!(back.as_slice::<f32>(), k.as_slice::<f32>());
        for traditional in [false, true] {
            let rope = Rope::new(dim, 10_000.0, None)
                .unwrap()
                .traditional(traditional);
            let x = values(dim, 5);
            let want = rope
                .forward(&Array::from_slice(&x, &[1, 1, 1, dim as i32]), 7)
                .unwrap();
            let mut got = x.clone();
            RopeTable::at_positions(&rope, &[3, 7], dim).unwrap()[1].apply(&mut got);
            for (a, b) in got.iter().zip(want.as_slice::<f32>()) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "traditional {traditional}: {a} vs {b}"
                );
            }
        }
    }
}
