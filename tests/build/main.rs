//! Tests of `rmlx.toml` and `cargo rmlx build` on a real model (SmolLM2-135M-Instruct, from
//! its GGUF, converted to a dense bf16 directory once per binary by the e2e support code),
//! against the reference tool (`mlx_lm convert` and mlx-lm loading, from the venv of
//! `scripts/oracle-venv.sh`).
//!
//! - `archs`: each architecture's tiny Hugging Face checkpoint converts byte-identically to
//!   `mlx_lm convert` (float, affine 4-bit, mxfp4 for gpt_oss); missing or mismatched
//!   experts and unsupported architectures are located errors.
//! - `compare`: our quantized output is byte-identical to `mlx_lm convert`'s (affine 4-bit
//!   g64, mxfp4, and `--dtype float16`), and each tool loads the other's directory.
//! - `incremental`: Fresh without reading weights, exactly-the-changed-model rebuilds, a
//!   killed build leaves the previous output intact.
//! - `bad_inputs`: located errors, exit code 2, nothing written.
//! - `convert`: `convert` never replaces its input or an existing output without `--force`,
//!   concurrent converts, GGUFs truncated while read (convert and build), staging leftovers.
//! - `sources`: GGUF and MLX-quantized sources, shards, chat-template override.
//! - `workspace`: rmlx.toml discovery (cargo metadata, `$CARGO`, `--manifest-path`,
//!   `CARGO_TARGET_DIR`), `init`, MODEL names in other commands.
//!
//! Nothing skips: a missing model or reference fails the test and says why. Expensive
//! setup (reference conversions) is shared within the process and cached on disk under
//! `target/test-models/build-cache`, keyed by the source's content and the reference's
//! pinned requirements.

mod archs;
mod bad_inputs;
mod common;
mod compare;
mod convert;
mod incremental;
#[allow(dead_code)]
#[path = "../e2e/mlx_lm_build.rs"]
mod mlx_lm_build;
mod sources;
#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;
#[allow(dead_code)]
#[path = "../e2e/tiny_build.rs"]
mod tiny_build;
mod workspace;
