//! Warming a GPU's kernels when a model loads ([`warm_up`]). MLX's CUDA backend compiles some
//! kernels (NVRTC) the first time a shape class needs them, seconds each. On an H100 the
//! first batched step of 8 rows of a Qwen3-8B-shaped model took 26 s, and the first of
//! 2 rows of a 135M model 4 s (BENCHMARKS "GPU serving, round 9"); a server paid that in
//! the middle of serving, with every running stream waiting. [`warm_up`] runs the serving
//! path once at load instead:
//! - one prefill of each prompt-chunk length class;
//! - one batched decode step of each batch size `1..=max_batch`, through
//!   [`Sequence::feed_together`] as the scheduler runs them;
//! - one lone decode step at each key/value capacity from 256 to [`CAPACITY_LIMIT`]
//!   positions ([`lone_steps`]): from 256 keys on, MLX's CUDA backend runs a lone sequence's
//!   attention through cuDNN, whose graph it builds (and compiles) once per capacity of the
//!   key/value buffer — 0.43 s in the middle of serving on an H100, when the last running
//!   request of a 16-client run crossed 256 positions (BENCHMARKS "GPU serving, round 10").
//!   Longer contexts pay that once per further 256 positions, the first time.
//!
//! MLX keeps what it compiled on disk (its PTX cache): on a machine that compiled these once,
//! a warm-up only runs the steps.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::cache::STEP;
use super::generate::{GenerateOptions, PREFILL_CHUNK};
use super::sequence::{Sequence, StartCache};
use super::Model;
use crate::diagnostic::Result;

/// Prompt lengths prefilled: one in each tile class of MLX's quantized matmul (rows ≤ 16,
/// ≤ 32, ≤ 64, ≤ 128, more), then a full chunk.
const PREFILL_LENGTHS: [usize; 6] = [8, 24, 48, 96, 192, PREFILL_CHUNK];

/// The largest key/value capacity [`lone_steps`] warms (positions).
pub const CAPACITY_LIMIT: usize = 2048;

/// What a warm-up ran.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    /// Prompts prefilled.
    pub prefills: usize,
    /// Decode passes run, one per batch size from 1 (fewer only where a context too short
    /// left no sequence with a token to run).
    pub batches: usize,
    /// Lone decode steps run, one per key/value capacity warmed ([`lone_steps`]).
    pub capacities: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs one prefill of each prompt-length class, one decode step of each batch size
/// `1..=max_batch` and one lone step at each key/value capacity up to [`CAPACITY_LIMIT`] on
/// `model` (see the module docs); nothing is kept.
pub fn warm_up(model: &Model, max_batch: usize) -> Result<WarmUp> {
    warm_up_to(model, max_batch, CAPACITY_LIMIT)
}

/// [`warm_up`] with the largest key/value capacity to warm.
fn warm_up_to(model: &Model, max_batch: usize, capacity_limit: usize) -> Result<WarmUp> {
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
    let capacities = lone_steps(model, max_batch, capacity_limit)?;
    Ok(WarmUp {
        prefills,
        batches,
        capacities,
        elapsed: started.elapsed(),
    })
}

/// One sequence per key/value capacity `c` in 256, 512, … up to `limit` (and what the
/// context holds): prefilled with `c - 1` tokens, then one decode step alone, so that the
/// step attends over exactly `c` keys in a buffer of `c` positions, as a lone request does
/// when it reaches that length. Returns the steps run.
fn lone_steps(model: &Model, max_batch: usize, limit: usize) -> Result<usize> {
    let step = STEP as usize;
    let fits = |c: &usize| *c + 2 <= model.max_context;
    let mut ran = 0;
    for capacity in (step..=limit).step_by(step).filter(fits) {
        let mut seq = prefilled_with(model, max_batch, &warm_prompt(model, capacity - 1, 0))?;
        if seq.step(model, |_| ControlFlow::Continue(()))?.is_none() {
            continue;
        }
        Sequence::feed_together(&mut [&mut seq], model)?;
        seq.step(model, |_| ControlFlow::Continue(()))?;
        ran += 1;
    }
    Ok(ran)
}

/// `max(max_batch, prompt lengths)` sequences, unpipelined as a batching scheduler runs
/// them, each prefilled with a prompt of the next length of [`PREFILL_LENGTHS`] that fits
/// the context.
fn prefilled(model: &Model, max_batch: usize) -> Result<Vec<Sequence>> {
    let room = model
        .max_context
        .saturating_sub(warm_options(max_batch).max_tokens + 1)
        .max(1);
    let lengths: Vec<usize> = PREFILL_LENGTHS.iter().map(|&n| n.min(room)).collect();
    (0..max_batch.max(lengths.len()))
        .map(|i| {
            let prompt = warm_prompt(model, lengths[i % lengths.len()], i as u32);
            prefilled_with(model, max_batch, &prompt)
        })
        .collect()
}

/// A sequence of `prompt`, fully prefilled, run as a scheduler of `max_batch` runs it.
fn prefilled_with(model: &Model, max_batch: usize, prompt: &[u32]) -> Result<Sequence> {
    let opts = warm_options(max_batch);
    let mut seq =
        Sequence::start(model, prompt, &opts, StartCache::fresh())?.for_batches_of(max_batch);
    while seq.is_prefilling() {
        seq.prefill_chunk(model)?;
    }
    Ok(seq)
}

/// Greedy, no evidence, room for one step of each batch size.
fn warm_options(max_batch: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: max_batch + 2,
        ignore_eos: true,
        top: 1,
        evidence: false,
        ..GenerateOptions::default()
    }
}

/// `len` token ids in the vocabulary, varied by `salt`.
fn warm_prompt(model: &Model, len: usize, salt: u32) -> Vec<u32> {
    let vocab = model.net.vocab_size.max(1) as u32;
    (0..len as u32).map(|t| (t * 7 + salt) % vocab).collect()
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
            let w = warm_up_to(&model, max_batch, 0).expect("warm up");
            assert_eq!(w.batches, max_batch);
            assert_eq!(w.prefills, max_batch.max(PREFILL_LENGTHS.len()));
            assert_eq!(w.capacities, 0);
        }
    }

    /// One lone step per key/value capacity up to the limit, fewer where the context has no
    /// room for a capacity (700 positions: 256 and 512, not 768).
    #[test]
    fn warm_up_steps_alone_at_each_key_value_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::engine::tests::write_tiny_llama(dir.path(), 7);
        let config = dir.path().join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).expect("read config")).expect("json");
        c["max_position_embeddings"] = serde_json::json!(700); // room for capacities 256, 512
        std::fs::write(&config, c.to_string()).expect("write config");
        let snap = Snapshot::open(dir.path()).expect("open tiny model");
        let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
            .expect("load tiny model");
        let w = warm_up_to(&model, 2, 3 * STEP as usize).expect("warm up");
        assert_eq!(w.capacities, 2);
    }
}
