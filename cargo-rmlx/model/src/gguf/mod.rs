//! GGUF import: reading llama.cpp GGUF files and turning them into MLX-format model
//! directories (safetensors with Hugging Face tensor names, `config.json` with the mlx-lm
//! quantization block, and Hugging Face tokenizer files).
//!
//! - [`reader`]: the container format (header, metadata, tensor infos, tensor data read on demand).
//! - [`quants`]: ggml storage types, dequantization, exact Q4_0/Q4_1/Q8_0 → MLX affine.
//! - [`arch`]: architecture mapping (tensor names, Q/K un-permutation, `config.json`).
//! - [`tokenizer`]: `tokenizer.json`, `tokenizer_config.json`, chat template, generation config.
//! - [`import`](mod@import): the entry point, [`import()`] / [`import_to()`] (published with
//!   the build's lock and atomic swap) and [`import_into()`] (into a directory the caller owns).

pub mod arch;
pub mod import;
pub mod quants;
pub mod reader;
pub mod tokenizer;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use arch::{Architecture, ModelParams};
pub use import::{
    import, import_into, import_to, Dtype, Existing, ImportOptions, ImportReport, TensorAction,
    TensorReport,
};
pub use quants::GgmlType;
pub use reader::{GgufFile, MetaValue, TensorInfo, TensorView};
pub use tokenizer::TokenizerFiles;
