//! Sparse mixture-of-experts, shared by every MoE architecture. The experts of one layer are
//! stored and run stacked ("switch" weights `[E, out, in]`, dense or MLX-quantized in any
//! mode), through MLX `gather_mm` / `gather_qmm` (`engine::ffi`), as mlx-lm's `SwitchGLU` runs
//! them; with many token–expert pairs they are sorted by expert first, like mlx-lm.
//!
//! API (small on purpose; compose it):
//! - [`SparseMoe`]: router `Linear` → [`route`] → [`SwitchGlu`] → weighted sum. Load with
//!   [`SparseMoe::load`] from a [`MoeSpec`] (router path, experts prefix, sizes, [`Routing`],
//!   [`ExpertActivation`], biases, the experts' loader — [`stacked_experts`] for the MLX
//!   layout); `forward(x)` maps `[…, hidden]` to `[…, hidden]`. `engine::decoder` runs it as
//!   a block's feed-forward (`DecoderSpec::moe`).
//! - [`route`]: router logits → `(indices, weights)` of the top-k experts per token.
//! - [`SwitchGlu`]: the stacked gated experts alone, `forward(x, indices)` →
//!   `[…, k, hidden]`; [`combine`] sums them with the routing weights. Architectures with
//!   their own router (a norm before it, per-expert scales) use these two directly.
//! - [`SwitchLinear`]: one stacked projection (`{path}.weight` `[E, out, in]`, or
//!   `.weight/.scales/.biases` quantized, optional `{path}.bias` `[E, out]`).

use mlx_rs::ops::{argpartition_axis, argsort_axis, clip, minimum, sigmoid, softmax_axis};
use mlx_rs::Array;

use super::layers::{Linear, LoadCtx};
use super::mlp::Activation;
use crate::diagnostic::{code, Result};
use crate::mlx::ffi::{gather_mm, gather_qmm, QuantWeight};
use crate::snapshot::QuantParams;

/// From this many token–expert pairs on, the pairs are sorted by expert before the gathered
/// matmuls (mlx-lm's threshold): each expert's weights are then read once per run.
const SORT_PAIRS: usize = 64;

/// How router logits become the top-k experts' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Softmax over all experts, the k most probable, their probabilities renormalised to sum
    /// to 1 when `renormalize` (Qwen3-MoE's `norm_topk_prob`).
    SoftmaxTopK {
        /// Renormalise the k selected probabilities.
        renormalize: bool,
    },
    /// The k largest logits, softmax over those k (GPT-OSS, Gemma 4).
    TopKSoftmax,
}

/// The gated activation of the experts, `act(gate, up)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertActivation {
    /// `act(gate) * up` with a dense-MLP activation (SiLU: Qwen3-MoE; GELU-tanh: Gemma 4).
    Glu(Activation),
    /// GPT-OSS's clamped SwiGLU: `g = min(gate, limit)`, `u = clip(up, -limit, limit)`,
    /// `(u + 1) * g * sigmoid(alpha * g)`.
    ClampedSwiGlu {
        /// Sigmoid slope (1.702).
        alpha: f32,
        /// Clamp bound (7.0).
        limit: f32,
    },
}

impl ExpertActivation {
    /// `act(gate, up)`.
    pub fn apply(self, gate: &Array, up: &Array) -> Result<Array> {
        match self {
            ExpertActivation::Glu(act) => act.gated(gate, up),
            ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                let dt = gate.dtype();
                let lim = Array::from_f32(limit).as_dtype(dt)?;
                let neg = Array::from_f32(-limit).as_dtype(dt)?;
                let g = minimum(gate, &lim)?;
                let u = clip(up, (&neg, &lim))?;
                let glu =
                    g.multiply(sigmoid(g.multiply(Array::from_f32(alpha).as_dtype(dt)?)?)?)?;
                Ok(u.add(Array::from_f32(1.0).as_dtype(dt)?)?.multiply(glu)?)
            }
        }
    }
}

/// The stacked weight of a [`SwitchLinear`].
#[derive(Debug)]
enum SwitchWeight {
    /// `[E, in, out]` (stored `[E, out, in]`, kept transposed for `gather_mm`).
    Dense(Array),
    /// Packed `[E, out, in · bits / 32]` with its scales (and affine biases).
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        params: QuantParams,
    },
}

/// One projection of every expert, applied per token to the experts it was routed to.
#[derive(Debug)]
pub struct SwitchLinear {
    weight: SwitchWeight,
    /// `[E, out]`.
    bias: Option<Array>,
}

impl SwitchLinear {
    /// Loads the stacked projection at `path` of `experts` experts mapping `input` to `output`
    /// features (dense or quantized as the weights and config.json say).
    pub fn load(
        ctx: &LoadCtx<'_>,
        path: &str,
        experts: usize,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = match ctx.quant(path)? {
            None => SwitchWeight::Dense(
                ctx.param(&format!("{path}.weight"), &[experts, output, input])?
                    .swap_axes(-1, -2)?,
            ),
            Some(params) => {
                let (weight, scales, biases) =
                    ctx.quantized_stacked(path, &[experts], output, input, params)?;
                SwitchWeight::Quantized {
                    weight,
                    scales,
                    biases,
                    params,
                }
            }
        };
        // A row-parallel projection's bias is added by rank 0 alone (the ranks' sum).
        let bias = match (bias, ctx.bias_ctx()) {
            (true, Some(b)) => Some(b.param(&format!("{path}.bias"), &[experts, output])?),
            _ => None,
        };
        Ok(Self { weight, bias })
    }

    /// A dense projection from `[E, out, in]` weights (tests, converted weights).
    pub fn dense(weight: &Array, bias: Option<Array>) -> Result<Self> {
        Ok(Self {
            weight: SwitchWeight::Dense(weight.swap_axes(-1, -2)?),
            bias,
        })
    }

    /// A quantized projection from MLX's packed arrays (tests, converted weights).
    pub fn quantized(
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        params: QuantParams,
        bias: Option<Array>,
    ) -> Self {
        Self {
            weight: SwitchWeight::Quantized {
                weight,
                scales,
                biases,
                params,
            },
            bias,
        }
    }

    /// `x` (`[…, 1, in]`, broadcasting with `indices`) through expert `indices[…]` →
    /// `[…, 1, out]`. `sorted`: the indices are sorted.
    pub fn forward(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array> {
        let y = match &self.weight {
            SwitchWeight::Dense(w) => gather_mm(x, w, indices, sorted)?,
            SwitchWeight::Quantized {
                weight,
                scales,
                biases,
                params,
            } => {
                let w = QuantWeight {
                    weight,
                    scales,
                    biases: biases.as_ref(),
                    params: *params,
                };
                gather_qmm(x, w, indices, sorted)?
            }
        };
        match &self.bias {
            Some(b) => Ok(y.add(b.take_axis(indices, 0)?.expand_dims(-2)?)?),
            None => Ok(y),
        }
    }
}

/// The gated experts: `down(act(gate(x), up(x)))` with stacked projections.
#[derive(Debug)]
pub struct SwitchGlu {
    /// Gate projections.
    pub gate_proj: SwitchLinear,
    /// Up projections.
    pub up_proj: SwitchLinear,
    /// Down projections.
    pub down_proj: SwitchLinear,
    /// Activation.
    pub activation: ExpertActivation,
}

impl SwitchGlu {
    /// Loads `{prefix}.{gate,up,down}_proj` of `experts` experts, `hidden` → `inner` → `hidden`.
    pub fn load(
        ctx: &LoadCtx<'_>,
        prefix: &str,
        experts: usize,
        (hidden, inner): (usize, usize),
        bias: bool,
        activation: ExpertActivation,
    ) -> Result<Self> {
        // Tensor parallelism: gate/up by this rank's rows, down by its columns.
        let proj = |ctx: LoadCtx<'_>, name: &str, i, o| {
            SwitchLinear::load(&ctx, &format!("{prefix}.{name}"), experts, i, o, bias)
        };
        Ok(Self {
            gate_proj: proj(ctx.column(), "gate_proj", hidden, inner)?,
            up_proj: proj(ctx.column(), "up_proj", hidden, inner)?,
            down_proj: proj(ctx.row(), "down_proj", inner, hidden)?,
            activation,
        })
    }

    /// `x` (`[…, hidden]`) through the experts `indices` (`[…, k]`) → `[…, k, hidden]`.
    pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        let x = x.expand_dims_axes(&[-2, -3])?;
        if (indices.size()) < SORT_PAIRS {
            let y = self.experts(&x, indices, false)?;
            return Ok(y.squeeze_axes(&[-2])?);
        }
        // Sort the token–expert pairs by expert; undo the order afterwards.
        let k = *indices.shape().last().unwrap_or(&1);
        let flat = indices.flatten(None, None)?;
        let order = argsort_axis(&flat, 0)?;
        let inverse = argsort_axis(&order, 0)?;
        let rows = order.floor_divide(Array::from_int(k).as_dtype(order.dtype())?)?;
        let xs = x.flatten(0, -3)?.take_axis(&rows, 0)?;
        let y = self.experts(&xs, &flat.take_axis(&order, 0)?, true)?;
        let y = y.take_axis(&inverse, 0)?;
        let y = mlx_rs::ops::unflatten(&y, 0, indices.shape())?;
        Ok(y.squeeze_axes(&[-2])?)
    }

    fn experts(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array> {
        let gate = self.gate_proj.forward(x, indices, sorted)?;
        let up = self.up_proj.forward(x, indices, sorted)?;
        let act = self.activation.apply(&gate, &up)?;
        self.down_proj.forward(&act, indices, sorted)
    }
}

/// Router `logits` (`[…, E]`) → the `k` chosen experts (`[…, k]`, uint32) and their weights
/// (`[…, k]`). Selection uses MLX's `argpartition`, as mlx-lm does (same experts on ties).
pub fn route(logits: &Array, k: usize, routing: Routing) -> Result<(Array, Array)> {
    let k = k as i32;
    let top = |scores: &Array| -> Result<Array> {
        let part = argpartition_axis(scores, -k, -1)?;
        let e = *scores.shape().last().unwrap_or(&0);
        let idx = Array::from_iter(e - k..e, &[k]);
        Ok(part.take_axis(&idx, -1)?)
    };
    Ok(match routing {
        Routing::SoftmaxTopK { renormalize } => {
            let probs = softmax_axis(logits, -1, true)?;
            let inds = top(&probs)?;
            let mut w = probs.take_along_axis(&inds, -1)?;
            if renormalize {
                w = w.divide(w.sum_axis(-1, true)?)?;
            }
            (inds, w)
        }
        Routing::TopKSoftmax => {
            let inds = top(logits)?;
            let w = softmax_axis(logits.take_along_axis(&inds, -1)?, -1, true)?;
            (inds, w)
        }
    })
}

/// `Σ_k weights[…, k] · y[…, k, :]`: the experts' outputs (`[…, k, hidden]`) mixed.
pub fn combine(y: &Array, weights: &Array) -> Result<Array> {
    Ok(y.multiply(weights.expand_dims(-1)?)?.sum_axis(-2, false)?)
}

/// The shape and options of a [`SparseMoe`] layer.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    /// The router's path (`…mlp.gate`, `…mlp.router`).
    pub router: String,
    /// Whether the router has a bias.
    pub router_bias: bool,
    /// The stacked experts' prefix (`…mlp.switch_mlp`, `…mlp.experts`).
    pub experts: String,
    /// Whether the expert projections have biases.
    pub expert_bias: bool,
    /// Number of experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Residual width.
    pub hidden: usize,
    /// Each expert's inner width.
    pub inner: usize,
    /// Routing rule.
    pub routing: Routing,
    /// Expert activation.
    pub activation: ExpertActivation,
    /// Loads the experts: [`stacked_experts`] for the MLX layout; an architecture whose
    /// checkpoints store experts otherwise (per expert, fused, natively quantized) and that
    /// mlx-lm converts at load passes its own.
    pub load_experts: fn(&LoadCtx<'_>, &MoeSpec) -> Result<SwitchGlu>,
}

/// The experts of `spec` in the MLX layout: `{experts}.{gate,up,down}_proj` stacked.
pub fn stacked_experts(ctx: &LoadCtx<'_>, spec: &MoeSpec) -> Result<SwitchGlu> {
    SwitchGlu::load(
        ctx,
        &spec.experts,
        spec.num_experts,
        (spec.hidden, spec.inner),
        spec.expert_bias,
        spec.activation,
    )
}

/// A sparse MoE feed-forward layer: router, top-k routing, stacked gated experts, mix.
#[derive(Debug)]
pub struct SparseMoe {
    /// The router (`hidden` → `num_experts` logits).
    pub router: Linear,
    /// The experts.
    pub experts: SwitchGlu,
    top_k: usize,
    routing: Routing,
    /// Tensor parallelism: the experts hold this rank's share of their inner width, so the
    /// mixed output is summed over the ranks.
    all_sum: bool,
}

impl SparseMoe {
    /// Loads the router and experts named by `spec`.
    pub fn load(ctx: &LoadCtx<'_>, spec: &MoeSpec) -> Result<Self> {
        if spec.top_k == 0 || spec.top_k > spec.num_experts {
            return Err(ctx.config.located(
                code::Snapshot::Config,
                format!(
                    "experts per token ({}) must be between 1 and the number of experts ({})",
                    spec.top_k, spec.num_experts
                ),
                "num_experts_per_tok",
            ));
        }
        Ok(Self {
            router: ctx.linear(
                &spec.router,
                spec.hidden,
                spec.num_experts,
                spec.router_bias,
            )?,
            experts: (spec.load_experts)(ctx, spec)?,
            top_k: spec.top_k,
            routing: spec.routing,
            all_sum: !ctx.parallel.shard.is_single(),
        })
    }

    /// `x` (`[…, hidden]`) → `[…, hidden]`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (inds, weights) = route(&self.router.forward(x)?, self.top_k, self.routing)?;
        let y = combine(&self.experts.forward(x, &inds)?, &weights)?;
        if self.all_sum {
            return super::dist::all_sum(y);
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::Dtype;

    use super::*;
    use crate::snapshot::QuantMode;

    const E: i32 = 6;
    const H: i32 = 64;
    const I: i32 = 32;

    fn normal(shape: &[i32], seed: u64) -> Array {
        let key = mlx_rs::random::key(seed).unwrap();
        mlx_rs::random::normal::<f32>(shape, None, None, &key).unwrap()
    }

    fn host(a: &Array) -> Vec<f32> {
        let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }

    /// Random `[n, k]` expert indices (distinct per row) as uint32.
    fn indices(n: i32, k: i32, seed: u64) -> Array {
        let scores = normal(&[n, E], seed);
        let top = argpartition_axis(&scores, -k, -1).unwrap();
        top.take_axis(Array::from_iter(E - k..E, &[k]), -1)
            .unwrap()
            .as_dtype(Dtype::Uint32)
            .unwrap()
    }

    /// Gate, up, down weights `[E, out, in]` and biases `[E, out]`.
    fn weights(seed: u64) -> ([Array; 3], [Array; 3]) {
        let w = [
            normal(&[E, I, H], seed),
            normal(&[E, I, H], seed + 1),
            normal(&[E, H, I], seed + 2),
        ]
        .map(|w| w.multiply(Array::from_f32(0.1)).unwrap());
        let b = [
            normal(&[E, I], seed + 3),
            normal(&[E, I], seed + 4),
            normal(&[E, H], seed + 5),
        ];
        (w, b)
    }

    /// The reference: each token's experts one at a time, as dense matmuls.
    fn per_expert_loop(
        x: &Array,
        w: &[Array; 3],
        b: Option<&[Array; 3]>,
        inds: &Array,
        act: ExpertActivation,
    ) -> Array {
        let (n, k) = (inds.shape()[0], inds.shape()[1]);
        let ids: Vec<u32> = host(inds).iter().map(|&e| e as u32).collect();
        let mut rows = Vec::new();
        for t in 0..n {
            let xt = x
                .take_axis(Array::from_int(t), 0)
                .unwrap()
                .reshape(&[1, H])
                .unwrap();
            for j in 0..k {
                let e = Array::from_int(ids[(t * k + j) as usize] as i32);
                let proj = |p: usize, v: &Array| {
                    let y = v.matmul(w[p].take_axis(&e, 0).unwrap().t()).unwrap();
                    match b {
                        Some(b) => y.add(b[p].take_axis(&e, 0).unwrap()).unwrap(),
                        None => y,
                    }
                };
                let h = act.apply(&proj(0, &xt), &proj(1, &xt)).unwrap();
                rows.push(proj(2, &h));
            }
        }
        mlx_rs::ops::concatenate(&rows, 0)
            .unwrap()
            .reshape(&[n, k, H])
            .unwrap()
    }

    fn assert_close(got: &Array, want: &Array, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (host(got), host(want));
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * scale.max(1.0),
            "{what}: max error {err} (scale {scale})"
        );
    }

    fn dense_glu(w: &[Array; 3], b: Option<&[Array; 3]>, act: ExpertActivation) -> SwitchGlu {
        let lin = |p: usize| SwitchLinear::dense(&w[p], b.map(|b| b[p].clone())).unwrap();
        SwitchGlu {
            gate_proj: lin(0),
            up_proj: lin(1),
            down_proj: lin(2),
            activation: act,
        }
    }

    /// Unsorted (few pairs) and sorted (≥ 64 pairs) paths, with and without biases, both
    /// activations: equal to the per-expert loop.
    #[test]
    fn dense_experts_match_per_expert_loop() {
        let (w, b) = weights(1);
        let acts = [
            ExpertActivation::Glu(Activation::Silu),
            ExpertActivation::ClampedSwiGlu {
                alpha: 1.702,
                limit: 7.0,
            },
        ];
        for (n, seed) in [(3, 10), (40, 11)] {
            let x = normal(&[n, H], seed);
            let inds = indices(n, 2, seed + 100);
            for act in acts {
                for bias in [None, Some(&b)] {
                    let got = dense_glu(&w, bias, act).forward(&x, &inds).unwrap();
                    let want = per_expert_loop(&x, &w, bias, &inds, act);
                    assert_close(
                        &got,
                        &want,
                        &format!("n={n} {act:?} bias={}", bias.is_some()),
                    );
                }
            }
        }
    }

    /// Leading batch axes (`[1, L, hidden]` as the decoder passes) are kept.
    #[test]
    fn batch_axes_are_kept() {
        let (w, _) = weights(2);
        let x = normal(&[40, H], 3);
        let inds = indices(40, 2, 4);
        let glu = dense_glu(&w, None, ExpertActivation::Glu(Activation::Silu));
        let flat = glu.forward(&x, &inds).unwrap();
        let batched = glu
            .forward(
                &x.reshape(&[1, 40, H]).unwrap(),
                &inds.reshape(&[1, 40, 2]).unwrap(),
            )
            .unwrap();
        assert_eq!(batched.shape(), &[1, 40, 2, H]);
        assert_close(&batched.reshape(&[40, 2, H]).unwrap(), &flat, "batched");
    }

    /// Quantized experts (affine 4-bit, mxfp4) equal the loop over their dequantized weights.
    #[test]
    fn quantized_experts_match_dequantized_loop() {
        let (w, b) = weights(5);
        let act = ExpertActivation::Glu(Activation::Silu);
        for (mode, bits, group) in [(QuantMode::Affine, 4, 32), (QuantMode::Mxfp4, 4, 32)] {
            let q = QuantParams {
                group_size: group,
                bits,
                mode,
            };
            let mut deq = Vec::new();
            let mut lin = Vec::new();
            for (p, wp) in w.iter().enumerate() {
                let (qw, s, qb) = crate::mlx::quant::quantize(wp, q).unwrap();
                deq.push(
                    crate::mlx::quant::dequantize(&qw, &s, qb.as_ref(), q, Dtype::Float32).unwrap(),
                );
                lin.push(SwitchLinear::quantized(qw, s, qb, q, Some(b[p].clone())));
            }
            let deq: [Array; 3] = deq.try_into().unwrap();
            let [gate_proj, up_proj, down_proj]: [SwitchLinear; 3] = lin.try_into().unwrap();
            let glu = SwitchGlu {
                gate_proj,
                up_proj,
                down_proj,
                activation: act,
            };
            for (n, seed) in [(3, 20), (40, 21)] {
                let x = normal(&[n, H], seed);
                let inds = indices(n, 2, seed + 100);
                let got = glu.forward(&x, &inds).unwrap();
                let want = per_expert_loop(&x, &deq, Some(&b), &inds, act);
                assert_close(&got, &want, &format!("{mode:?} n={n}"));
            }
        }
    }

    /// Both routing rules against their definition on the host.
    #[test]
    fn routing_selects_and_weighs_the_top_k() {
        let logits = normal(&[5, E], 30);
        let rows: Vec<Vec<f32>> = host(&logits)
            .chunks(E as usize)
            .map(<[f32]>::to_vec)
            .collect();
        for routing in [
            Routing::SoftmaxTopK { renormalize: true },
            Routing::SoftmaxTopK { renormalize: false },
            Routing::TopKSoftmax,
        ] {
            let (inds, w) = route(&logits, 2, routing).unwrap();
            let (inds, w) = (host(&inds), host(&w));
            for (t, row) in rows.iter().enumerate() {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
                let mut got: Vec<(usize, f32)> = (0..2)
                    .map(|j| (inds[t * 2 + j] as usize, w[t * 2 + j]))
                    .collect();
                got.sort_by_key(|(e, _)| *e);
                let mut want_ids = order[..2].to_vec();
                want_ids.sort();
                assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want_ids);
                let max = row.iter().fold(f32::MIN, |m, v| m.max(*v));
                let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
                let denom = match routing {
                    Routing::SoftmaxTopK { renormalize: false } => exp.iter().sum::<f32>(),
                    _ => want_ids.iter().map(|e| exp[*e]).sum::<f32>(),
                };
                for (e, wt) in got {
                    assert!((wt - exp[e] / denom).abs() < 1e-5, "{routing:?} token {t}");
                }
            }
        }
    }

    /// GPT-OSS's clamped SwiGLU at points inside and beyond the clamp.
    #[test]
    fn clamped_swiglu_matches_its_definition() {
        let gate = [-9.0f32, -1.0, 0.5, 3.0, 9.0];
        let up = [-9.0f32, 2.0, -0.5, 8.0, 1.0];
        let act = ExpertActivation::ClampedSwiGlu {
            alpha: 1.702,
            limit: 7.0,
        };
        let got = act
            .apply(
                &Array::from_slice(&gate, &[5]),
                &Array::from_slice(&up, &[5]),
            )
            .unwrap();
        for ((g, u), y) in gate.iter().zip(up).zip(host(&got)) {
            let g = g.min(7.0);
            let want = (u.clamp(-7.0, 7.0) + 1.0) * g / (1.0 + (-1.702 * g).exp());
            assert!((y - want).abs() < 1e-5, "gate {g} up {u}: {y} vs {want}");
        }
    }
}
