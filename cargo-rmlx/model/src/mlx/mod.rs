//! The MLX glue: every call into MLX's C API (`mlx_sys`) that mlx-rs 0.33 lacks lives in
//! this module and nowhere else in the workspace (`tests::mlx_sys_is_called_only_here`
//! checks the sources).
//! Each wrapper is safe and turns a failed call into a [`crate::Diagnostic`].
//!
//! - [`ffi`]: the engine's operations — `gather_mm`, `gather_qmm`, `quantized_matmul` in any
//!   quantization mode, MLX's distributed group and its collectives.
//! - [`quant`]: MLX's quantizer and dequantizer in every mode, raw tensor bytes, dtype
//!   conversions, MLX's version (the build and the engine's fallbacks).
//! - [`graph`]: a lazy graph's primitives counted (MLX's `export_to_dot`; `RMLX_GRAPH_DOT`).
//! - [`host`]: a materialised array's data read in place on the host (the host kernels).
//! - [`save_order`]: the order in which MLX's `save_safetensors` lays out tensor data (the
//!   build's writer matches `mlx_lm convert` byte for byte with it).
//! - [`clear_cache`]: hand MLX's buffer cache back; [`synchronize`]: wait for the default
//!   stream's queued work.

pub mod ffi;
pub mod graph;
pub mod host;
pub mod quant;
pub mod save_order;

/// Waits until everything queued on the default device's default stream has run (arrays
/// queued with `async_eval` are then available; arrays never queued stay unevaluated).
pub fn synchronize() {
    // SAFETY: no arguments; waits for the default stream.
    unsafe {
        mlx_sys::mlx_synchronize_default();
    }
}

/// Frees the buffers MLX keeps for reuse that no array refers to.
pub fn clear_cache() {
    // SAFETY: no arguments; frees only buffers no array refers to.
    unsafe {
        mlx_sys::mlx_clear_cache();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The workspace's Rust sources (every crate under `cargo-rmlx/`, and `lsp/`) call MLX's
    /// C API only from `cargo-rmlx/model/src/mlx/`.
    #[test]
    fn mlx_sys_is_called_only_here() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR"));
        let glue = model.join("src").join("mlx");
        let crates = model.parent().unwrap();
        let mut files = Vec::new();
        sources(crates, &mut files);
        sources(&crates.parent().unwrap().join("lsp"), &mut files);
        assert!(
            files.len() > 150,
            "found only {} sources under {crates:?}",
            files.len()
        );
        let outside: Vec<_> = files
            .iter()
            .filter(|f| !f.starts_with(&glue))
            .filter(|f| std::fs::read_to_string(f).unwrap().contains("mlx_sys::"))
            .collect();
        assert!(
            outside.is_empty(),
            "MLX C API called outside src/mlx/: {outside:?}"
        );
    }
}
