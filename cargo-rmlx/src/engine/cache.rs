//! Per-layer key/value cache shared by every architecture.

use mlx_rs::ops::concatenate;
use mlx_rs::Array;

use crate::diagnostic::Result;

/// Keys and values of one attention layer, `[B, kv_heads, T, head_dim]`.
#[derive(Debug, Default)]
pub struct LayerCache {
    keys: Option<Array>,
    values: Option<Array>,
}

impl LayerCache {
    /// Appends new keys/values and returns what the new queries attend over: the full history,
    /// or for a sliding-window layer the last `window - 1` cached positions plus the new ones.
    /// A sliding-window layer keeps only the last `window - 1` positions afterwards (the next
    /// query sees those plus itself).
    pub fn update(
        &mut self,
        keys: Array,
        values: Array,
        window: Option<usize>,
    ) -> Result<(Array, Array)> {
        let (k, v) = match (self.keys.take(), self.values.take()) {
            (Some(pk), Some(pv)) => (concatenate(&[pk, keys], 2)?, concatenate(&[pv, values], 2)?),
            _ => (keys, values),
        };
        let (keep_k, keep_v) = match window {
            Some(w) if k.shape()[2] as usize >= w => {
                let len = k.shape()[2];
                let start = len - (w as i32 - 1);
                let idx = Array::from_iter(start..len, &[len - start]);
                (k.take_axis(&idx, 2)?, v.take_axis(&idx, 2)?)
            }
            _ => (k.clone(), v.clone()),
        };
        self.keys = Some(keep_k);
        self.values = Some(keep_v);
        Ok((k, v))
    }
}

/// The cache of a whole model: one [`LayerCache`] per layer plus the position offset.
#[derive(Debug)]
pub struct KvCache {
    /// Per-layer caches.
    pub layers: Vec<LayerCache>,
    /// Number of positions already processed.
    pub offset: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| LayerCache::default()).collect(),
            offset: 0,
        }
    }
}
