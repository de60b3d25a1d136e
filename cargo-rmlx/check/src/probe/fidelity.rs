//! Fidelity of a model against a reference, which a loop classifier cannot see (a badly
//! quantized model can talk fluent nonsense): the reference's greedy continuation of the seed
//! is teacher-forced through both models; per step we compare the top-1 prediction and the
//! KL divergence KL(reference ‖ candidate) of the next-token distributions. A golden file
//! (`--bless`) stores the reference side (ids and top-k log-probabilities) so later builds are
//! compared with it without the reference model.

use std::path::Path;

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::Model;

/// Default: mean KL (nats) above which the verdict is `diverged`. See BENCHMARKS.md
/// ("Probe fidelity thresholds") for the measurements behind it.
pub const DEFAULT_MAX_MEAN_KL: f64 = 0.05;
/// Default: top-1 agreement below which the verdict is `diverged`.
pub const DEFAULT_MIN_AGREEMENT: f64 = 0.75;
/// Top-k log-probabilities stored per step in a golden file.
pub const GOLDEN_TOP_K: usize = 32;

/// The reference side of a comparison: the continuation and, per step, either the full
/// log-softmax (live reference model) or its top-k (golden file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Golden {
    /// What produced it (model path / name).
    pub source: String,
    /// The prompt it was recorded for.
    pub prompt_ids: Vec<u32>,
    /// The reference's greedy continuation.
    pub continuation: Vec<u32>,
    /// Per step: `(id, logprob)` of the top-k, best first.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// Per-step and summary comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    /// What was compared against.
    pub reference: String,
    /// Top-1 agreement with the reference's continuation (0..1).
    pub top1_agreement: f64,
    /// Mean KL(reference ‖ candidate) per step, nats.
    pub mean_kl: f64,
    /// KL per step.
    pub kl: Vec<f64>,
    /// Candidate's top-1 per step.
    pub candidate_top1: Vec<u32>,
    /// The reference continuation.
    pub reference_ids: Vec<u32>,
    /// Thresholds used.
    pub max_mean_kl: f64,
    /// Thresholds used.
    pub min_agreement: f64,
}

impl Fidelity {
    /// Whether the thresholds are violated.
    pub fn diverged(&self) -> bool {
        self.mean_kl > self.max_mean_kl || self.top1_agreement < self.min_agreement
    }
}

/// Log-softmax rows of `[L, vocab]` logits for `prompt ++ continuation[..n-1]`, teacher
/// forced: row i predicts continuation[i].
fn teacher_forced_logprobs(
    model: &Model,
    prompt: &[u32],
    continuation: &[u32],
) -> Result<Vec<Vec<f32>>> {
    let mut ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    ids.extend(
        continuation[..continuation.len().saturating_sub(1)]
            .iter()
            .map(|&t| t as i32),
    );
    let mut cache = model.net.new_cache();
    let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
    let logits = model.net.forward_all(&input, &mut cache)?;
    let first = prompt.len() as i32 - 1;
    let rows = continuation.len() as i32;
    let idx = Array::from_iter(first..first + rows, &[rows]);
    let picked = logits.take_axis(&idx, 0)?;
    let lse = picked.logsumexp_axis(-1, true)?;
    let lp = picked.subtract(&lse)?;
    lp.eval()?;
    let flat: &[f32] = lp.as_slice();
    let vocab = flat.len() / continuation.len().max(1);
    Ok(flat.chunks(vocab).map(<[f32]>::to_vec).collect())
}

/// Records the reference side from a live model: greedy continuation of `steps` tokens, then
/// teacher-forced log-probabilities.
pub fn record(
    reference: &Model,
    source: &str,
    prompt: &[u32],
    steps: usize,
) -> Result<(Golden, Vec<Vec<f32>>)> {
    let opts = crate::engine::GenerateOptions {
        max_tokens: steps,
        ignore_eos: true,
        top: 1,
        ..Default::default()
    };
    let out = crate::engine::generate(reference, prompt, &opts, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let continuation = out.ids();
    let full = teacher_forced_logprobs(reference, prompt, &continuation)?;
    let top = full
        .iter()
        .map(|row| crate::engine::sample::top_k(row, GOLDEN_TOP_K))
        .collect();
    Ok((
        Golden {
            source: source.to_string(),
            prompt_ids: prompt.to_vec(),
            continuation,
            top,
        },
        full,
    ))
}

/// Compares `candidate` with the reference side. `full` holds the reference's complete
/// log-softmax rows when a live reference ran; otherwise the golden top-k are used (KL
/// restricted to the golden top-k set, both sides renormalised over it).
pub fn compare(
    candidate: &Model,
    golden: &Golden,
    full: Option<&[Vec<f32>]>,
    max_mean_kl: f64,
    min_agreement: f64,
) -> Result<Fidelity> {
    if golden.continuation.is_empty() {
        return Err(Diagnostic::error(
            code::Probe::Reference,
            "the reference continuation is empty",
        ));
    }
    let cand = teacher_forced_logprobs(candidate, &golden.prompt_ids, &golden.continuation)?;
    let mut kl = Vec::with_capacity(cand.len());
    let mut top1 = Vec::with_capacity(cand.len());
    let mut agree = 0usize;
    for (i, q) in cand.iter().enumerate() {
        let c1 = crate::engine::sample::argmax(q);
        top1.push(c1);
        if c1 == golden.continuation[i] {
            agree += 1;
        }
        let k = match full {
            Some(rows) => kl_full(&rows[i], q),
            None => kl_top(&golden.top[i], q),
        };
        kl.push(k);
    }
    let n = cand.len() as f64;
    Ok(Fidelity {
        reference: golden.source.clone(),
        top1_agreement: agree as f64 / n,
        mean_kl: kl.iter().sum::<f64>() / n,
        kl,
        candidate_top1: top1,
        reference_ids: golden.continuation.clone(),
        max_mean_kl,
        min_agreement,
    })
}

/// KL(p ‖ q) for full log-probability rows.
fn kl_full(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(lp, _)| lp.is_finite())
        .map(|(&lp, &lq)| {
            let pp = (lp as f64).exp();
            if pp == 0.0 {
                0.0
            } else {
                pp * (lp as f64 - (lq as f64).max(-1e9))
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// KL(p ‖ q) restricted to the reference's top-k ids, both renormalised over that set.
fn kl_top(top: &[(u32, f32)], q: &[f32]) -> f64 {
    let lse = |xs: &mut dyn Iterator<Item = f64>| -> (Vec<f64>, f64) {
        let v: Vec<f64> = xs.collect();
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s = m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        (v, s)
    };
    let (p, ps) = lse(&mut top.iter().map(|&(_, l)| l as f64));
    let (qv, qs) = lse(&mut top
        .iter()
        .map(|&(id, _)| q.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64));
    p.iter()
        .zip(&qv)
        .map(|(lp, lq)| {
            let lp = lp - ps;
            let lq = lq - qs;
            lp.exp() * (lp - lq.max(-1e9))
        })
        .sum::<f64>()
        .max(0.0)
}

/// Reads a golden file.
pub fn read_golden(path: &Path) -> Result<Golden> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::io(code::Probe::Golden, "cannot read golden file", path, &e))?;
    serde_json::from_str(&text).map_err(|e| {
        Diagnostic::error(
            code::Probe::Golden,
            format!("{} is not a valid golden file: {e}", path.display()),
        )
        .with_file(path)
        .with_help("re-record it with `cargo rmlx probe --bless`")
    })
}

/// Writes a golden file (atomically).
pub fn write_golden(path: &Path, golden: &Golden) -> Result<()> {
    let io = |e: std::io::Error| Diagnostic::io(code::Probe::Golden, "cannot write", path, &e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(golden).expect("golden serializes");
    std::fs::write(&tmp, text + "\n").map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_identical_and_positive_otherwise() {
        let p = [(-0.1f32), -2.5, -4.0];
        assert!(kl_full(&p, &p).abs() < 1e-9);
        let q = [-2.5f32, -0.1, -4.0];
        assert!(kl_full(&p, &q) > 0.5);
        let top = vec![(0u32, -0.1f32), (1, -2.5)];
        assert!(kl_top(&top, &p).abs() < 1e-9);
        assert!(kl_top(&top, &q) > 0.5);
    }
}
