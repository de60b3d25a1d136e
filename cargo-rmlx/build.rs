//! Link settings of the `cargo-rmlx` binary (and test executables):
//! * an rpath to the MLX shared library that `mlx-sys` linked against, so the installed
//!   binary runs without LD_LIBRARY_PATH;
//! * on Linux, OpenBLAS (Debian's `libopenblas0-pthread`) linked into the executable ahead of
//!   the reference BLAS bundled with the MLX wheel, so MLX's dense matmuls resolve `sgemm` to
//!   OpenBLAS (~16× faster here). Without OpenBLAS the build still works, with a warning.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    println!("cargo:rerun-if-env-changed=RMLX_NO_OPENBLAS");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        if os != "windows" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    if os == "linux" && std::env::var_os("RMLX_NO_OPENBLAS").is_none() {
        let candidates = [
            "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
            "/usr/lib64/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",
        ];
        match candidates.iter().find(|p| Path::new(p).exists()) {
            Some(lib) => {
                // --no-as-needed: nothing in our code calls BLAS directly, but the library
                // must stay in the executable's NEEDED list to take precedence over libmlx's.
                println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,{lib},--pop-state");
            }
            None => println!(
                "cargo:warning=OpenBLAS not found (apt-get install libopenblas0-pthread); MLX \
                 will use the wheel's slow reference BLAS"
            ),
        }
    }
}
