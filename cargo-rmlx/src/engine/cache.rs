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
    /// Appends new keys/values and returns the full history.
    pub fn update(&mut self, keys: Array, values: Array) -> Result<(Array, Array)> {
        let (k, v) = match (self.keys.take(), self.values.take()) {
            (Some(pk), Some(pv)) => (
                concatenate(&[pk, keys], 2)?,
                concatenate(&[pv, values], 2)?,
            ),
            _ => (keys, values),
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
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
