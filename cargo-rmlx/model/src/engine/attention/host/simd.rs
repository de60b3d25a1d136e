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

/// One query head over positions of one key/value head.
#[derive(Clone)]
pub struct Head<'a> {
    /// The (rotated) query, `dim` values.
    pub q: &'a [f32],
    pub keys: Rows<'a>,
    pub values: Rows<'a>,
    /// Positions attended, counted from the first row of `keys`/`values`.
    pub positions: std::ops::Range<usize>,
    pub scale: f32,
}

/// Writes `softmax(scale · q·k_p) · v_p` summed over the head's positions to `out`, using
/// `scores` (one per position) as scratch.
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

/// Portable reference of [`HeadKernel`].
pub fn head_scalar(head: &Head<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (q, keys, values, positions) = (head.q, head.keys, head.values, head.positions.clone());
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

    /// [`super::HeadKernel`] with AVX2/FMA; `q.len()` a multiple of 8.
    pub fn head(head: &super::Head<'_>, scores: &mut [f32], out: &mut [f32]) {
        let (q, positions) = (head.q, head.positions.clone());
        let (keys, values) = (head.keys, head.values);
        let dim = q.len();
        assert!(dim % 8 == 0 && out.len() == dim && scores.len() == positions.len());
        for r in [keys, values] {
            if positions.end > positions.start {
                let _ = r.row(positions.end - 1, dim); // bounds of the last row, checked
            }
        }
        // SAFETY: `head_kernel` hands this out only after run-time detection of AVX2 and
        // FMA; every row read lies within the last row checked above.
        unsafe {
            let max = scores_into(q, keys, positions.clone(), head.scale, scores);
            let sum = exp_in_place(scores, max);
            weighted_sum(values, positions, scores, 1.0 / sum, out);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `scores[j] = scale · q · k_{first + j}`; returns the largest.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_into(
        q: &[f32],
        keys: Rows<'_>,
        positions: std::ops::Range<usize>,
        scale: f32,
        scores: &mut [f32],
    ) -> f32 {
        let dim = q.len();
        let qp = q.as_ptr();
        let kp = keys.data.as_ptr().add(keys.offset);
        let mut max = f32::NEG_INFINITY;
        for (s, p) in scores.iter_mut().zip(positions) {
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

    /// `out = inv · Σ_j w[j] · v_{first + j}`, 32 columns at a time in four registers.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum(
        values: Rows<'_>,
        positions: std::ops::Range<usize>,
        w: &[f32],
        inv: f32,
        out: &mut [f32],
    ) {
        let dim = out.len();
        let vp = values.data.as_ptr().add(values.offset);
        let op = out.as_mut_ptr();
        let scale = _mm256_set1_ps(inv);
        let mut c = 0;
        while c < dim {
            let lanes = ((dim - c) / 8).min(4);
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            for (&wj, p) in w.iter().zip(positions.clone()) {
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
            c += 8 * lanes;
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
}
