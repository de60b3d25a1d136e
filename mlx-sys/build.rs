//! Builds mlx-c against a prebuilt MLX and generates its Rust bindings.
//!
//! * mlx-c sources: `MLX_C_SRC` (an mlx-c checkout), else the pristine upstream `mlx-sys`
//!   0.7.0 package in cargo's registry, located with `cargo metadata` on a throw-away
//!   manifest (offline first, then online). Nothing is copied into this repository.
//! * MLX: `MLX_ROOT` (the `mlx/` directory of an MLX wheel: `lib/`, `include/`,
//!   `share/cmake/MLX`), else the wheel (`mlx-cpu` on Linux, `mlx-metal` on macOS, or
//!   `RMLX_MLX_WHEEL`) at the version mlx-c 0.7.0 pins (`MLX_VERSION` of
//!   `scripts/versions.env`), installed with pip into the per-user *data* directory
//!   (`RMLX_DATA_DIR`, else `$XDG_DATA_HOME/rmlx`, else `~/.local/share/rmlx`). Installed
//!   binaries load it from there through their rpath, so it must not live in a cache that
//!   people clear; a copy left in the cache directory by older builds (`~/.cache/rmlx`) is
//!   copied over instead of downloading again.
//!
//! Publishes `cargo:libdir=<dir of libmlx>` (seen as `DEP_MLX_LIBDIR` by direct dependents),
//! which a binary's build script turns into an rpath.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "pinned.rs"]
mod pinned;
use pinned::pinned;

const UPSTREAM_MLX_SYS: &str = "0.7.0";
/// The project's pinned versions (`MLX_VERSION=…` lines), shared with the setup scripts.
const VERSIONS_FILE: &str = "../scripts/versions.env";

fn main() {
    for var in [
        "MLX_C_SRC",
        "MLX_ROOT",
        "RMLX_MLX_WHEEL",
        "RMLX_DATA_DIR",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=shim/rmlx_linux_shim.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={VERSIONS_FILE}");
    println!("cargo:rerun-if-changed=pinned.rs");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let shim = manifest_dir.join("shim").join("rmlx_linux_shim.h");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let apple = target_os == "macos" || target_os == "ios";

    let mlx_c = locate_mlx_c(&out_dir);
    let mlx_root = locate_mlx(&target_os);
    let mlx_lib = mlx_root.join("lib");
    let mlx_include = mlx_root.join("include");
    let mlx_cmake = mlx_root.join("share").join("cmake").join("MLX");
    for needed in [&mlx_lib, &mlx_include, &mlx_cmake] {
        if !needed.is_dir() {
            fail(&format!(
                "MLX at {} is incomplete: {} is missing (expected an MLX wheel's `mlx/` dir)",
                mlx_root.display(),
                needed.display()
            ));
        }
    }

    // ---- mlx-c (static) ----
    let mut cfg = cmake::Config::new(&mlx_c);
    cfg.profile("Release")
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", &mlx_cmake)
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("CMAKE_POSITION_INDEPENDENT_CODE", "ON");
    if !apple {
        let flags = format!(
            "-include {} -isystem {}",
            shim.display(),
            mlx_include.display()
        );
        cfg.cxxflag(&flags);
    }
    let dst = cfg.build();
    for lib in ["lib", "lib64"] {
        println!("cargo:rustc-link-search=native={}", dst.join(lib).display());
    }
    println!("cargo:rustc-link-lib=static=mlxc");
    println!("cargo:rustc-link-search=native={}", mlx_lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if apple {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }
    // The installed binaries load libmlx from here: when it goes, install it again.
    println!("cargo:rerun-if-changed={}", mlx_lib.display());
    println!("cargo:libdir={}", mlx_lib.display());
    println!("cargo:include={}", mlx_include.display());

    // ---- bindings ----
    let mut headers: Vec<PathBuf> = fs::read_dir(mlx_c.join("mlx").join("c"))
        .unwrap_or_else(|e| fail(&format!("cannot list mlx-c headers: {e}")))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("valid rust target"))
        .clang_arg(format!("-I{}", mlx_c.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    if !apple {
        builder = builder
            .clang_arg("-include")
            .clang_arg(shim.to_string_lossy());
    }
    for h in &headers {
        builder = builder.header(h.to_string_lossy());
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on mlx-c headers: {e}")));
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));
}

fn fail(msg: &str) -> ! {
    panic!("mlx-sys (cargo-rmlx build): {msg}");
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The mlx-c source tree from the upstream mlx-sys package in cargo's registry.
fn locate_mlx_c(out_dir: &Path) -> PathBuf {
    if let Some(src) = env::var_os("MLX_C_SRC") {
        return PathBuf::from(src);
    }
    let probe = out_dir.join("upstream-mlx-sys");
    fs::create_dir_all(probe.join("src")).expect("create probe dir");
    fs::write(
        probe.join("Cargo.toml"),
        format!(
            "[package]\nname = \"rmlx-upstream-mlx-sys-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [lib]\npath = \"src/lib.rs\"\n\
             [dependencies]\nmlx-sys = {{ version = \"={UPSTREAM_MLX_SYS}\", default-features = false }}\n\
             [workspace]\n"
        ),
    )
    .expect("write probe manifest");
    fs::write(probe.join("src").join("lib.rs"), "").expect("write probe lib");
    let manifest = probe.join("Cargo.toml");
    for offline in [true, false] {
        let mut cmd = Command::new(cargo());
        cmd.arg("metadata")
            .arg("--format-version=1")
            .arg("--manifest-path")
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        // The nested cargo must not inherit this build's target dir lock or flags.
        cmd.env_remove("CARGO_TARGET_DIR")
            .env("CARGO_TARGET_DIR", probe.join("target"));
        let Ok(out) = cmd.output() else { continue };
        if !out.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(dir) = find_manifest_dir(&text) {
            let mlx_c = dir.join("src").join("mlx-c");
            if mlx_c.join("CMakeLists.txt").is_file() {
                return mlx_c;
            }
        }
    }
    fail(&format!(
        "could not find the mlx-c sources of the upstream mlx-sys {UPSTREAM_MLX_SYS} package \
         (tried `cargo metadata` offline and online); set MLX_C_SRC to an mlx-c source tree"
    ))
}

/// Finds `"manifest_path":"…/mlx-sys-0.7.0/Cargo.toml"` in `cargo metadata` output.
fn find_manifest_dir(json: &str) -> Option<PathBuf> {
    let needle = format!("mlx-sys-{UPSTREAM_MLX_SYS}");
    for piece in json.split("\"manifest_path\":\"").skip(1) {
        let path = piece.split('"').next()?;
        let path = path.replace("\\\\", "\\");
        let p = PathBuf::from(&path);
        if p.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n.to_string_lossy() == needle)
        {
            return p.parent().map(Path::to_path_buf);
        }
    }
    None
}

/// The MLX version mlx-c 0.7.0 is written against (newer headers break it): `MLX_VERSION`
/// of [`VERSIONS_FILE`].
fn mlx_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
        let path = Path::new(&manifest_dir).join(VERSIONS_FILE);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
        pinned(&text, "MLX_VERSION")
            .unwrap_or_else(|| fail(&format!("{} sets no MLX_VERSION", path.display())))
    })
}

/// The `mlx/` directory of an MLX wheel (libmlx, headers, CMake config).
fn locate_mlx(target_os: &str) -> PathBuf {
    if let Some(root) = env::var_os("MLX_ROOT") {
        return PathBuf::from(root);
    }
    let wheel = env::var("RMLX_MLX_WHEEL").unwrap_or_else(|_| {
        if target_os == "macos" {
            "mlx-metal".into()
        } else {
            "mlx-cpu".into()
        }
    });
    let version = mlx_version();
    let data = data_dir();
    let dest = data.join(format!("{wheel}-{version}"));
    let root = dest.join("mlx");
    if root.join("lib").is_dir() {
        return root;
    }
    fs::create_dir_all(&data).expect("create the MLX data dir");
    let tmp = data.join(format!(".{wheel}-{version}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let legacy = legacy_cache_dir().map(|c| c.join(format!("{wheel}-{version}")));
    match legacy {
        Some(old) if old.join("mlx").join("lib").is_dir() => {
            copy_tree(&old, &tmp).unwrap_or_else(|e| {
                fail(&format!(
                    "cannot copy {} to {}: {e}",
                    old.display(),
                    tmp.display()
                ))
            });
        }
        _ => pip_install(&wheel, &tmp),
    }
    if fs::rename(&tmp, &dest).is_err() {
        // Another build won the race; use its copy.
        let _ = fs::remove_dir_all(&tmp);
    }
    root
}

/// Where the MLX runtime is kept: `RMLX_DATA_DIR`, else `$XDG_DATA_HOME/rmlx`, else
/// `~/.local/share/rmlx`.
fn data_dir() -> PathBuf {
    env::var_os("RMLX_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("rmlx")))
        .or_else(|| {
            env::var_os("HOME").map(|d| PathBuf::from(d).join(".local").join("share").join("rmlx"))
        })
        .unwrap_or_else(|| fail("set MLX_ROOT, RMLX_DATA_DIR or HOME"))
}

/// The cache directory older builds installed the wheel into.
fn legacy_cache_dir() -> Option<PathBuf> {
    env::var_os("XDG_CACHE_HOME")
        .map(|d| PathBuf::from(d).join("rmlx"))
        .or_else(|| env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("rmlx")))
}

/// Copies the directory tree `from` to the new directory `to` (symlinks followed).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Installs `wheel` at [`mlx_version`] with pip into `into`.
fn pip_install(wheel: &str, into: &Path) {
    let version = mlx_version();
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(into)
        .arg(format!("{wheel}=={version}"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => fail(&format!(
            "`{python} -m pip install --no-deps {wheel}=={version}` failed ({other:?}); \
             install it yourself and point MLX_ROOT at its `mlx/` directory"
        )),
    }
}
