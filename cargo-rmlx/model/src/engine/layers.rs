//! The building blocks every architecture is assembled from: a [`Linear`] that is dense or
//! MLX-quantized (any mode/bits/group size), an [`Embedding`] that can double as the LM head,
//! [`RmsNorm`] (plain or gemma's `1 + w`), rotary embeddings ([`Rope`], incl. linear and
//! llama3 frequency scaling and Gemma 4's partial "proportional" rope) and final-logit
//! [`softcap`]. Loading checks every tensor's shape against config.json.

use mlx_rs::ops::{dequantize, quantized_matmul};
use mlx_rs::{Array, Dtype};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::{ModelConfig, QuantMode, QuantParams, RopeScaling, Weights};

pub mod fuse; // q|k|v and gate|up as one matmul each on the MLX decode path
pub mod parallel; // tensor parallelism (engine::dist): sharded loading, row-parallel all_sum

pub use fuse::{fuse_projections, Fused};

/// How weights are loaded: compute dtype for dense weights, norms and quantization scales.
#[derive(Debug, Clone, Copy)]
pub struct LoadCtx<'a> {
    /// The tensors.
    pub weights: &'a Weights,
    /// The parsed config.
    pub config: &'a ModelConfig,
    /// Dtype that activations and float parameters are computed in.
    pub dtype: Dtype,
    /// Tensor parallelism: this rank's shard and the split of the tensors read now.
    pub parallel: parallel::Parallel,
}

impl LoadCtx<'_> {
    /// The stored name of `name` (a wrapper's text tensors carry its prefix).
    pub fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.config.weight_prefix)
    }

    /// Whether the tensor `name` (unprefixed) is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full_name(name))
    }

    /// Quantization settings for module `path`, if it is stored quantized.
    pub fn quant(&self, path: &str) -> Result<Option<QuantParams>> {
        let path = &self.full_name(path);
        let has_scales = self.weights.contains(&format!("{path}.scales"));
        let from_config = self
            .config
            .quantization
            .as_ref()
            .and_then(|q| q.for_module(path));
        match (has_scales, from_config) {
            (false, _) => Ok(None),
            (true, Some(q)) => Ok(Some(q)),
            (true, None) => Err(Diagnostic::error(
                code::Snapshot::Quantization,
                format!(
                    "`{path}` is stored quantized (has `{path}.scales`) but config.json has no \
                     quantization settings for it"
                ),
            )
            .with_file(&self.config.path)
            .with_help("add a `quantization` block with group_size and bits to config.json")),
        }
    }

    /// A float parameter (norm weight, bias) in the compute dtype.
    pub fn param(&self, name: &str, shape: &[usize]) -> Result<Array> {
        self.read(&self.full_name(name), shape, Some(self.dtype))
    }

    /// A parameter kept in `dtype` whatever the compute dtype (a delta-net's `A_log`).
    pub fn param_as(&self, name: &str, shape: &[usize], dtype: Dtype) -> Result<Array> {
        self.read(&self.full_name(name), shape, Some(dtype))
    }

    /// Loads the linear layer at `path` mapping `input` to `output` features.
    pub fn linear(&self, path: &str, input: usize, output: usize, bias: bool) -> Result<Linear> {
        let bias = if bias {
            Some(self.param(&format!("{path}.bias"), &[output])?)
        } else {
            None
        };
        let kind = match self.quant(path)? {
            None => LinearKind::Dense {
                weight: self.param(&format!("{path}.weight"), &[output, input])?,
            },
            Some(q) => {
                let (weight, scales, biases) = self.quantized(path, output, input, q)?;
                LinearKind::Quantized {
                    weight,
                    scales,
                    biases,
                    params: q,
                }
            }
        };
        Ok(Linear {
            kind,
            bias,
            all_sum: false,
        })
    }

    /// The packed weight, scales and (affine) biases of a quantized `[rows, cols]` matrix.
    fn quantized(
        &self,
        path: &str,
        rows: usize,
        cols: usize,
        q: QuantParams,
    ) -> Result<(Array, Array, Option<Array>)> {
        self.quantized_stacked(path, &[], rows, cols, q)
    }

    /// Like [`Self::quantized`] for a stack of matrices `[lead…, rows, cols]` (MoE experts).
    pub fn quantized_stacked(
        &self,
        path: &str,
        lead: &[usize],
        rows: usize,
        cols: usize,
        q: QuantParams,
    ) -> Result<(Array, Array, Option<Array>)> {
        let path = &self.full_name(path);
        let bits = q.bits as usize;
        let group = q.group_size as usize;
        if group == 0 || !(cols * bits).is_multiple_of(32) || !cols.is_multiple_of(group) {
            return Err(Diagnostic::error(
                code::Snapshot::Quantization,
                format!(
                    "`{path}`: {cols} input features cannot be quantized with {bits} bits in \
                     groups of {group}"
                ),
            )
            .with_file(&self.config.path));
        }
        let shape =
            |last: usize| -> Vec<usize> { lead.iter().copied().chain([rows, last]).collect() };
        let weight = self.read(&format!("{path}.weight"), &shape(cols * bits / 32), None)?;
        let scales_dtype = match q.mode {
            QuantMode::Affine => Some(self.dtype),
            // Microscaling formats store their scales as 8-bit exponents.
            _ => None,
        };
        let scales = self.read(
            &format!("{path}.scales"),
            &shape(cols / group),
            scales_dtype,
        )?;
        let biases = if q.mode.has_biases() {
            Some(self.read(
                &format!("{path}.biases"),
                &shape(cols / group),
                Some(self.dtype),
            )?)
        } else {
            None
        };
        Ok((weight, scales, biases))
    }

    /// Loads the embedding table at `path` (`[vocab, hidden]`).
    pub fn embedding(&self, path: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let inner = match self.quant(path)? {
            None => LinearKind::Dense {
                weight: self.param(&format!("{path}.weight"), &[vocab, hidden])?,
            },
            Some(q) => {
                let (weight, scales, biases) = self.quantized(path, vocab, hidden, q)?;
                LinearKind::Quantized {
                    weight,
                    scales,
                    biases,
                    params: q,
                }
            }
        };
        Ok(Embedding {
            table: Linear {
                kind: inner,
                bias: None,
                all_sum: false,
            },
            dtype: self.dtype,
        })
    }

    /// The separate LM head at `path` (`[vocab, hidden]`), or `None` when the head is `tied`
    /// to the embeddings (decided by the architecture: its tying default may differ from
    /// config.json's usual one); a stored `lm_head` is then ignored, as mlx-lm does — logged.
    pub fn lm_head(&self, path: &str, tied: bool) -> Result<Option<Linear>> {
        let c = self.config;
        if !tied {
            return Ok(Some(self.linear(
                path,
                c.hidden_size,
                c.vocab_size,
                false,
            )?));
        }
        if self.contains(&format!("{path}.weight")) {
            tracing::info!(
                "config.json says tie_word_embeddings but {path}.weight exists; using the tied \
                 embedding as mlx-lm does"
            );
        }
        Ok(None)
    }

    /// Loads an RMSNorm weight of width `dim`.
    pub fn rms_norm(&self, path: &str, dim: usize, eps: f32, one_plus: bool) -> Result<RmsNorm> {
        let mut weight = self.param(&format!("{path}.weight"), &[dim])?;
        if one_plus {
            weight = weight.add(Array::from_f32(1.0).as_dtype(self.dtype)?)?;
        }
        Ok(RmsNorm { weight, eps })
    }
}

#[derive(Debug)]
enum LinearKind {
    Dense {
        weight: Array,
    },
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        params: QuantParams,
    },
}

/// From this many input rows on, a quantized layer dequantizes its weight and runs a dense
/// matmul instead of MLX's quantized kernel (see [`Linear::forward`]); `RMLX_DEQUANT_ROWS`
/// overrides it ([`dequantized_matmul_rows`]).
pub const DEQUANTIZED_MATMUL_ROWS: i32 = 16;

/// [`DEQUANTIZED_MATMUL_ROWS`], or `RMLX_DEQUANT_ROWS` when set to a positive number
/// ([`super::switches`]). On the H100 a batched decode step of 4 rows (MLX's quantized
/// kernel) took 2.79 steps of one row while 16 rows (dequantized) took 3.78 (BENCHMARKS.md,
/// round 7): the knob lets a GPU session measure where the crossover lies.
pub fn dequantized_matmul_rows() -> i32 {
    super::switches::dequant_rows()
}

/// Below this many input rows, a quantized layer on the CPU runs the block kernel
/// ([`super::qmv`]) when it applies; from here on the prefill GEMM ([`super::gemm`]: tiles
/// dequantized per task, sgemm on both cores). Measured (BENCHMARKS.md, "Round 6: prefill"):
/// at 37 rows (the probe's seed) the GEMM prefills 208 tok/s against the block kernel's 151,
/// at 20 rows the two are even (125 / 122).
pub const HOST_MATMUL_ROWS: i32 = 16;

/// `y = x W^T (+ b)`, dense or quantized.
#[derive(Debug)]
pub struct Linear {
    kind: LinearKind,
    bias: Option<Array>,
    /// Row-parallel (tensor parallelism): the output is this rank's partial sum, summed over
    /// the ranks before the bias is added (see [`parallel`]).
    all_sum: bool,
}

impl Linear {
    /// Applies the layer to `x` (`[..., input]`).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        if let Some((kernel, host)) = self.host_operands(x) {
            let y = kernel.matmul_many(x, &[host])?.remove(0);
            return self.add_bias(y);
        }
        let y = match &self.kind {
            LinearKind::Dense { weight } => x.matmul(weight.t())?,
            LinearKind::Quantized {
                weight,
                scales,
                biases,
                params,
            } => {
                let rows: i32 = x.shape()[..x.ndim().saturating_sub(1)].iter().product();
                if rows >= dequantized_matmul_rows() && params.mode == QuantMode::Affine {
                    // Many rows (prefill): MLX's CPU quantized matmul is a slow scalar loop,
                    // while dequantizing once and running a BLAS sgemm is memory-bound and fast.
                    let w = dequantize(
                        weight,
                        scales,
                        biases.as_ref(),
                        params.group_size,
                        params.bits,
                    )?;
                    x.matmul(w.t())?
                } else {
                    quantized_matmul_mode(x, weight, scales, biases.as_ref(), *params)?
                }
            }
        };
        self.add_bias(y)
    }

    /// Applies several layers to the same `x` (q/k/v, gate/up): on the CPU host path in one
    /// parallel pass, otherwise one after the other.
    pub fn forward_many<const N: usize>(layers: [&Linear; N], x: &Array) -> Result<[Array; N]> {
        let host: Vec<_> = layers.iter().filter_map(|l| l.host_operands(x)).collect();
        let outs = if host.len() == N && N > 0 {
            let kernel = host[0].0;
            let ops: Vec<_> = host.into_iter().map(|(_, ops)| ops).collect();
            let ys = kernel.matmul_many(x, &ops)?;
            layers
                .iter()
                .zip(ys)
                .map(|(l, y)| l.add_bias(y))
                .collect::<Result<Vec<_>>>()?
        } else {
            layers
                .iter()
                .map(|l| l.forward(x))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(outs
            .try_into()
            .unwrap_or_else(|_| unreachable!("N outputs for N layers")))
    }

    /// The host kernel for this layer and input, and its operands, when one applies: CPU
    /// device, affine 4/8-bit weights with float32 scales, float32 input; fewer rows than
    /// [`HOST_MATMUL_ROWS`] take the block kernel ([`super::qmv`]), more the prefill GEMM
    /// ([`super::gemm`]) when `cblas_sgemm` is there.
    fn host_operands<'a>(&'a self, x: &Array) -> Option<(HostKernel, super::qmv::Operands<'a>)> {
        let LinearKind::Quantized {
            weight,
            scales,
            biases: Some(biases),
            params,
        } = &self.kind
        else {
            return None;
        };
        let rows: i32 = x.shape()[..x.ndim().saturating_sub(1)].iter().product();
        let kernel = match rows < HOST_MATMUL_ROWS {
            true => HostKernel::Qmv,
            false if super::gemm::available() => HostKernel::Gemm,
            false => return None,
        };
        (params.mode == QuantMode::Affine
            && super::qmv::enabled()
            && super::qmv::supports(params.bits, params.group_size, x, scales))
        .then_some((
            kernel,
            (weight, scales, biases, params.bits, params.group_size),
        ))
    }

    /// Whether [`Self::host_forward_many`] can run this layer (CPU host kernel on, affine
    /// 4/8-bit weights with float32 scales and bias).
    pub fn host_capable(&self) -> bool {
        if self.all_sum {
            return false; // its output is a partial sum; the host path does not reduce
        }
        let LinearKind::Quantized {
            scales,
            biases: Some(_),
            params,
            ..
        } = &self.kind
        else {
            return false;
        };
        params.mode == QuantMode::Affine
            && super::qmv::enabled()
            && matches!(params.bits, 4 | 8)
            && params.group_size % 32 == 0
            && scales.dtype() == Dtype::Float32
            && self
                .bias
                .as_ref()
                .is_none_or(|b| b.dtype() == Dtype::Float32)
    }

    /// Applies [`Self::host_capable`] layers to host rows `x` (`[M, input]`, M small: the
    /// rows of a batched decode step), in one parallel pass; each output is `[M, output]`.
    pub fn host_forward_many(layers: &[&Linear], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        Self::host_forward_with(HostKernel::Qmv, layers, x)
    }

    /// [`Self::host_forward_many`] for the `rows` host rows of a prompt chunk: the prefill
    /// GEMM ([`super::gemm`]) from [`HOST_MATMUL_ROWS`] rows on when it is available, the
    /// block kernel below.
    pub fn host_prefill_many(layers: &[&Linear], x: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
        let kernel = match rows >= HOST_MATMUL_ROWS as usize && super::gemm::available() {
            true => HostKernel::Gemm,
            false => HostKernel::Qmv,
        };
        Self::host_forward_with(kernel, layers, x)
    }

    /// Host rows `x` through `layers` with `kernel`, biases added.
    fn host_forward_with(
        kernel: HostKernel,
        layers: &[&Linear],
        x: &[f32],
    ) -> Result<Vec<Vec<f32>>> {
        let mut ops = Vec::with_capacity(layers.len());
        for l in layers {
            match &l.kind {
                LinearKind::Quantized {
                    weight,
                    scales,
                    biases: Some(biases),
                    params,
                } => ops.push((weight, scales, biases, params.bits, params.group_size)),
                _ => {
                    return Err(Diagnostic::error(
                        code::Engine::HostKernel,
                        "host forward of a layer the host kernel does not support",
                    ))
                }
            }
        }
        let mut ys = match kernel {
            HostKernel::Qmv => super::qmv::matvec_many_host(x, &ops)?,
            HostKernel::Gemm => super::gemm::matmul_many_host(x, &ops)?,
        };
        for (l, y) in layers.iter().zip(ys.iter_mut()) {
            if let Some(b) = &l.bias {
                let b = crate::mlx::host::host_slice::<f32>(b, "bias")?;
                for row in y.chunks_mut(b.len().max(1)) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
        }
        Ok(ys)
    }

    fn add_bias(&self, y: Array) -> Result<Array> {
        let y = if self.all_sum {
            super::dist::all_sum(y)?
        } else {
            y
        };
        Ok(match &self.bias {
            Some(b) => y.add(b)?,
            None => y,
        })
    }
}

/// Which host kernel runs a quantized layer (see [`Linear::host_operands`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKernel {
    /// A few input rows: [`super::qmv::matmul_many`].
    Qmv,
    /// A prefill chunk: [`super::gemm::matmul_many`].
    Gemm,
}

impl HostKernel {
    fn matmul_many(self, x: &Array, ops: &[super::qmv::Operands<'_>]) -> Result<Vec<Array>> {
        match self {
            HostKernel::Qmv => super::qmv::matmul_many(x, ops),
            HostKernel::Gemm => super::gemm::matmul_many(x, ops),
        }
    }
}

/// `quantized_matmul` with `transpose = true` in any MLX mode.
fn quantized_matmul_mode(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    q: QuantParams,
) -> Result<Array> {
    if q.mode == QuantMode::Affine {
        return Ok(quantized_matmul(
            x,
            w,
            scales,
            biases,
            true,
            q.group_size,
            q.bits,
        )?);
    }
    crate::mlx::ffi::quantized_matmul(
        x,
        crate::mlx::ffi::QuantWeight {
            weight: w,
            scales,
            biases,
            params: q,
        },
    )
}

/// Token embeddings; a quantized table is dequantized row-wise on lookup.
#[derive(Debug)]
pub struct Embedding {
    table: Linear,
    /// Compute dtype (what non-affine rows are dequantized to).
    dtype: Dtype,
}

impl Embedding {
    /// Looks up `ids` (`[B, L]` int32) → `[B, L, hidden]`.
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match &self.table.kind {
            LinearKind::Dense { weight } => Ok(weight.take_axis(ids, 0)?),
            LinearKind::Quantized {
                weight,
                scales,
                biases,
                params,
            } => {
                let w = weight.take_axis(ids, 0)?;
                let s = scales.take_axis(ids, 0)?;
                let b = match biases {
                    Some(b) => Some(b.take_axis(ids, 0)?),
                    None => None,
                };
                if params.mode != QuantMode::Affine {
                    // Microscaling modes (mxfp4, mxfp8, nvfp4) have no biases.
                    return crate::mlx::quant::dequantize(&w, &s, None, *params, self.dtype);
                }
                Ok(dequantize(
                    &w,
                    &s,
                    b.as_ref(),
                    params.group_size,
                    params.bits,
                )?)
            }
        }
    }

    /// Uses the table as the output projection (tied embeddings): `x E^T`.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        self.table.forward(x)
    }
}

/// Root-mean-square normalisation over the last axis.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Array,
    eps: f32,
}

impl RmsNorm {
    /// Normalises `x`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(mlx_rs::fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }

    /// Whether [`Self::host_forward`] can run (float32 weight).
    pub fn host_capable(&self) -> bool {
        self.weight.dtype() == Dtype::Float32
    }

    /// [`Self::forward`] of one host row, in float32 like MLX's kernel.
    pub fn host_forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let w = crate::mlx::host::host_slice::<f32>(&self.weight, "norm weight")?;
        let mean_sq = super::qmv::lane_sum_of(x, |v| v * v) / x.len() as f32;
        let inv = 1.0 / (mean_sq + self.eps).sqrt();
        Ok(x.iter().zip(w).map(|(v, w)| v * inv * w).collect())
    }
}

/// Rotary position embedding over the first `dims` features of each head.
#[derive(Debug)]
pub struct Rope {
    dims: i32,
    base: f32,
    scale: f32,
    /// Custom inverse-frequency periods (llama3 and YaRN scaling), replacing `base`.
    freqs: Option<Array>,
    traditional: bool,
    /// Factor applied to the rotated features before rotating (YaRN's and longrope's
    /// `mscale`), 1 if none.
    mscale: f32,
}

impl Rope {
    /// Rope for the given config (base, scaling).
    pub fn new(dims: usize, base: f32, scaling: Option<&RopeScaling>) -> Result<Self> {
        let dims_i = dims as i32;
        Ok(match scaling {
            None => Self {
                dims: dims_i,
                base,
                scale: 1.0,
                freqs: None,
                traditional: false,
                mscale: 1.0,
            },
            Some(RopeScaling::Linear { factor }) => Self {
                dims: dims_i,
                base,
                scale: 1.0 / factor,
                freqs: None,
                traditional: false,
                mscale: 1.0,
            },
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let freqs: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        // Period (1 / inverse frequency) of feature pair i.
                        let freq = base.powf(2.0 * i as f32 / dims as f32);
                        let wavelen = 2.0 * std::f32::consts::PI * freq;
                        if wavelen > low_wavelen {
                            freq * factor
                        } else if wavelen <= high_wavelen || wavelen >= low_wavelen {
                            freq
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            freq / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect();
                Self {
                    dims: dims_i,
                    base,
                    scale: 1.0,
                    freqs: Some(Array::from_slice(&freqs, &[freqs.len() as i32])),
                    traditional: false,
                    mscale: 1.0,
                }
            }
            Some(yarn @ RopeScaling::Yarn { .. }) => {
                let (freqs, mscale) = super::rope::yarn(dims, base, yarn)?;
                Self {
                    dims: dims_i,
                    base,
                    scale: 1.0,
                    freqs: Some(freqs),
                    traditional: false,
                    mscale,
                }
            }
            Some(RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings: old,
                max_position_embeddings: new,
            }) => Self::long_rope(dims, base, long_factor, *old, *new)?,
        })
    }

    /// Phi-3's longrope as mlx-lm applies it (see `RopeScaling::LongRope`).
    fn long_rope(dims: usize, base: f32, long: &[f32], old: f32, new: f32) -> Result<Self> {
        if long.len() != dims / 2 {
            return Err(Diagnostic::error(
                code::Snapshot::RopeScaling,
                format!(
                    "rope_scaling.long_factor has {} entries; {} rotated features need {}",
                    long.len(),
                    dims,
                    dims / 2
                ),
            ));
        }
        let freqs: Vec<f32> = long
            .iter()
            .enumerate()
            .map(|(i, f)| f * base.powf(2.0 * i as f32 / dims as f32))
            .collect();
        let factor = new / old;
        let mscale = if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / old.ln()).sqrt()
        };
        Ok(Self {
            dims: dims as i32,
            base,
            scale: 1.0,
            freqs: Some(Array::from_slice(&freqs, &[freqs.len() as i32])),
            traditional: false,
            mscale,
        })
    }

    /// Gemma 4's "proportional" rope over `dims` features: the first `rotated` features
    /// rotate with periods `factor · base^(2i / dims)` (computed with MLX ops in float32, as
    /// mlx-lm does), the remaining pairs get an infinite period, i.e. stay as they are.
    pub fn proportional(dims: usize, rotated: usize, base: f32, factor: f32) -> Result<Self> {
        if rotated > dims || !dims.is_multiple_of(2) || !rotated.is_multiple_of(2) {
            return Err(Diagnostic::error(
                code::Engine::Rope,
                format!(
                    "proportional rope: {rotated} rotated of {dims} features (both must be even, \
                     rotated ≤ features)"
                ),
            ));
        }
        let pairs: Vec<f32> = (0..rotated).step_by(2).map(|i| i as f32).collect();
        let exponents = Array::from_slice(&pairs, &[pairs.len() as i32])
            .divide(Array::from_f32(dims as f32))?;
        let periods = mlx_rs::ops::power(Array::from_f32(base), &exponents)?
            .multiply(Array::from_f32(factor))?;
        let still = mlx_rs::ops::full::<f32>(
            &[((dims - rotated) / 2) as i32],
            Array::from_f32(f32::INFINITY),
        )?;
        Ok(Self {
            dims: dims as i32,
            base,
            scale: 1.0,
            freqs: Some(mlx_rs::ops::concatenate(&[periods, still], 0)?),
            traditional: false,
            mscale: 1.0,
        })
    }

    /// Features rotated (the first `dims` of each head).
    pub fn rotated_dims(&self) -> usize {
        self.dims as usize
    }

    /// Whether adjacent feature pairs rotate (rather than the two halves).
    pub fn is_traditional(&self) -> bool {
        self.traditional
    }

    /// The same rope rotating adjacent feature pairs (`traditional`) instead of halves.
    pub fn traditional(self, traditional: bool) -> Self {
        Self {
            traditional,
            ..self
        }
    }

    /// Applies the rotation to `x` (`[B, heads, L, head_dim]`) for positions starting at
    /// `offset` (MLX: a rope with a scalar offset array).
    pub fn forward(&self, x: &Array, offset: usize) -> Result<Array> {
        self.forward_rows(x, &Array::from_int(offset as i32))
    }

    /// Like [`Self::forward`] with one starting position per batch row: `offsets` is
    /// `[B]` int32 (a batched decode step, each sequence at its own position), or a scalar.
    pub fn forward_rows(&self, x: &Array, offsets: &Array) -> Result<Array> {
        let scaled;
        let x = if self.mscale == 1.0 {
            x
        } else {
            scaled = super::rope::scale_leading(x, self.dims, self.mscale)?;
            &scaled
        };
        let base = self.freqs.is_none().then_some(self.base);
        Ok(mlx_rs::fast::rope_dynamic(
            x,
            self.dims,
            self.traditional,
            base,
            self.scale,
            offsets,
            self.freqs.as_ref(),
        )?)
    }
}

/// Logit softcapping: `tanh(x / cap) · cap` (Gemma's final logits).
pub fn softcap(x: &Array, cap: f32) -> Result<Array> {
    let c = Array::from_f32(cap).as_dtype(x.dtype())?;
    Ok(mlx_rs::ops::tanh(&x.divide(&c)?)?.multiply(&c)?)
}
