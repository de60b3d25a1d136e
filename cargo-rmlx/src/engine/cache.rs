//! Per-layer key/value cache shared by every architecture. Global-attention layers write
//! into buffers grown 256 positions at a time (one in-place slice update per step, instead
//! of re-copying the whole history with a concatenation); sliding-window layers keep only
//! their window.

use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use mlx_rs::Array;

/// Positions a global layer's buffer grows by.
const STEP: i32 = 256;

use crate::diagnostic::Result;

/// Keys and values of one attention layer, `[B, kv_heads, T, head_dim]`.
#[derive(Debug, Default)]
pub struct LayerCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions held (global layers: the buffers may be longer).
    len: i32,
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
        if window.is_none() {
            return self.append(keys, values);
        }
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

impl LayerCache {
    /// Global layer: writes the new positions into the buffers (grown when full) and returns
    /// views of everything held.
    fn append(&mut self, keys: Array, values: Array) -> Result<(Array, Array)> {
        let new = keys.shape()[2];
        let need = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |k| k.shape()[2]);
        if need > capacity {
            let cap = (need + STEP - 1) / STEP * STEP;
            let grow = |old: Option<Array>, like: &Array| -> Result<Array> {
                let s = like.shape();
                let fresh = mlx_rs::ops::zeros_dtype(&[s[0], s[1], cap, s[3]], like.dtype())?;
                Ok(match old {
                    Some(old) if self.len > 0 => {
                        let mut fresh = fresh;
                        let held = old.index((.., .., ..self.len, ..));
                        fresh.try_index_mut((.., .., ..self.len, ..), &held)?;
                        fresh
                    }
                    _ => fresh,
                })
            };
            let k = grow(self.keys.take(), &keys)?;
            let v = grow(self.values.take(), &values)?;
            self.keys = Some(k);
            self.values = Some(v);
        }
        let (Some(kb), Some(vb)) = (self.keys.as_mut(), self.values.as_mut()) else {
            unreachable!("buffers exist after growing");
        };
        kb.try_index_mut((.., .., self.len..need, ..), &keys)?;
        vb.try_index_mut((.., .., self.len..need, ..), &values)?;
        self.len = need;
        Ok((
            kb.index((.., .., ..need, ..)),
            vb.index((.., .., ..need, ..)),
        ))
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
