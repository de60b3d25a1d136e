//! Warming a GPU's kernels when a model loads ([`warm_up`]). MLX's CUDA backend compiles some
//! kernels (NVRTC) the first time a shape class needs them, seconds each. On an H100 the
//! first batched step of 8 rows of a Qwen3-8B-shaped model took 26 s, and the first of
//! 2 rows of a 135M model 4 s (BENCHMARKS "GPU serving, round 9"); a server paid that in
//! the middle of serving, with every running stream waiting. [`warm_up`] runs the serving
//! path once at load instead:
//! - one prefill of each prompt-chunk length class;
//! - one batched decode step of each batch size `1..=max_batch`, through
//!   [`Sequence::feed_together`] as the scheduler runs them.
//!
//! MLX keeps what it compiled on disk (its PTX cache): on a machine that compiled these once,
//! a warm-up only runs the steps.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::generate::{GenerateOptions, PREFILL_CHUNK};
use super::sequence::{Sequence, StartCache};
use super::Model;
use crate::diagnostic::Result;

/// Prompt lengths prefilled: one in each tile class of MLX's quantized matmul (rows ≤ 16,
/// ≤ 32, ≤ 64, ≤ 128, more), then a full chunk.
const PREFILL_LENGTHS: [usize; 6] = [8, 24, 48, 96, 192, PREFILL_CHUNK];

/// What a warm-up ran.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    /// Prompts prefilled.
    pub prefills: usize,
    /// Decode passes run, one per batch size from 1 (fewer only where a context too short
    /// left no sequence with a token to run).
    pub batches: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs one prefill of each prompt-length class and one decode step of each batch size
/// `1..=max_batch` on `model` (see the module docs); nothing is kept.
pub fn warm_up(model: &Model, max_batch: usize) -> Result<WarmUp> {
    let started = Instant::now();
    let max_batch = max_batch.max(1);
    let mut seqs = prefilled(model, max_batch)?;
    let prefills = seqs.len();
    seqs.truncate(max_batch);
    let mut batches = 0;
    for b in 1..=seqs.len() {
        let mut rows: Vec<&mut Sequence> = Vec::with_capacity(b);
        for seq in seqs.iter_mut().take(b) {
            // A sequence out of tokens (a context too short for the warm-up) sits out.
            if seq.step(model, |_| ControlFlow::Continue(()))?.is_some() {
                rows.push(seq);
            }
        }
        if rows.len() == b {
            batches += 1;
        }
        Sequence::feed_together(&mut rows, model)?;
    }
    // The last pass's steps are read, so that everything queued has run.
    for seq in &mut seqs {
        seq.step(model, |_| ControlFlow::Continue(()))?;
    }
    Ok(WarmUp {
        prefills,
        batches,
        elapsed: started.elapsed(),
    })
}

/// `max(max_batch, prompt lengths)` sequences, unpipelined as a batching scheduler runs
/// them, each prefilled with a prompt of the next length of [`PREFILL_LENGTHS`] that fits
/// the context.
fn prefilled(model: &Model, max_batch: usize) -> Result<Vec<Sequence>> {
    let opts = GenerateOptions {
        max_tokens: max_batch + 2,
        ignore_eos: true,
        top: 1,
        evidence: false,
        ..GenerateOptions::default()
    };
    let room = model.max_context.saturating_sub(opts.max_tokens + 1).max(1);
    let lengths: Vec<usize> = PREFILL_LENGTHS.iter().map(|&n| n.min(room)).collect();
    let vocab = model.net.vocab_size.max(1) as u32;
    (0..max_batch.max(lengths.len()))
        .map(|i| {
            let len = lengths[i % lengths.len()];
            let prompt: Vec<u32> = (0..len as u32)
                .map(|t| (t * 7 + i as u32) % vocab)
                .collect();
            let mut seq = Sequence::start(model, &prompt, &opts, StartCache::fresh())?
                .for_batches_of(max_batch);
            while seq.is_prefilling() {
                seq.prefill_chunk(model)?;
            }
            Ok(seq)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DtypePolicy;
    use crate::snapshot::Snapshot;

    /// On a tiny random llama (MLX's path, as on a GPU): every batch size and prompt class
    /// runs without error, whatever the batch limit.
    #[test]
    fn warm_up_runs_every_batch_size_and_prompt_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::engine::tests::write_tiny_llama(dir.path(), 7);
        let snap = Snapshot::open(dir.path()).expect("open tiny model");
        let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
            .expect("load tiny model");
        for max_batch in [1, 4, 9] {
            let w = warm_up(&model, max_batch).expect("warm up");
            assert_eq!(w.batches, max_batch);
            assert_eq!(w.prefills, max_batch.max(PREFILL_LENGTHS.len()));
        }
    }
}
