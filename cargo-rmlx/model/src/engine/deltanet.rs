//! Gated delta-net linear attention (Qwen3.5, Qwen3-Next): [`GatedDeltaNet`] — input
//! projections, a short depthwise causal convolution over q/k/v, L2-normalised q/k, the gated
//! delta rule recurrence over a `[heads, v_dim, k_dim]` state matrix, and a SiLU-gated
//! RMSNorm before the output projection. What it carries between steps is a
//! [`Recurrent`] cache entry: the convolution's last `kernel - 1` inputs and the state matrix
//! (float32), so a prompt split over chunks and decode steps computes what one prefill does.
//! The pieces ([`short_conv`], [`normalize_qk`], [`gated_delta_update`]) are public for
//! variants with other projection layouts.
//!
//! The recurrence runs one position at a time with MLX operations, as mlx-lm does on every
//! device without Metal (its reference path), so the numerics follow it step by step.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{concatenate, conv1d, stack};
use mlx_rs::{Array, Dtype};

use super::cache::Recurrent;
use super::layers::{Linear, LoadCtx, RmsNorm};
use crate::diagnostic::{code, Diagnostic, Result};

/// The shape of a gated delta-net layer.
#[derive(Debug, Clone, Copy)]
pub struct DeltaNetSpec {
    /// Key (and query) heads.
    pub n_k_heads: usize,
    /// Value heads (a multiple of the key heads).
    pub n_v_heads: usize,
    /// Width of a key/query head.
    pub k_head_dim: usize,
    /// Width of a value head.
    pub v_head_dim: usize,
    /// Taps of the causal convolution (at least 2).
    pub conv_kernel: usize,
    /// Epsilon of the gated output norm.
    pub eps: f32,
}

impl DeltaNetSpec {
    /// Channels of the convolution: queries, keys and values side by side.
    pub fn conv_dim(&self) -> usize {
        2 * self.n_k_heads * self.k_head_dim + self.n_v_heads * self.v_head_dim
    }

    /// Checks what the math needs: value heads a multiple of key heads, a kernel of ≥ 2 taps.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.n_k_heads == 0 || !self.n_v_heads.is_multiple_of(self.n_k_heads) {
            return Err(format!(
                "linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({})",
                self.n_v_heads, self.n_k_heads
            ));
        }
        if self.conv_kernel < 2 {
            return Err(format!(
                "linear_conv_kernel_dim must be at least 2, found {}",
                self.conv_kernel
            ));
        }
        Ok(())
    }
}

/// A gated delta-net layer (module docs), in mlx-lm's Qwen3.5 parameter layout.
#[derive(Debug)]
pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    /// Depthwise kernel `[conv_dim, kernel, 1]`.
    conv_weight: Array,
    /// `log A` per value head, float32.
    a_log: Array,
    dt_bias: Array,
    norm: RmsNorm,
    out_proj: Linear,
    spec: DeltaNetSpec,
}

impl GatedDeltaNet {
    /// Loads `{prefix}.{in_proj_qkv,in_proj_z,in_proj_b,in_proj_a,conv1d,A_log,dt_bias,norm,
    /// out_proj}` for a residual width `hidden`.
    pub fn load(
        ctx: &LoadCtx<'_>,
        prefix: &str,
        hidden: usize,
        spec: DeltaNetSpec,
    ) -> Result<Self> {
        spec.check().map_err(|msg| {
            Diagnostic::error(code::Snapshot::Config, msg).with_file(&ctx.config.path)
        })?;
        let s = &spec;
        let (key_dim, value_dim) = (s.n_k_heads * s.k_head_dim, s.n_v_heads * s.v_head_dim);
        let qkv = [key_dim, key_dim, value_dim];
        let path = |name: &str| format!("{prefix}.{name}");
        // Tensor parallelism: this rank's key-head groups; every per-head tensor follows them
        // (q, k and v parts of the projection and of the convolution's channels, z, a, b,
        // A_log, dt_bias) and the output projection sums the ranks' partial outputs.
        let ctx = &ctx.delta_heads();
        let heads = ctx.column();
        Ok(Self {
            in_proj_qkv: ctx.column_fused_linear(&path("in_proj_qkv"), hidden, &qkv, false)?,
            in_proj_z: ctx.column_linear(&path("in_proj_z"), hidden, value_dim, false)?,
            in_proj_b: ctx.column_linear(&path("in_proj_b"), hidden, s.n_v_heads, false)?,
            in_proj_a: ctx.column_linear(&path("in_proj_a"), hidden, s.n_v_heads, false)?,
            conv_weight: ctx
                .channels(&qkv)?
                .param(&path("conv1d.weight"), &[s.conv_dim(), s.conv_kernel, 1])?,
            // mlx-lm keeps A_log in float32 whatever the model's dtype.
            a_log: heads.param_as(&path("A_log"), &[s.n_v_heads], Dtype::Float32)?,
            dt_bias: heads.param(&path("dt_bias"), &[s.n_v_heads])?,
            norm: ctx.rms_norm(&path("norm"), s.v_head_dim, s.eps, false)?,
            out_proj: ctx.row_linear(&path("out_proj"), value_dim, hidden, false)?,
            spec,
        })
    }

    /// `x` (`[B, S, hidden]`) → the layer's output `[B, S, hidden]`, carrying `cache` over.
    pub fn forward(&self, x: &Array, cache: &mut Recurrent) -> Result<Array> {
        let s = &self.spec;
        let (b, len) = (x.shape()[0], x.shape()[1]);
        let [qkv, z, beta_in, a] = Linear::forward_many(
            [
                &self.in_proj_qkv,
                &self.in_proj_z,
                &self.in_proj_b,
                &self.in_proj_a,
            ],
            x,
        )?;
        let conv = short_conv(&qkv, &self.conv_weight, &mut cache.conv)?;
        let key_dim = (s.n_k_heads * s.k_head_dim) as i32;
        let parts = conv.split_at_indices(&[key_dim, 2 * key_dim], -1)?;
        let heads = |t: &Array, n: usize, d: usize| t.reshape(&[b, len, n as i32, d as i32]);
        let q = heads(&parts[0], s.n_k_heads, s.k_head_dim)?;
        let k = heads(&parts[1], s.n_k_heads, s.k_head_dim)?;
        let v = heads(&parts[2], s.n_v_heads, s.v_head_dim)?;
        let (q, k) = normalize_qk(&q, &k)?;
        let gates = DeltaGates::new(&a, &beta_in, &self.a_log, &self.dt_bias)?;
        let (y, state) = gated_delta_update(&q, &k, &v, &gates, cache.state.take())?;
        cache.state = Some(state);
        let z = heads(&z, s.n_v_heads, s.v_head_dim)?;
        let y = self.gated_norm(&y, &z)?;
        self.out_proj.forward(&y.reshape(&[b, len, -1])?)
    }

    /// `silu(z) · rms_norm(y)`, computed in float32 and returned in `y`'s dtype.
    fn gated_norm(&self, y: &Array, z: &Array) -> Result<Array> {
        let normed = self.norm.forward(y)?.as_dtype(Dtype::Float32)?;
        let gate = mlx_rs::nn::silu(z.as_dtype(Dtype::Float32)?)?;
        Ok(gate.multiply(&normed)?.as_dtype(y.dtype())?)
    }
}

/// The depthwise causal convolution of `x` (`[B, S, C]`) with `weight` (`[C, K, 1]`) and
/// SiLU, continuing from the previous inputs in `tail` (`[B, K - 1, C]`, zeros at the start),
/// which is replaced by the last `K - 1` inputs.
pub fn short_conv(x: &Array, weight: &Array, tail: &mut Option<Array>) -> Result<Array> {
    let (b, channels) = (x.shape()[0], x.shape()[2]);
    let keep = weight.shape()[1] - 1;
    let prev = match tail.take() {
        Some(t) => t,
        None => mlx_rs::ops::zeros_dtype(&[b, keep, channels], x.dtype())?,
    };
    let input = concatenate(&[prev, x.clone()], 1)?;
    let total = input.shape()[1];
    *tail = Some(input.index((.., (total - keep)..total, ..)));
    let out = conv1d(&input, weight, 1, 0, 1, channels)?;
    Ok(mlx_rs::nn::silu(out)?)
}

/// L2-normalises queries and keys over their head width `d` and folds the `d^-1/2` readout
/// scale into the queries: `q / |q| · d^-1/2`, `k / |k|` (with the reference's 1e-6 added to
/// the squared norm), computed as RMS norms the way mlx-lm does.
pub fn normalize_qk(q: &Array, k: &Array) -> Result<(Array, Array)> {
    let d = q.shape()[q.ndim() - 1] as f64;
    let inv = d.powf(-0.5);
    let eps = (1e-6 * inv * inv) as f32;
    let scalar = |v: f64, like: &Array| Array::from_f32(v as f32).as_dtype(like.dtype());
    let qn = mlx_rs::fast::rms_norm(q, None, eps)?;
    let kn = mlx_rs::fast::rms_norm(k, None, eps)?;
    Ok((
        qn.multiply(scalar(inv * inv, &qn)?)?,
        kn.multiply(scalar(inv, &kn)?)?,
    ))
}

/// The per-position gates of the recurrence: the decay `g = exp(-exp(A_log) ·
/// softplus(a + dt_bias))` (float32) and the write strength `beta = sigmoid(b)`, both
/// `[B, S, value_heads]`.
#[derive(Debug)]
pub struct DeltaGates {
    /// Decay of the state.
    pub g: Array,
    /// Write strength.
    pub beta: Array,
}

impl DeltaGates {
    /// Gates from the projected `a` and `b` and the layer's `A_log` and `dt_bias`.
    pub fn new(a: &Array, b: &Array, a_log: &Array, dt_bias: &Array) -> Result<Self> {
        let rate = mlx_rs::nn::softplus(a.add(dt_bias)?)?;
        let speed = a_log.as_dtype(Dtype::Float32)?.exp()?.negative()?;
        Ok(Self {
            g: speed.multiply(&rate)?.exp()?,
            beta: mlx_rs::ops::sigmoid(b)?,
        })
    }
}

/// The gated delta rule over `S` positions. `q`, `k`: `[B, S, Hk, Dk]` (normalised),
/// `v`: `[B, S, Hv, Dv]`, `state`: `[B, Hv, Dv, Dk]` float32 (zeros when `None`); value head
/// `h` reads key head `h / (Hv / Hk)`. Per position: `state ·= g`, `delta = (v - state·k) ·
/// beta`, `state += k ⊗ delta`, `y = state·q`. Returns `y` (`[B, S, Hv, Dv]`, `q`'s dtype)
/// and the new state.
pub fn gated_delta_update(
    q: &Array,
    k: &Array,
    v: &Array,
    gates: &DeltaGates,
    state: Option<Array>,
) -> Result<(Array, Array)> {
    let (b, len, hk, dk) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hv, dv) = (v.shape()[2], v.shape()[3]);
    let mut state = match state {
        Some(s) => s,
        None => mlx_rs::ops::zeros_dtype(&[b, hv, dv, dk], Dtype::Float32)?,
    };
    let (q, k) = if hv > hk {
        let r = hv / hk;
        (
            Array::repeat_axis::<f32>(q.clone(), r, 2)?,
            Array::repeat_axis::<f32>(k.clone(), r, 2)?,
        )
    } else {
        (q.clone(), k.clone())
    };
    let mut ys = Vec::with_capacity(len as usize);
    for t in 0..len {
        let at = |a: &Array| a.index((.., t));
        let (y, next) = delta_step(
            &at(&q),
            &at(&k),
            &at(v),
            &at(&gates.g),
            &at(&gates.beta),
            &state,
        )?;
        ys.push(y);
        state = next;
    }
    Ok((stack(&ys, 1)?, state))
}

/// One position of [`gated_delta_update`]: `q`, `k` `[B, H, Dk]`, `v` `[B, H, Dv]`, `g`,
/// `beta` `[B, H]`, `state` `[B, H, Dv, Dk]`.
fn delta_step(
    q: &Array,
    k: &Array,
    v: &Array,
    g: &Array,
    beta: &Array,
    state: &Array,
) -> Result<(Array, Array)> {
    let state = state.multiply(g.expand_dims_axes(&[-1, -2])?)?;
    let k_row = k.expand_dims(-2)?;
    let remembered = state.multiply(&k_row)?.sum_axis(-1, None)?;
    let delta = v.subtract(&remembered)?.multiply(beta.expand_dims(-1)?)?;
    let state = state.add(k_row.multiply(delta.expand_dims(-1)?)?)?;
    let y = state.multiply(q.expand_dims(-2)?)?.sum_axis(-1, None)?;
    Ok((y.as_dtype(q.dtype())?, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[i32], seed: u64) -> Array {
        let key = mlx_rs::random::key(seed).expect("key");
        mlx_rs::random::normal::<f32>(shape, None, None, &key).expect("normal")
    }

    fn max_abs_diff(a: &Array, b: &Array) -> f32 {
        let d = a.subtract(b).unwrap().abs().unwrap().max(None).unwrap();
        d.item_exact::<f32>()
    }

    /// The recurrence, written out with scalar loops on the host (one batch).
    #[allow(clippy::too_many_arguments)]
    fn host_reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        beta: &[f32],
        (len, hk, hv, dk, dv): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut state = vec![0f32; hv * dv * dk];
        let mut ys = vec![0f32; len * hv * dv];
        for t in 0..len {
            for h in 0..hv {
                let kh = h / (hv / hk);
                let qv = &q[(t * hk + kh) * dk..][..dk];
                let kv = &k[(t * hk + kh) * dk..][..dk];
                let s = &mut state[h * dv * dk..][..dv * dk];
                let gt = g[t * hv + h];
                for i in 0..dv {
                    let row = &mut s[i * dk..][..dk];
                    row.iter_mut().for_each(|x| *x *= gt);
                    let mem: f32 = row.iter().zip(kv).map(|(a, b)| a * b).sum();
                    let delta = (v[(t * hv + h) * dv + i] - mem) * beta[t * hv + h];
                    row.iter_mut().zip(kv).for_each(|(x, kk)| *x += kk * delta);
                    ys[(t * hv + h) * dv + i] = row.iter().zip(qv).map(|(a, b)| a * b).sum();
                }
            }
        }
        ys
    }

    #[test]
    fn recurrence_matches_a_scalar_loop_and_chunks_carry_the_state() {
        let (len, hk, hv, dk, dv) = (7, 2, 4, 8, 4);
        let q = random(&[1, len, hk, dk], 1);
        let k = random(&[1, len, hk, dk], 2);
        let (q, k) = normalize_qk(&q, &k).unwrap();
        let v = random(&[1, len, hv, dv], 3);
        let a = random(&[1, len, hv], 4);
        let b = random(&[1, len, hv], 5);
        let a_log = random(&[hv], 6);
        let dt_bias = random(&[hv], 7);
        let gates = DeltaGates::new(&a, &b, &a_log, &dt_bias).unwrap();
        let (y, _) = gated_delta_update(&q, &k, &v, &gates, None).unwrap();
        let host = |x: &Array| x.as_slice::<f32>().to_vec();
        let dims = (
            len as usize,
            hk as usize,
            hv as usize,
            dk as usize,
            dv as usize,
        );
        let want = host_reference(
            &host(&q),
            &host(&k),
            &host(&v),
            &host(&gates.g),
            &host(&gates.beta),
            dims,
        );
        let want = Array::from_slice(&want, &[1, len, hv, dv]);
        assert!(max_abs_diff(&y, &want) < 1e-5);

        // The same positions in chunks of 3, 1 and 3, the state carried between them.
        let mut state = None;
        let mut parts = Vec::new();
        for (lo, hi) in [(0, 3), (3, 4), (4, 7)] {
            let sl = |x: &Array| x.index((.., lo..hi));
            let g = DeltaGates {
                g: sl(&gates.g),
                beta: sl(&gates.beta),
            };
            let (y, s) = gated_delta_update(&sl(&q), &sl(&k), &sl(&v), &g, state).unwrap();
            parts.push(y);
            state = Some(s);
        }
        let chunked = concatenate(&parts, 1).unwrap();
        assert_eq!(max_abs_diff(&chunked, &y), 0.0);
    }

    #[test]
    fn short_conv_is_causal_and_carries_its_tail() {
        let (len, channels, kernel) = (6, 5, 4);
        let x = random(&[1, len, channels], 11);
        let w = random(&[channels, kernel, 1], 12);
        let mut tail = None;
        let whole = short_conv(&x, &w, &mut tail).unwrap();
        // out[t, c] = silu(sum_j x[t - (K - 1) + j, c] · w[c, j]) with zeros before 0.
        let (xs, ws) = (x.as_slice::<f32>(), w.as_slice::<f32>());
        let mut want = vec![0f32; (len * channels) as usize];
        for t in 0..len as usize {
            for c in 0..channels as usize {
                let mut acc = 0f32;
                for j in 0..kernel as usize {
                    let src = t as isize - (kernel as isize - 1) + j as isize;
                    if src >= 0 {
                        acc +=
                            xs[src as usize * channels as usize + c] * ws[c * kernel as usize + j];
                    }
                }
                want[t * channels as usize + c] = acc / (1.0 + (-acc).exp());
            }
        }
        let want = Array::from_slice(&want, &[1, len, channels]);
        assert!(max_abs_diff(&whole, &want) < 1e-5);

        let mut tail = None;
        let first = short_conv(&x.index((.., 0..2)), &w, &mut tail).unwrap();
        let mut parts = vec![first];
        for t in 2..len {
            parts.push(short_conv(&x.index((.., t..t + 1)), &w, &mut tail).unwrap());
        }
        let stepped = concatenate(&parts, 1).unwrap();
        assert!(max_abs_diff(&stepped, &whole) < 1e-6);
    }
}
