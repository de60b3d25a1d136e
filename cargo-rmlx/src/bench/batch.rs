//! `bench --batch`: the cost of one batched decode step of the engine alone (no HTTP, no
//! scheduler) — B sequences prefilled with the same prompt, then timed steps of
//! [`crate::engine::Net::forward_batch`] with every row's logits read back (the serving
//! scheduler runs the same pass; on a GPU it reads only each row's pick). B = 1 is the
//! single-sequence decode step, the baseline of the ratios.

use std::time::Instant;

use serde::Serialize;

use crate::diagnostic::Result;
use mlx_rs::ops::indexing::IndexOp;

use crate::engine::cache::Cache;
use crate::session::Session;

/// One measured batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BatchStep {
    /// Sequences decoded together.
    pub batch: usize,
    /// Median wall time of one step for all of them, milliseconds.
    pub ms_per_step: f64,
    /// Tokens per second over all sequences (`batch` / step time).
    #[serde(rename = "aggregate_tok_s")]
    pub aggregate_tps: f64,
    /// The first step, milliseconds: the batch's shared key/value buffers are formed, and
    /// any kernel first needed at this batch size is made.
    pub first_ms: f64,
    /// A step right after the batch was formed again from the same sequences in another
    /// order (as a joining or leaving sequence makes the scheduler do), milliseconds.
    pub reformed_ms: f64,
}

/// Prefills `batch` caches with `prompt`, then times `steps` batched decode steps (after one
/// warm-up step, reported apart); the median step is reported, and one step after the rows
/// were put in another order (the batch formed again).
pub fn measure_batch(
    session: &Session,
    prompt: &[u32],
    batch: usize,
    steps: usize,
) -> Result<BatchStep> {
    let net = &session.model.net;
    let input = mlx_rs::Array::from_slice(
        &prompt.iter().map(|&t| t as i32).collect::<Vec<_>>(),
        &[1, prompt.len() as i32],
    );
    let mut caches: Vec<Cache> = (0..batch.max(1)).map(|_| net.new_cache()).collect();
    for cache in &mut caches {
        net.forward_last(&input, cache)?.eval()?;
    }
    let token = prompt.last().copied().unwrap_or(0);
    let ids = vec![token; caches.len()];
    let mut times = Vec::with_capacity(steps + 1);
    for _ in 0..=steps.max(1) {
        times.push(timed_step(session, &ids, &mut caches)?);
    }
    let first = times.remove(0);
    caches.rotate_left(1);
    let reformed = timed_step(session, &ids, &mut caches)?;
    times.sort_by(f64::total_cmp);
    let step = times[times.len() / 2];
    Ok(BatchStep {
        batch: ids.len(),
        ms_per_step: step * 1e3,
        aggregate_tps: ids.len() as f64 / step.max(1e-9),
        first_ms: first * 1e3,
        reformed_ms: reformed * 1e3,
    })
}

/// One batched step of `ids` on `caches` with every row's logits read, in seconds.
fn timed_step(session: &Session, ids: &[u32], caches: &mut [Cache]) -> Result<f64> {
    let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
    let start = Instant::now();
    let logits = session.model.net.forward_batch(ids, &mut refs)?;
    logits.eval()?;
    for b in 0..ids.len() {
        logits.index(b as i32).eval()?;
    }
    Ok(start.elapsed().as_secs_f64())
}
