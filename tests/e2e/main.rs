//! End-to-end tests: they drive the built `cargo-rmlx` binary on a real model
//! (SmolLM2-135M-Instruct from its GGUF, fetched by `scripts/fetch-models.sh`) and compare
//! it with the reference implementation (mlx-lm, see `scripts/oracle_mlx_lm.py`).
//! Converted models and reference runs are cached under `target/test-models`.

mod arch_oracle;
mod bad_inputs;
mod bench;
mod distributed;
mod generate;
mod install;
mod messages;
mod mlx_lm_build;
mod oracle;
mod probe;
mod ranks;
mod support;
mod tiny_arch;
mod tiny_build;
mod tiny_gguf;
