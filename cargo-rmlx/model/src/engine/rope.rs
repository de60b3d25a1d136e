//! RoPE frequency variants that [`super::layers::Rope`] applies through custom frequencies:
//! YaRN ([`yarn`]) exactly as mlx-lm 0.32.2 computes it — frequencies and the ramp in float32
//! MLX arithmetic, the correction range and `mscale` in double precision — and the input
//! scaling it needs ([`scale_leading`]).

use std::f64::consts::PI;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{clip, concatenate};
use mlx_rs::Array;

use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::RopeScaling;

/// YaRN's per-pair periods (`[dims / 2]`, for `fast::rope`'s `freqs`) and the factor the
/// rotated features are multiplied by (`mscale`). mlx-lm reads `factor`,
/// `original_max_position_embeddings`, `beta_fast`, `beta_slow`, `mscale` and
/// `mscale_all_dim`, and ignores the rest (e.g. GPT-OSS's `truncate: false`).
pub fn yarn(dims: usize, base: f32, scaling: &RopeScaling) -> Result<(Array, f32)> {
    let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast,
        beta_slow,
        mscale,
        mscale_all_dim,
    } = *scaling
    else {
        return Err(Diagnostic::error(
            code::Engine::Rope,
            "YaRN frequencies asked for a non-YaRN rope_scaling (internal error)",
        ));
    };
    let d = dims as f64;
    let correction = |rotations: f32| {
        d * (f64::from(original) / (f64::from(rotations) * 2.0 * PI)).ln()
            / (2.0 * f64::from(base).ln())
    };
    let low = correction(beta_fast).floor().max(0.0);
    let mut high = correction(beta_slow).ceil().min(d - 1.0);
    if low == high {
        high += 0.001; // mlx-lm's guard against a zero-width ramp
    }
    let pairs = (dims / 2) as i32;
    let exponents: Vec<f32> = (0..pairs).map(|i| (2 * i) as f32 / dims as f32).collect();
    let extra = Array::from_f32(base).power(Array::from_slice(&exponents, &[pairs]))?;
    let inter = extra.multiply(Array::from_f32(factor))?;
    let index: Vec<f32> = (0..pairs).map(|i| i as f32).collect();
    let ramp = Array::from_slice(&index, &[pairs])
        .subtract(Array::from_f32(low as f32))?
        .divide(Array::from_f32((high - low) as f32))?;
    let ramp = clip(&ramp, (0.0f32, 1.0f32))?;
    let mask = Array::from_f32(1.0).subtract(&ramp)?;
    let one_minus = Array::from_f32(1.0).subtract(&mask)?;
    let freqs = inter
        .multiply(&extra)?
        .divide(inter.multiply(&mask)?.add(extra.multiply(&one_minus)?)?)?;
    let m = |scale: f32, m: f32| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * f64::from(m) * f64::from(scale).ln() + 1.0
        }
    };
    let mscale = m(factor, mscale) / m(factor, mscale_all_dim);
    Ok((freqs, mscale as f32))
}

/// `x` with its first `dims` features (last axis) multiplied by `factor`.
pub fn scale_leading(x: &Array, dims: i32, factor: f32) -> Result<Array> {
    let width = *x.shape().last().unwrap_or(&0);
    let f = Array::from_f32(factor).as_dtype(x.dtype())?;
    if dims >= width {
        return Ok(x.multiply(&f)?);
    }
    let head = x.index((.., .., .., ..dims)).multiply(&f)?;
    let tail = x.index((.., .., .., dims..));
    Ok(concatenate(&[head, tail], -1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-OSS's settings: the values mlx-lm 0.32.2's `YarnRoPE(64, base=150000,
    /// scaling_factor=32, original_max_position_embeddings=4096)` holds (printed with the
    /// reference venv: `_freqs[[0, 8, 16, 31]]`, `mscale`).
    #[test]
    fn yarn_matches_mlx_lm() {
        let scaling = RopeScaling::Yarn {
            factor: 32.0,
            original_max_position_embeddings: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 0.0,
        };
        let (freqs, mscale) = yarn(64, 150_000.0, &scaling).unwrap();
        assert!((mscale - 1.346_573_6).abs() < 1e-6, "{mscale}");
        let f = freqs.as_slice::<f32>().to_vec();
        assert_eq!(f.len(), 32);
        for (i, want) in REFERENCE {
            let got = f[i];
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "freq {i}: {got} vs {want}"
            );
        }
    }

    const REFERENCE: [(usize, f32); 4] = [
        (0, 1.0),
        (8, 19.679_897),
        (16, 1_721.326),
        (31, 3_307_412.5),
    ];
}
