//! What every architecture's network offers the rest of the engine ([`Network`]), and [`Net`],
//! the loaded network as generate, the probe, serve and bench use it: logits of the last
//! position or of every position, one decode step of several sequences at once
//! ([`Net::forward_batch`]), a fresh cache of the architecture's declared kinds.

use mlx_rs::{Array, Dtype};

use super::cache::{Cache, CacheKind};
use crate::diagnostic::{code, Result};

/// A loaded architecture (one module under `crate::arch` builds it from the weights).
pub trait Network: Send + std::fmt::Debug {
    /// Runs `ids` (`[1, L]` int32) through the embeddings and every block, appending to
    /// `cache`, and advances `cache.offset` by `L`. Returns the residual stream `[1, L, hidden]`
    /// before the final norm.
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array>;

    /// Final norm and LM head (and any logit softcapping) → float32 logits `[…, vocab]`.
    fn logits(&self, hidden: &Array) -> Result<Array>;

    /// The cache kind of each layer.
    fn cache_kinds(&self) -> Vec<CacheKind>;

    /// Batched decode: one new token per sequence, `ids` (`[B, 1]` int32), token `b` on
    /// `caches[b]` (each at its own offset, advanced by 1). Returns the residual stream
    /// `[B, 1, hidden]`, or `None` when the architecture has no batched path (the caller then
    /// steps the sequences one by one).
    fn hidden_batch(&self, ids: &Array, caches: &mut [&mut Cache]) -> Result<Option<Array>> {
        let _ = (ids, caches);
        Ok(None)
    }

    /// Prompt chunks of several sequences in one pass: `ids[s]` (`[1, L_s]` int32) on
    /// `caches[s]`, each advanced by its `L_s`. Returns each sequence's residual stream
    /// `[1, L_s, hidden]` — bit for bit what [`Self::hidden`] gives it alone — or `None`
    /// (nothing run) when the architecture or these chunks have no such path: the caller then
    /// runs them one at a time.
    fn hidden_together(
        &self,
        ids: &[Array],
        caches: &mut [&mut Cache],
    ) -> Result<Option<Vec<Array>>> {
        let _ = (ids, caches);
        Ok(None)
    }
}

/// A loaded network with its compute dtype and vocabulary size.
#[derive(Debug)]
pub struct Net {
    inner: Box<dyn Network>,
    /// Compute dtype of activations.
    pub dtype: Dtype,
    /// Vocabulary size (logit count).
    pub vocab_size: usize,
}

impl Net {
    /// Wraps an architecture's network.
    pub fn new(inner: Box<dyn Network>, dtype: Dtype, vocab_size: usize) -> Self {
        Self {
            inner,
            dtype,
            vocab_size,
        }
    }

    /// Replaces the network by `f(network)`: a wrapper that sees every pass (the distributed
    /// server's rank 0 announces each one to the other ranks, `serve::distributed`).
    pub fn wrap(&mut self, f: impl FnOnce(Box<dyn Network>) -> Box<dyn Network>) {
        let inner = std::mem::replace(&mut self.inner, Box::new(Unwrapped));
        self.inner = f(inner);
    }

    /// The residual stream of `ids` (`[1, L]` int32) before the final norm, appending to
    /// `cache` (lazy): every collective of a tensor-parallel pass, without the LM head.
    pub fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        self.inner.hidden(ids, cache)
    }

    /// Runs `ids` (`[1, L]` int32) through the model, appending to `cache`; returns the
    /// logits of the last position as float32 `[vocab]` (lazy; evaluate to compute).
    pub fn forward_last(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1];
        let x = self.inner.hidden(ids, cache)?;
        if len == 1 {
            // A decode step: one position already (no gather over the positions).
            let logits = self.inner.logits(&x)?.reshape(&[-1])?;
            crate::mlx::graph::dump_once(1, &[&logits]);
            return Ok(logits);
        }
        self.last_logits(&x)
    }

    /// The logits of the last position of `x` (`[1, L, hidden]`) as float32 `[vocab]`: only
    /// that position goes through the LM head.
    fn last_logits(&self, x: &Array) -> Result<Array> {
        let last = x.take_axis(Array::from_int(x.shape()[1] - 1), 1)?;
        Ok(self.inner.logits(&last)?.reshape(&[-1])?)
    }

    /// [`Self::forward_last`] of several sequences' prompt chunks in one pass where the
    /// network has one ([`Network::hidden_together`]): `ids[s]` (`[1, L_s]` int32) on
    /// `caches[s]`; returns each sequence's last-position logits, the values
    /// `forward_last` gives it alone, or `None` (nothing run) where there is no such pass.
    pub fn forward_last_together(
        &self,
        ids: &[Array],
        caches: &mut [&mut Cache],
    ) -> Result<Option<Vec<Array>>> {
        let Some(hidden) = self.inner.hidden_together(ids, caches)? else {
            return Ok(None);
        };
        hidden
            .iter()
            .map(|x| self.last_logits(x))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Like [`Self::forward_last`] but returns the logits of every position, `[L, vocab]`
    /// float32 (teacher forcing).
    pub fn forward_all(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1];
        let x = self.inner.hidden(ids, cache)?;
        Ok(self.inner.logits(&x)?.reshape(&[len, -1])?)
    }

    /// One decode step of several sequences in one pass: `ids[b]` runs on `caches[b]`;
    /// returns float32 logits `[B, vocab]` (lazy). The weight-bound work (projections, MLP,
    /// LM head) runs once for all rows where the architecture has a batched path
    /// ([`Network::hidden_batch`]); otherwise each sequence steps on its own (logged once).
    pub fn forward_batch(&self, ids: &[u32], caches: &mut [&mut Cache]) -> Result<Array> {
        let b = ids.len() as i32;
        let input: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        if b > 1 {
            let input = Array::from_slice(&input, &[b, 1]);
            if let Some(x) = self.inner.hidden_batch(&input, caches)? {
                let logits = self.inner.logits(&x)?.reshape(&[b, -1])?;
                crate::mlx::graph::dump_once(ids.len(), &[&logits]);
                return Ok(logits);
            }
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                tracing::info!(
                    "this architecture has no batched decode: batched sequences step one by one"
                )
            });
        }
        let rows = input
            .iter()
            .zip(caches.iter_mut())
            .map(|(&t, c)| self.forward_last(&Array::from_slice(&[t], &[1, 1]), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(mlx_rs::ops::stack(&rows, 0)?)
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> Cache {
        Cache::new(&self.inner.cache_kinds())
    }
}

/// The placeholder [`Net::wrap`] holds for the instant it takes the network out.
#[derive(Debug)]
struct Unwrapped;

impl Network for Unwrapped {
    fn hidden(&self, _: &Array, _: &mut Cache) -> Result<Array> {
        Err(unwrapped())
    }

    fn logits(&self, _: &Array) -> Result<Array> {
        Err(unwrapped())
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        Vec::new()
    }
}

fn unwrapped() -> crate::diagnostic::Diagnostic {
    crate::diagnostic::Diagnostic::error(
        code::Engine::NetworkUnwrapped,
        "a network was used while being wrapped (internal error)",
    )
}
