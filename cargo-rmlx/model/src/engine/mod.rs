//! The model runtime on MLX: the shared blocks architectures are composed of ([`layers`]:
//! linear, embedding, norm, RoPE; [`ends`]: embeddings in, norm and LM head out;
//! [`attention`]; [`mlp`]; the standard dense [`decoder`]),
//! what a loaded architecture offers ([`network`]), the per-layer caches ([`cache`]),
//! sampling ([`sample`], [`penalty`]) and the generate loop ([`generate`]) with its prompt
//! cache ([`prefix_cache`]) and the GPU kernels' warm-up at load ([`warmup`]), the CPU host
//! kernels ([`qmv`]) with their worker pool ([`pool`]) and OpenBLAS threading ([`blas`]), and
//! the environment switches for measuring ([`switches`]). The compute dtype is a per-device
//! policy ([`DtypePolicy`]). Which network a `model_type` gets is `crate::arch`'s registry.

pub mod attention;
pub mod blas;
pub mod cache;
pub mod decoder;
pub mod deltanet;
pub mod dist;
pub mod ends;
pub mod gemm;
pub mod generate;
pub mod layers;
pub mod mlp;
pub mod moe;
pub mod network;
pub mod penalty;
pub mod pool;
pub mod prefix_cache;
pub mod process;
pub mod qmv;
pub mod rope;
pub mod sample;
pub mod sequence;
pub mod switches;
pub mod warmup;

use mlx_rs::Dtype;

use crate::diagnostic::Result;
use crate::snapshot::Snapshot;

pub use generate::{
    drive, generate, generate_cancellable, GenerateOptions, GenerateOutput, Step, StopReason,
};
pub use network::Net;
pub use penalty::Penalties;
pub use prefix_cache::{generate_cached, PrefixCache};
pub use process::gpu_used;
pub use sample::{Sampler, SamplerConfig};
pub use sequence::{Sequence, StartCache};

/// Which dtype activations and float parameters are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypePolicy {
    /// float32 on CPU (MLX's CPU bf16 kernels are slow and its bf16 quantized matmul
    /// inaccurate); the model's own dtype on GPUs.
    #[default]
    Auto,
    /// Always this dtype.
    Fixed(crate::manifest::Dtype),
}

impl DtypePolicy {
    /// Resolves the policy for the current default device and the model's `torch_dtype`.
    pub fn resolve(self, torch_dtype: Option<&str>) -> Dtype {
        use crate::manifest::Dtype as Float;
        match self {
            DtypePolicy::Fixed(d) => d.mlx(),
            DtypePolicy::Auto => {
                if gpu_available() {
                    match torch_dtype {
                        Some("float16") => Dtype::Float16,
                        Some("float32") => Dtype::Float32,
                        _ => Float::Bfloat16.mlx(),
                    }
                } else {
                    Float::Float32.mlx()
                }
            }
        }
    }
}

/// Whether MLX's default device is a GPU (Metal or CUDA).
pub fn gpu_available() -> bool {
    mlx_rs::Device::try_default()
        .and_then(|d| d.get_type())
        .is_ok_and(|t| matches!(t, mlx_rs::DeviceType::Gpu))
}

/// A model loaded into MLX, with what is needed to run it.
#[derive(Debug)]
pub struct Model {
    /// The network.
    pub net: Net,
    /// Context length from config.json.
    pub max_context: usize,
    /// EOS ids declared by config.json / generation_config.json.
    pub eos_ids: Vec<u32>,
}

impl Drop for Model {
    /// The AMX layouts made for this model's weights go with it (`qmv::forget_layouts`).
    fn drop(&mut self) {
        qmv::forget_layouts();
    }
}

impl Model {
    /// Builds the network for an opened snapshot.
    pub fn load(snapshot: &Snapshot, policy: DtypePolicy) -> Result<Self> {
        let config = &snapshot.config;
        let dtype = policy.resolve(config.torch_dtype.as_deref());
        tracing::debug!(?dtype, model_type = %config.model_type, "loading model");
        switches::read_all();
        if gpu_available() {
            process::mark_gpu_used();
        } else {
            blas::configure();
            no_jit_on_cpu();
        }
        let (parallel, view) = tensor_parallel(config)?;
        let ctx = layers::LoadCtx {
            weights: &snapshot.weights,
            config: &view,
            dtype,
            parallel,
        };
        let net = Net::new(crate::arch::load(&ctx)?, dtype, config.vocab_size);
        if !parallel.shard.is_single() {
            let (read, stored) = (
                snapshot.weights.bytes_read(),
                snapshot.weights.bytes_stored(),
            );
            tracing::info!(
                "rank {} of {}: read {read} bytes of weights ({:.1}% of the {stored} stored)",
                parallel.shard.rank,
                parallel.shard.size,
                100.0 * read as f64 / stored.max(1) as f64
            );
        }
        Ok(Self {
            net,
            max_context: config.max_position_embeddings,
            eos_ids: snapshot.eos_ids(),
        })
    }
}

/// Turns MLX's `compile` off for a CPU run (once per process). On the CPU, `compile` (behind
/// `nn::silu` and `nn::gelu_approximate`) builds each fused kernel with the system C++
/// compiler into a cache in the temp directory: every process first runs `g++ --version`
/// (10–30 ms), and with an empty cache — a fresh CI runner — building SmolLM2's one fused
/// activation took 0.7–1.4 s of a 1.3–2.2 s cold `cargo rmlx probe` (BENCHMARKS.md, "Cold
/// `cargo rmlx probe`"). Uncompiled, the activation is three element-wise kernels over arrays
/// that are small next to the matrix products around them, and the same float32 arithmetic.
fn no_jit_on_cpu() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        mlx_rs::transforms::compile::disable_compile();
        tracing::debug!("MLX compile off on the CPU (no C++ compiler run for fused kernels)");
    });
}

/// This rank's loading state and config view (`layers::parallel`); the config itself in a
/// single-process run.
fn tensor_parallel(
    config: &crate::snapshot::ModelConfig,
) -> Result<(layers::parallel::Parallel, crate::snapshot::ModelConfig)> {
    let shard = dist::Shard::current();
    let parallel = layers::parallel::Parallel::new(shard, config)?;
    let view = layers::parallel::config_view(config, &parallel)?;
    if !shard.is_single() {
        tracing::info!(
            rank = shard.rank,
            size = shard.size,
            heads = view.num_attention_heads,
            kv_heads = view.num_key_value_heads,
            "tensor parallel: this rank loads its shard; the whole-step host decode path is off \
             (its projections would need the ranks' sum)"
        );
    }
    Ok((parallel, view))
}

#[cfg(test)]
pub(crate) mod tests;
