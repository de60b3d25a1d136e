//! The [`Step`] of a token picked on the host ([`host_step`]): with its evidence
//! ([`describe_step`]: the chosen token's log-probability, the top logits and theirs, the
//! largest finite |logit|, the non-finite count) or, when nobody reads that
//! ([`GenerateOptions::evidence`](super::super::generate::GenerateOptions::evidence) off: a
//! server request without `logprobs`, bench), bare ([`bare_step`]: the token and its logit,
//! the same values as a device step's bare step).
//!
//! The passes over the vocabulary run in fixed lanes the compiler vectorises: one for the
//! finite range (maximum, max |logit|, non-finite count; exact in any order), one for the
//! log-sum-exp ([`log_sum_exp`]: `exp` in f32, lanes summed in f32 per block of
//! [`BLOCK`] logits, the blocks in f64). The same function runs for a sequence alone or in
//! a batch, so its numbers do not depend on batching.

use super::super::generate::Step;
use super::super::sample::{larger, top_k, FiniteRange, LANES};

/// Logits per block of the log-sum-exp whose lanes are summed in f32.
const BLOCK: usize = 256;

/// The step of token `id` chosen from `logits`: with the evidence (`k` top logits) when
/// `evidence`, else bare.
pub(super) fn host_step(logits: &[f32], id: u32, k: usize, evidence: bool) -> Step {
    if evidence {
        describe_step(logits, id, k)
    } else {
        bare_step(logits, id)
    }
}

/// The token and its logit only; log-probabilities and max |logit| NaN, no non-finite count
/// (what a device step's bare step holds).
fn bare_step(logits: &[f32], id: u32) -> Step {
    let chosen = logits.get(id as usize).copied().unwrap_or(f32::NAN);
    super::device_step::bare_step(id, chosen)
}

/// The evidence recorded for one step.
fn describe_step(logits: &[f32], id: u32, k: usize) -> Step {
    let range = FiniteRange::of(logits);
    let lse = log_sum_exp(logits, range.max);
    let top = top_k(logits, k);
    let logprob = logits.get(id as usize).map_or(f32::NAN, |l| l - lse);
    Step {
        id,
        top_logprobs: top.iter().map(|(_, l)| l - lse).collect(),
        top,
        max_abs_logit: range.max_abs,
        non_finite: range.non_finite,
        logprob,
    }
}

/// `ln Σ exp(l)` over the finite logits, given their maximum: `max + ln Σ exp(l - max)`.
/// Each term is [`exp_nonpositive`] (within about 2 ulp), lanes add 16 terms each per block
/// and a block's lanes add in f32 (≤ 2 × 16 roundings, relative), blocks add in f64: the sum
/// is within about 3e-6 relative of the exact one, so the result is within about 3e-6
/// absolute — about one ulp of a log-sum-exp of magnitude 8–32, far inside what clients read
/// and the batching test's 1e-3. -inf when no logit is finite.
fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    let term = |l: f32| {
        if l.abs() < f32::INFINITY {
            exp_nonpositive(l - max)
        } else {
            0.0
        }
    };
    let mut total = 0f64;
    for block in logits.chunks(BLOCK) {
        let mut lanes = [0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (lane, &l) in lanes.iter_mut().zip(chunk) {
                *lane += term(l);
            }
        }
        let tail_sum: f32 = tail.iter().map(|&l| term(l)).sum();
        total += f64::from(lanes.iter().sum::<f32>() + tail_sum);
    }
    max + total.ln() as f32
}

/// `e^x` for `x ≤ 0` in f32, branch-free: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2` (n rounded
/// by the 1.5 × 2^23 trick, ln 2 split in two so `n ln 2` is exact), `e^r` by its degree-7
/// Taylor polynomial (truncation below 6e-9 relative), times `2^n` built in the exponent
/// bits. Below -88 the result is 0 (the exact value, under 7e-39, is below f32's normal
/// range and cannot move a sum that holds the maximum's 1).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = larger(x, -88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log-sum-exp as it was computed before: every finite term's `exp` in f64.
    fn lse_f64(logits: &[f32]) -> f32 {
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| f64::from(l - max).exp())
            .sum();
        max + sum.ln() as f32
    }

    /// Logits shaped like a language model's: a spread of values over a large vocabulary.
    fn vocab_logits(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as f32 * 0.618_034).fract();
                scale * (x * x * 2.0 - 1.0) + (i as f32 * 0.37).sin()
            })
            .collect()
    }

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.4e-4;
            let exact = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            if exact > 1e-37 {
                worst = worst.max((got - exact).abs() / exact);
            }
        }
        assert!(
            worst < 3.0 * f64::from(f32::EPSILON),
            "worst relative error {worst}"
        );
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1e4), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn log_sum_exp_matches_the_f64_sum() {
        for (n, scale) in [
            (49_152, 12.0),
            (49_152, 40.0),
            (151_936, 8.0),
            (37, 3.0),
            (1, 1.0),
        ] {
            let l = vocab_logits(n, scale);
            let max = FiniteRange::of(&l).max;
            let (got, want) = (log_sum_exp(&l, max), lse_f64(&l));
            assert!(
                (got - want).abs() <= 4e-6 * want.abs().max(1.0),
                "n {n} scale {scale}: {got} against {want}"
            );
        }
    }

    #[test]
    fn non_finite_logits_are_counted_and_left_out() {
        let mut l = vocab_logits(1000, 10.0);
        let reference = describe_step(&l, 3, 4);
        l.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        let s = describe_step(&l, 3, 4);
        assert_eq!(s.non_finite, 3);
        assert_eq!(s.max_abs_logit, reference.max_abs_logit);
        assert_eq!(s.logprob, reference.logprob);
        let none = describe_step(&[f32::NAN, f32::INFINITY], 0, 1);
        assert_eq!((none.non_finite, none.max_abs_logit), (2, 0.0));
        assert!(none.logprob.is_nan());
    }

    #[test]
    fn finite_range_is_exact() {
        let mut l = vocab_logits(49_153, 30.0);
        l[777] = -31.5;
        l[40_000] = f32::NAN;
        let r = FiniteRange::of(&l);
        let finite = l.iter().copied().filter(|x| x.is_finite());
        assert_eq!(r.max, finite.clone().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(r.max_abs, finite.map(f32::abs).fold(0.0, f32::max));
        assert_eq!(r.non_finite, 1);
    }

    #[test]
    fn bare_step_holds_the_token_and_its_logit() {
        let l = vocab_logits(100, 5.0);
        let s = host_step(&l, 7, 3, false);
        assert_eq!((s.id, s.top.clone(), s.non_finite), (7, vec![(7, l[7])], 0));
        assert!(s.logprob.is_nan() && s.max_abs_logit.is_nan() && s.top_logprobs[0].is_nan());
        let full = host_step(&l, 7, 3, true);
        assert_eq!(full.top.len(), 3);
        assert!(full.logprob <= 0.0 && full.top_logprobs[0] <= 0.0);
    }
}
