//! Gives the `cargo-rmlx` binary (and tests) an rpath to the MLX shared library that
//! `mlx-sys` linked against, so the installed binary runs without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        if os != "windows" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
