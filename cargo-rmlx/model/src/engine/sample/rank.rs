//! The candidates of a sampled step, ranked without sorting the vocabulary: the finite logits
//! scaled by 1/temperature in draw order ([`draw_order`]: larger scaled logit first, the lower
//! token id on ties), selected a best-first prefix at a time ([`Ranked::grow`]: one pass over
//! the logits picks the next `m` through a buffer of at most `2m`, and only those are sorted),
//! and the softmax normaliser over every candidate ([`exp_total`]: one pass in f64 lanes with
//! a branch-free `exp`, compiled for AVX-512 or AVX2 where the processor has them).

use std::cmp::Ordering;

use super::{larger, LANES};

/// A candidate: its token id and its logit divided by the temperature.
pub(super) type Cand = (u32, f32);

/// The order a sampled step walks its candidates in: the larger scaled logit first (by
/// `total_cmp`), the lower token id first on ties.
pub(super) fn draw_order(a: &Cand, b: &Cand) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best-first prefix of a step's candidates, grown on demand.
pub(super) struct Ranked<'a> {
    logits: &'a [f32],
    temperature: f32,
    /// How many candidates there are (finite logits).
    finite: usize,
    /// The candidates found so far, in [`draw_order`].
    pub(super) cand: Vec<Cand>,
}

impl<'a> Ranked<'a> {
    /// No candidate found yet among `logits` sampled at `temperature` (> 0), `finite` of
    /// them finite.
    pub(super) fn new(logits: &'a [f32], temperature: f32, finite: usize) -> Self {
        Self {
            logits,
            temperature,
            finite,
            cand: Vec::new(),
        }
    }

    /// Candidates not found yet.
    pub(super) fn rest(&self) -> usize {
        self.finite - self.cand.len()
    }

    /// Whether every candidate has been found.
    pub(super) fn complete(&self) -> bool {
        self.rest() == 0
    }

    /// Appends the next `m` candidates in draw order, or more: from a quarter of those left
    /// on, all of them, collected afresh and sorted once (cheaper than a selection through a
    /// buffer that large, and than telling the ones found already apart; the prefix found
    /// before comes out the same, the order being total).
    pub(super) fn grow(&mut self, m: usize) {
        if self.complete() {
            return;
        }
        if m.saturating_mul(4) >= self.rest() {
            self.cand = select(self.logits, self.temperature, None, self.finite);
            return;
        }
        let after = self.cand.last().copied();
        let next = select(self.logits, self.temperature, after, m);
        self.cand.extend(next);
    }
}

/// The best `m` candidates that rank after `after` (every candidate when `None`), in draw
/// order. One pass keeps them in a buffer of at most `2m`; each time it fills, a selection
/// keeps its best `m` and the `m`-th becomes the bar a later logit has to beat. The bar is
/// compared on raw logits first — a positive temperature keeps their order, and a later
/// token with an equal scaled logit ranks after the bar's (higher id) — so most logits, and
/// whole lanes-wide chunks of them, cost one comparison.
fn select(logits: &[f32], t: f32, after: Option<Cand>, m: usize) -> Vec<Cand> {
    if m == 0 {
        return Vec::new();
    }
    let mut buf: Vec<Cand> = Vec::with_capacity((2 * m).min(logits.len()));
    // The m-th best so far and its raw logit.
    let mut bar: Option<(Cand, f32)> = None;
    let ranks_after = |c: &Cand, a: &Cand| draw_order(c, a) == Ordering::Greater;
    for (start, chunk) in (0..).step_by(LANES).zip(logits.chunks(LANES)) {
        if let Some((_, raw)) = bar {
            if chunk.iter().copied().fold(f32::NEG_INFINITY, larger) < raw {
                continue;
            }
        }
        for (id, &l) in (start..).zip(chunk) {
            if !l.is_finite() || bar.is_some_and(|(_, raw)| l < raw) {
                continue;
            }
            let c = (id, l / t);
            if after.is_some_and(|a| !ranks_after(&c, &a))
                || bar.is_some_and(|(b, _)| !ranks_after(&b, &c))
            {
                continue;
            }
            buf.push(c);
            if buf.len() == 2 * m {
                buf.select_nth_unstable_by(m - 1, draw_order);
                buf.truncate(m);
                let worst = buf[m - 1];
                bar = Some((worst, logits[worst.0 as usize]));
            }
        }
    }
    if buf.len() > m {
        buf.select_nth_unstable_by(m - 1, draw_order);
        buf.truncate(m);
    }
    buf.sort_unstable_by(draw_order);
    buf
}

/// Σ over the finite logits `l` of `exp(l / t − top)` in f64, `top` being the largest scaled
/// logit: the softmax normaliser of a sampled step. The difference is taken in f32, as the
/// candidates' own probabilities take it; each term is [`exp_nonpositive`] (within about
/// 1 ulp of f64's `exp`), summed in lanes.
pub(super) fn exp_total(logits: &[f32], t: f32, top: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has AVX-512F.
            return unsafe { exp_total_avx512(logits, t, top) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2.
            return unsafe { exp_total_avx2(logits, t, top) };
        }
    }
    exp_total_lanes(logits, t, top)
}

/// [`exp_total_lanes`] compiled for AVX-512 (8 f64 lanes a vector, the same sum bit for bit:
/// the same operations in the same order, none fused).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_total_avx512(logits: &[f32], t: f32, top: f32) -> f64 {
    exp_total_lanes(logits, t, top)
}

/// [`exp_total_lanes`] compiled for AVX2 (4 f64 lanes a vector; the same sum bit for bit).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_total_avx2(logits: &[f32], t: f32, top: f32) -> f64 {
    exp_total_lanes(logits, t, top)
}

/// The body of [`exp_total`], inlined into each instruction set's copy.
#[inline(always)]
fn exp_total_lanes(logits: &[f32], t: f32, top: f32) -> f64 {
    let term = |l: f32| {
        let w = exp_nonpositive(f64::from(l / t - top));
        if l.abs() < f32::INFINITY {
            w
        } else {
            0.0
        }
    };
    let mut lanes = [0f64; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            *lane += term(l);
        }
    }
    tail.iter().map(|&l| term(l)).sum::<f64>() + lanes.iter().sum::<f64>()
}

/// 1/k! for k = 0..=13: the Taylor polynomial of `e^r`.
const INVERSE_FACTORIALS: [f64; 14] = {
    let mut a = [1.0; 14];
    let mut k = 1;
    while k < 14 {
        a[k] = a[k - 1] / k as f64;
        k += 1;
    }
    a
};

/// `e^x` for `x ≤ 0` in f64, branch-free so lanes vectorise: `x = n ln 2 + r` with
/// `|r| ≤ ln 2 / 2` (n rounded by the 1.5 × 2^52 trick, ln 2 split in two so `n ln 2` is
/// exact), `e^r` by its degree-13 Taylor polynomial (truncation below 5e-18 relative), times
/// `2^n` built in the exponent bits from the rounded sum's low bits. `x` is clamped to
/// [-708, 0] (NaN to -708): below, the exact value is under 4e-308 and cannot move a sum
/// that holds the largest candidate's 1.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f64) -> f64 {
    const ROUND: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    let x = if x > -708.0 { x } else { -708.0 };
    let x = if x < 0.0 { x } else { 0.0 };
    let k = x * std::f64::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = INVERSE_FACTORIALS[..13]
        .iter()
        .rev()
        .fold(INVERSE_FACTORIALS[13], |p, &c| p * r + c);
    p * f64::from_bits(k.to_bits().wrapping_add(1023) << 52)
}

#[cfg(test)]
mod tests {
    use super::super::finite_max;
    use super::*;

    /// Every candidate in draw order, by a full sort.
    fn sorted(logits: &[f32], t: f32) -> Vec<Cand> {
        let mut all: Vec<Cand> = (0..)
            .zip(logits)
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i, l / t))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    /// Logits with ties, signed zeros, NaN and infinities among ordinary values.
    fn awkward(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 97 {
                3 => f32::NAN,
                5 => f32::INFINITY,
                7 => f32::NEG_INFINITY,
                11 => 0.0,
                13 => -0.0,
                17 | 19 => 2.5,
                _ => ((i * 7919 % 1009) as f32 * 0.731).sin() * 9.0,
            })
            .collect()
    }

    #[test]
    fn prefixes_grow_into_the_full_sort() {
        for n in [1, 16, 17, 100, 5000] {
            let l = awkward(n);
            for t in [0.3, 1.0, 1.7] {
                let want = sorted(&l, t);
                for m in [1, 2, 7, 64] {
                    let mut r = Ranked::new(&l, t, want.len());
                    while !r.complete() {
                        r.grow(m);
                    }
                    let bits = |v: &[Cand]| v.iter().map(|c| (c.0, c.1.to_bits())).collect();
                    let (got, exp): (Vec<_>, Vec<_>) = (bits(&r.cand), bits(&want));
                    assert_eq!(got, exp, "n {n} t {t} m {m}");
                }
            }
        }
    }

    #[test]
    fn finite_max_skips_nan_and_infinities() {
        let l = awkward(1000);
        let want = l
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let count = l.iter().filter(|v| v.is_finite()).count();
        assert_eq!(finite_max(&l), (want, count));
        assert_eq!(
            finite_max(&l[..7]),
            (l[0].max(l[1]).max(l[2]).max(l[4]).max(l[6]), 5)
        );
        assert_eq!(
            finite_max(&[f32::NAN, f32::INFINITY]),
            (f32::NEG_INFINITY, 0)
        );
        assert_eq!(finite_max(&[]), (f32::NEG_INFINITY, 0));
    }

    #[test]
    fn exp_matches_f64_exp_within_an_ulp_or_two() {
        let mut worst = 0f64;
        for i in 0..400_000 {
            let x = -(i as f64) * 1.77e-3;
            let exact = x.exp();
            worst = worst.max((exp_nonpositive(x) - exact).abs() / exact);
        }
        assert!(worst < 3.0 * f64::EPSILON, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e4) < 4e-308);
        assert!(exp_nonpositive(f64::NAN) < 4e-308);
    }

    #[test]
    fn exp_total_matches_the_sum_of_exps() {
        let l = awkward(49_152);
        for t in [0.5f32, 1.0, 2.0] {
            let top = finite_max(&l).0 / t;
            let want: f64 = sorted(&l, t)
                .iter()
                .map(|c| f64::from(c.1 - top).exp())
                .sum();
            let got = exp_total(&l, t, top);
            assert!(
                (got - want).abs() <= 1e-13 * want,
                "t {t}: {got} against {want}"
            );
            assert_eq!(
                got,
                exp_total_lanes(&l, t, top),
                "the vector copies sum alike"
            );
        }
    }
}
