//! Layers that read the same input — q|k|v, gate|up — fused into one matmul at load time on
//! the MLX decode path ([`fuse_projections`]): the rows, scales and biases of quantized
//! weights (or a dense weight's rows) concatenate exactly along the output dimension, so one
//! kernel replaces two or three and the output is split back ([`Fused`]). The parts keep
//! views of the fused arrays (the host path's separate weights are not duplicated).

use mlx_rs::Array;

use super::{Linear, LinearKind};
use crate::diagnostic::{code, Diagnostic, Result};

/// Whether layers that read the same input (q|k|v, gate|up) are fused into one matmul at
/// load time: on the MLX decode path only (a GPU, or `RMLX_HOST_KERNELS=0`; the host kernels
/// run every projection of a step in one pass already), unless `RMLX_FUSE=0`. Decided once per
/// process and logged.
pub fn fuse_projections() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = !super::super::switches::fuse();
        let on = !super::super::qmv::enabled() && !off;
        if !super::super::qmv::enabled() {
            tracing::info!(
                "MLX decode path: q|k|v and gate|up {}",
                if on {
                    "fused into one matmul each"
                } else {
                    "as separate matmuls (RMLX_FUSE=0)"
                }
            );
        }
        on
    })
}

/// Layers fused along their outputs (see [`Linear::fuse`]): one matmul, then the output split
/// back into the parts' widths.
#[derive(Debug)]
pub struct Fused {
    linear: Linear,
    /// Where each part's output ends but the last (`split_axis` indices).
    bounds: Vec<i32>,
}

impl Fused {
    /// The parts' outputs for input `x` (`[…, input]`): `N` arrays `[…, width_i]`.
    pub fn forward<const N: usize>(&self, x: &Array) -> Result<[Array; N]> {
        let y = self.linear.forward(x)?;
        let parts = y.split_at_indices(&self.bounds, -1)?;
        parts.try_into().map_err(|_| {
            Diagnostic::error(
                code::Engine::Mlx,
                format!("a fused projection split into a different number of parts than {N}"),
            )
        })
    }
}

impl Linear {
    /// The layers `parts` (same input, each `[out_i, input]`) as one layer of `Σ out_i` rows,
    /// when they are alike (all dense of one dtype, or all quantized with the same settings;
    /// biases on all or none; no tensor-parallel sum): the rows, scales and biases concatenate
    /// exactly. The parts then hold views of the fused arrays, so memory is not doubled.
    /// `None` (nothing changed) when they differ or [`fuse_projections`] is off.
    pub fn fuse(parts: &mut [&mut Linear]) -> Result<Option<Fused>> {
        if !fuse_projections() {
            return Ok(None);
        }
        Self::join(parts)
    }

    /// [`Self::fuse`] whatever the path: `None` when the parts are not alike.
    fn join(parts: &mut [&mut Linear]) -> Result<Option<Fused>> {
        if parts.len() < 2 || !Self::alike(parts) {
            return Ok(None);
        }
        let rows: Vec<i32> = parts.iter().map(|p| p.out_rows()).collect();
        let cat = |get: &dyn Fn(&Linear) -> Option<&Array>| -> Result<Option<Array>> {
            let arrays: Option<Vec<&Array>> = parts.iter().map(|p| get(p)).collect();
            let Some(arrays) = arrays else {
                return Ok(None);
            };
            let fused = mlx_rs::ops::concatenate(&arrays, 0)?;
            fused.eval()?;
            Ok(Some(fused))
        };
        let bias = cat(&|l| l.bias.as_ref())?;
        let kind = match &parts[0].kind {
            LinearKind::Dense { .. } => LinearKind::Dense {
                weight: cat(&|l| Some(l.weight()))?.expect("dense weights"),
            },
            LinearKind::Quantized { params, .. } => LinearKind::Quantized {
                weight: cat(&|l| Some(l.weight()))?.expect("quantized weights"),
                scales: cat(&|l| l.quant_arrays().map(|(s, _)| s))?.expect("scales"),
                biases: cat(&|l| l.quant_arrays().and_then(|(_, b)| b))?,
                params: *params,
            },
        };
        let linear = Linear {
            kind,
            bias,
            all_sum: false,
        };
        let mut start = 0;
        for (part, n) in parts.iter_mut().zip(&rows) {
            part.view_rows(&linear, start, start + n)?;
            start += n;
        }
        let mut bounds: Vec<i32> = rows
            .iter()
            .scan(0, |end, n| {
                *end += n;
                Some(*end)
            })
            .collect();
        bounds.pop();
        Ok(Some(Fused { linear, bounds }))
    }

    /// Whether [`Self::fuse`] can join `parts`.
    fn alike(parts: &[&mut Linear]) -> bool {
        let first = &parts[0];
        parts.iter().all(|p| {
            let same_kind = match (&p.kind, &first.kind) {
                (LinearKind::Dense { weight: a }, LinearKind::Dense { weight: b }) => {
                    a.dtype() == b.dtype()
                }
                (
                    LinearKind::Quantized {
                        scales: sa,
                        biases: ba,
                        params: pa,
                        ..
                    },
                    LinearKind::Quantized {
                        scales: sb,
                        biases: bb,
                        params: pb,
                        ..
                    },
                ) => pa == pb && sa.dtype() == sb.dtype() && ba.is_some() == bb.is_some(),
                _ => false,
            };
            same_kind
                && !p.all_sum
                && p.bias.is_some() == first.bias.is_some()
                && p.weight().shape()[1..] == first.weight().shape()[1..]
        })
    }

    fn weight(&self) -> &Array {
        match &self.kind {
            LinearKind::Dense { weight } | LinearKind::Quantized { weight, .. } => weight,
        }
    }

    fn quant_arrays(&self) -> Option<(&Array, Option<&Array>)> {
        match &self.kind {
            LinearKind::Dense { .. } => None,
            LinearKind::Quantized { scales, biases, .. } => Some((scales, biases.as_ref())),
        }
    }

    /// Output features (rows of the weight).
    fn out_rows(&self) -> i32 {
        self.weight().shape()[0]
    }

    /// Makes this layer's arrays the views `start..end` (rows) of `fused`'s.
    fn view_rows(&mut self, fused: &Linear, start: i32, end: i32) -> Result<()> {
        use mlx_rs::ops::indexing::IndexOp;
        let rows = |a: &Array| -> Result<Array> {
            let v = a.index(start..end);
            v.eval()?;
            Ok(v)
        };
        self.bias = fused.bias.as_ref().map(rows).transpose()?;
        self.kind = match &fused.kind {
            LinearKind::Dense { weight } => LinearKind::Dense {
                weight: rows(weight)?,
            },
            LinearKind::Quantized {
                weight,
                scales,
                biases,
                params,
            } => LinearKind::Quantized {
                weight: rows(weight)?,
                scales: rows(scales)?,
                biases: biases.as_ref().map(rows).transpose()?,
                params: *params,
            },
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::ops::quantize;
    use mlx_rs::Array;

    use super::*;
    use crate::snapshot::{QuantMode, QuantParams};

    /// Uniform values in [-1, 1) of `shape`, seeded.
    fn random(shape: &[i32], seed: u64) -> Array {
        let key = mlx_rs::random::key(seed).unwrap();
        mlx_rs::random::uniform::<_, f32>(-1.0, 1.0, shape, &key).unwrap()
    }

    /// A 4-bit `[rows, cols]` layer (groups of 32), with a bias when `bias`.
    fn quantized(rows: usize, cols: usize, seed: u64, bias: bool) -> Linear {
        let w = random(&[rows as i32, cols as i32], seed);
        let (weight, scales, biases) = quantize(&w, 32, 4).unwrap();
        Linear {
            kind: LinearKind::Quantized {
                weight,
                scales,
                biases: Some(biases),
                params: QuantParams {
                    group_size: 32,
                    bits: 4,
                    mode: QuantMode::Affine,
                },
            },
            bias: bias.then(|| random(&[rows as i32], seed + 100)),
            all_sum: false,
        }
    }

    /// The fused layer's parts equal the separate layers exactly (one row of the fused
    /// matrix is one row of a part), and the parts still compute their own outputs through
    /// their views of the fused arrays.
    #[test]
    fn fused_quantized_projections_equal_the_separate_ones() {
        for bias in [false, true] {
            let x = random(&[1, 3, 64], 9);
            let mut parts = [
                quantized(96, 64, 1, bias),
                quantized(32, 64, 2, bias),
                quantized(32, 64, 3, bias),
            ];
            let alone: Vec<Array> = parts.iter().map(|p| p.forward(&x).unwrap()).collect();
            let [a, b, c] = &mut parts;
            let fused = Linear::join(&mut [a, b, c])
                .unwrap()
                .expect("alike parts fuse");
            let split: [Array; 3] = fused.forward(&x).unwrap();
            // The split parts are strided views: flatten (a copy) before reading.
            let values = |a: &Array| a.reshape(&[-1]).unwrap().as_slice::<f32>().to_vec();
            for (i, (want, got)) in alone.iter().zip(&split).enumerate() {
                assert_eq!(want.shape(), got.shape(), "part {i}");
                assert_eq!(values(want), values(got), "part {i}, bias {bias}");
                let viewed = parts[i].forward(&x).unwrap();
                assert_eq!(values(want), values(&viewed), "view {i}");
            }
        }
    }

    /// Layers that differ (bias on one only, other input width) are left alone.
    #[test]
    fn unlike_layers_are_not_fused() {
        let (mut a, mut b) = (quantized(32, 64, 1, true), quantized(32, 64, 2, false));
        assert!(Linear::join(&mut [&mut a, &mut b]).unwrap().is_none());
        let (mut a, mut b) = (quantized(32, 64, 1, false), quantized(32, 96, 2, false));
        assert!(Linear::join(&mut [&mut a, &mut b]).unwrap().is_none());
    }
}
