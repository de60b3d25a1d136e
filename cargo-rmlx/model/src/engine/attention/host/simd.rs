//! The arithmetic of host decode attention for one query head — scores over the held
//! positions, softmax, the weighted sum of values — as a portable reference and an AVX2/FMA
//! version (run-time detected; used where the head width is a multiple of 8). The two agree
//! to float rounding (`tests::simd_matches_scalar`).

/// Keys or values of one key/value head: row `p` starts at `data[p · stride + offset]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub offset: usize,
}

impl Rows<'_> {
    fn row(&self, p: usize, dim: usize) -> &[f32] {
        let at = p * self.stride + self.offset;
        &self.data[at..at + dim]
    }
}

/// Query heads that read one key/value head, over its positions.
#[derive(Clone)]
pub struct Head<'a> {
    /// The (rotated) queries, `dim` values per head, one head after another.
    pub q: &'a [f32],
    /// Width of one head.
    pub dim: usize,
    pub keys: Rows<'a>,
    pub values: Rows<'a>,
    /// Positions attended, counted from the first row of `keys`/`values`.
    pub positions: std::ops::Range<usize>,
    pub scale: f32,
}

/// Query heads one [`Head`] may hold (the kernels keep one maximum per head on the stack).
pub const MAX_HEADS: usize = 8;

/// Writes, for each query head `g` of `head`, `softmax(scale · q_g·k_p) · v_p` summed over
/// the positions to `out[g · dim..][..dim]`, using `scores[g · positions..]` (one per
/// position) as scratch. A head's arithmetic does not depend on the heads beside it.
pub type HeadKernel = fn(&Head<'_>, &mut [f32], &mut [f32]);

/// The fastest kernel for heads of width `dim` on this processor.
pub fn head_kernel(dim: usize) -> HeadKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if dim.is_multiple_of(8) && crate::engine::qmv::simd_available() {
            return avx2::head;
        }
    }
    let _ = dim;
    head_scalar
}

/// Portable reference of [`HeadKernel`]: one query head after another.
pub fn head_scalar(head: &Head<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (dim, n) = (head.dim, head.positions.len());
    let parts = head
        .q
        .chunks_exact(dim)
        .zip(scores.chunks_exact_mut(n.max(1)));
    for ((q, scores), out) in parts.zip(out.chunks_exact_mut(dim)) {
        one_head_scalar(head, q, &mut scores[..n], out);
    }
}

/// [`head_scalar`] for query `q`.
fn one_head_scalar(head: &Head<'_>, q: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let (keys, values, positions) = (head.keys, head.values, head.positions.clone());
    let dim = q.len();
    let scale = head.scale;
    for (s, p) in scores.iter_mut().zip(positions.clone()) {
        *s = dot(q, keys.row(p, dim)) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    scores.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    out.fill(0.0);
    for (p, &w) in positions.zip(scores.iter()) {
        out.iter_mut()
            .zip(values.row(p, dim))
            .for_each(|(o, v)| *o += w * v);
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Dot product with eight partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Rows;

    /// Positions per block of the scores: every query head of a [`super::Head`] takes a
    /// block (64 key rows, 16 KiB at width 64) while it is in L1, so the key/value head is
    /// read from memory once for all of them.
    const POSITION_BLOCK: usize = 64;

    /// How many positions ahead the first query head of a call asks the cache for the key
    /// (value) row it will read: the rows of a step's caches are out of the caches by the
    /// time the layer comes back to them (the weights stream through in between), and the
    /// reads stalled on memory (most of `scores_into`'s samples on its loads). Only the
    /// order of memory requests changes, never the arithmetic.
    const PREFETCH_POSITIONS: usize = 16;

    /// Asks the cache for `len` floats of row `p` of `rows` from column `c` on, if `p` is
    /// before `end`.
    #[inline]
    unsafe fn prefetch(rows: Rows<'_>, p: usize, end: usize, c: usize, len: usize) {
        if p < end {
            let at = rows.data.as_ptr().add(p * rows.stride + rows.offset + c);
            for line in (0..len).step_by(16) {
                // A prefetch of an address inside the slice (`p` < `end`, a row checked by
                // the caller) has no effect on memory.
                _mm_prefetch::<_MM_HINT_T0>(at.add(line).cast());
            }
        }
    }

    /// [`super::HeadKernel`] with AVX2/FMA; `dim` a multiple of 8. Scores block by block of
    /// positions, each block for every query head; then per 32 columns of the values every
    /// query head's weighted sum. Per head the same operations in the same order as for a
    /// head alone (the maximum of the block maxima is the maximum).
    pub fn head(head: &super::Head<'_>, scores: &mut [f32], out: &mut [f32]) {
        let (q, dim, positions) = (head.q, head.dim, head.positions.clone());
        let (keys, values) = (head.keys, head.values);
        let (heads, n) = (q.len() / dim.max(1), positions.len());
        assert!(dim % 8 == 0 && heads <= super::MAX_HEADS && q.len() == heads * dim);
        assert!(out.len() == q.len() && scores.len() == heads * n);
        for r in [keys, values] {
            if positions.end > positions.start {
                let _ = r.row(positions.end - 1, dim); // bounds of the last row, checked
            }
        }
        let mut maxes = [f32::NEG_INFINITY; super::MAX_HEADS];
        let mut sums = [0f32; super::MAX_HEADS];
        // SAFETY: `head_kernel` hands this out only after run-time detection of AVX2 and
        // FMA; every row read lies within the last row checked above.
        unsafe {
            for start in positions.clone().step_by(POSITION_BLOCK) {
                let block = start..(start + POSITION_BLOCK).min(positions.end);
                let at = start - positions.start;
                for (g, q) in q.chunks_exact(dim).enumerate() {
                    let s = &mut scores[g * n + at..][..block.len()];
                    let ahead = (g == 0).then_some(positions.end);
                    let m = scores_into(q, keys, block.clone(), head.scale, s, ahead);
                    maxes[g] = maxes[g].max(m);
                }
            }
            for (g, s) in scores.chunks_exact_mut(n.max(1)).take(heads).enumerate() {
                sums[g] = exp_in_place(&mut s[..n], maxes[g]);
            }
            let mut c = 0;
            while c < dim {
                let lanes = ((dim - c) / 8).min(4);
                for g in 0..heads {
                    let (w, o) = (&scores[g * n..][..n], &mut out[g * dim..][..dim]);
                    let cols = (c, lanes, g == 0);
                    weighted_sum(values, positions.clone(), w, 1.0 / sums[g], o, cols);
                }
                c += 8 * lanes;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `scores[j] = scale · q · k_{first + j}`; returns the largest. With `ahead` (the end
    /// of the positions held) it prefetches the key rows [`PREFETCH_POSITIONS`] ahead.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_into(
        q: &[f32],
        keys: Rows<'_>,
        positions: std::ops::Range<usize>,
        scale: f32,
        scores: &mut [f32],
        ahead: Option<usize>,
    ) -> f32 {
        let dim = q.len();
        let qp = q.as_ptr();
        let kp = keys.data.as_ptr().add(keys.offset);
        let mut max = f32::NEG_INFINITY;
        for (s, p) in scores.iter_mut().zip(positions) {
            if let Some(end) = ahead {
                prefetch(keys, p + PREFETCH_POSITIONS, end, 0, dim);
            }
            let k = kp.add(p * keys.stride);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 16 <= dim {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(k.add(c)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qp.add(c + 8)),
                    _mm256_loadu_ps(k.add(c + 8)),
                    a1,
                );
                c += 16;
            }
            if c < dim {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(k.add(c)), a0);
            }
            *s = hsum(_mm256_add_ps(a0, a1)) * scale;
            max = max.max(*s);
        }
        max
    }

    /// `x ← exp(x − max)` in place; returns the sum.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_in_place(x: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut sum = hsum(acc);
        for v in chunks.into_remainder() {
            *v = (*v - max).exp();
            sum += *v;
        }
        sum
    }

    /// `exp(x)` for x ≤ 0 (softmax after the max is subtracted): x = n·ln 2 + r with
    /// |r| ≤ ln 2 / 2, e^r by the degree-6 minimax polynomial of Cephes' `expf` (relative
    /// error ~1e-7), times 2^n built in the exponent bits. Below −87 (e^x < 1.7e-38, nothing
    /// next to the max's 1) it returns e^−87.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 in two parts: the high one exact in few bits, so n · high is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }

    /// `out[c..c + 8 · lanes] = inv · Σ_j w[j] · v_{first + j}[c..c + 8 · lanes]`, in
    /// `lanes` ≤ 4 registers (`cols`: `c`, `lanes` and whether to prefetch those columns of
    /// the rows [`PREFETCH_POSITIONS`] ahead).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum(
        values: Rows<'_>,
        positions: std::ops::Range<usize>,
        w: &[f32],
        inv: f32,
        out: &mut [f32],
        (c, lanes, ahead): (usize, usize, bool),
    ) {
        debug_assert!(lanes <= 4 && c + 8 * lanes <= out.len());
        let vp = values.data.as_ptr().add(values.offset);
        let op = out.as_mut_ptr();
        let scale = _mm256_set1_ps(inv);
        let z = _mm256_setzero_ps();
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let end = positions.end;
        for (&wj, p) in w.iter().zip(positions) {
            if ahead {
                prefetch(values, p + PREFETCH_POSITIONS, end, c, 8 * lanes);
            }
            let v = vp.add(p * values.stride + c);
            let wj = _mm256_set1_ps(wj);
            a0 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v), a0);
            if lanes == 4 {
                a1 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v.add(8)), a1);
                a2 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v.add(16)), a2);
                a3 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v.add(24)), a3);
            } else {
                if lanes > 1 {
                    a1 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v.add(8)), a1);
                }
                if lanes > 2 {
                    a2 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v.add(16)), a2);
                }
            }
        }
        for (k, a) in [a0, a1, a2, a3].into_iter().enumerate().take(lanes) {
            _mm256_storeu_ps(op.add(c + 8 * k), _mm256_mul_ps(a, scale));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 kernel (where the processor has it) equals the scalar reference within float
    /// rounding, over head widths 8–256, 1–300 positions, a window start and score ranges
    /// that drive the exponential far below zero.
    #[test]
    fn simd_matches_scalar() {
        let mut rng = crate::engine::tests::Rng(7);
        for (dim, heads, span, first, spread) in [
            (64, 3, 300, 0, 2.0),
            (8, 1, 1, 0, 2.0),
            (24, 2, 17, 5, 40.0),
            (128, 1, 9, 3, 2.0),
            (256, 2, 33, 0, 200.0),
        ] {
            let total = first + span;
            let k = rng.vec(total * heads * dim, spread);
            let v = rng.vec(total * heads * dim, 2.0);
            let q = rng.vec(dim, 2.0);
            for h in 0..heads {
                let rows = |data| Rows {
                    data,
                    stride: heads * dim,
                    offset: h * dim,
                };
                let mut got = vec![0f32; dim];
                let mut want = vec![0f32; dim];
                let mut scores = vec![0f32; span];
                let head = Head {
                    q: &q,
                    dim,
                    keys: rows(&k),
                    values: rows(&v),
                    positions: first..total,
                    scale: 0.125,
                };
                head_kernel(dim)(&head, &mut scores, &mut got);
                head_scalar(&head, &mut scores, &mut want);
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "dim {dim}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Query heads sharing a key/value head in one call give, bit for bit, what each gives
    /// alone — across position blocks (1–200 positions, a window start).
    #[test]
    fn grouped_heads_equal_each_alone() {
        let mut rng = crate::engine::tests::Rng(11);
        let (dim, kv_heads) = (64usize, 2usize);
        for (group, span, first) in [
            (3usize, 200usize, 0usize),
            (2, 1, 0),
            (8, 65, 7),
            (4, 64, 3),
        ] {
            let total = first + span;
            let k = rng.vec(total * kv_heads * dim, 4.0);
            let v = rng.vec(total * kv_heads * dim, 2.0);
            let q = rng.vec(group * dim, 2.0);
            let rows = |data| Rows {
                data,
                stride: kv_heads * dim,
                offset: dim,
            };
            let head = |q| Head {
                q,
                dim,
                keys: rows(&k),
                values: rows(&v),
                positions: first..total,
                scale: 0.125,
            };
            let kernel = head_kernel(dim);
            let mut together = vec![0f32; group * dim];
            kernel(&head(&q), &mut vec![0f32; group * span], &mut together);
            for (g, q) in q.chunks_exact(dim).enumerate() {
                let mut alone = vec![0f32; dim];
                kernel(&head(q), &mut vec![0f32; span], &mut alone);
                assert_eq!(alone, together[g * dim..][..dim], "group {group}, head {g}");
            }
        }
    }
}
