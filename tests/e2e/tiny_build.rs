//! The tiny random-weight models of `scripts/tiny_models.py` (made on first use, cached by
//! the script's content) and the build check shared by the e2e and build tests: `cargo rmlx
//! build` of a tiny Hugging Face directory next to `mlx_lm convert` of it, byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::mlx_lm_build::{assert_same_tensors, assert_same_weight_files};
use crate::support::{
    bin, converted, models_dir, once_per_key, oracle_python, repo_root, run_command, scratch_dir,
    sha256_hex, OnceMap, Variant,
};

const SETUP_TIMEOUT: Duration = Duration::from_secs(900);

/// A converted form of a tiny model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mlx_lm convert` without quantizing: the float copy in mlx-lm's layout.
    Float,
    /// `mlx_lm convert -q`: affine, 4 bits, group size 64.
    Affine4,
    /// `mlx_lm convert -q --q-mode mxfp4`.
    Mxfp4,
}

impl Mode {
    /// The mode named by the macro's `modes = [...]` list.
    pub fn named(name: &str) -> Mode {
        match name {
            "float" => Mode::Float,
            "affine4" => Mode::Affine4,
            "mxfp4" => Mode::Mxfp4,
            other => panic!("tiny_arch_tests!: unknown mode `{other}` (float, affine4, mxfp4)"),
        }
    }

    fn mlx_lm_args(self) -> &'static [&'static str] {
        match self {
            Mode::Float => &[],
            Mode::Affine4 => &["-q"],
            Mode::Mxfp4 => &["-q", "--q-mode", "mxfp4"],
        }
    }

    fn rmlx_toml(self) -> &'static str {
        match self {
            Mode::Float => "",
            Mode::Affine4 => r#"quantize = { mode = "affine", bits = 4, group-size = 64 }"#,
            Mode::Mxfp4 => r#"quantize = { mode = "mxfp4" }"#,
        }
    }
}

/// The tiny model of `model_type` (`variant`: "dense", or "mxfp4-native" for gpt_oss's
/// released expert layout), made by the script into
/// `<models>/tiny/<model_type>[-<variant>]-<script hash>` on first use, reused after.
pub fn tiny_model_variant(model_type: &str, variant: &str) -> PathBuf {
    static MODELS: OnceMap<String, PathBuf> = OnceLock::new();
    let key = format!("{model_type}/{variant}");
    once_per_key(&MODELS, key, || make_tiny(model_type, variant))
}

/// The Hugging Face directory of `model_type`'s tiny model.
pub fn tiny_model(model_type: &str) -> PathBuf {
    tiny_model_variant(model_type, "dense")
}

fn make_tiny(model_type: &str, variant: &str) -> Result<PathBuf, String> {
    let script = repo_root().join("scripts").join("tiny_models.py");
    let bytes = fs::read(&script).map_err(|e| format!("{}: {e}", script.display()))?;
    let suffix = if variant == "dense" {
        String::new()
    } else {
        format!("-{variant}")
    };
    let name = format!("{model_type}{suffix}-{}", &sha256_hex(bytes)[..12]);
    let root = models_dir().join("tiny");
    let dest = root.join(&name);
    if dest.join("config.json").is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let mut cmd = Command::new(oracle_python());
    cmd.arg(&script)
        .args(["make", model_type])
        .arg(&tmp)
        .args(["--variant", variant, "--tokenizer-dir"])
        .arg(converted(Variant::Bf16));
    let run = run_command(cmd, SETUP_TIMEOUT);
    if !run.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!(
            "making the tiny {model_type} model failed\n{}",
            run.describe()
        ));
    }
    install(&tmp, &dest)
}

/// Moves a finished directory into place; another process may have done so first.
fn install(tmp: &Path, dest: &Path) -> Result<PathBuf, String> {
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        Err(_) if dest.join("config.json").is_file() => {
            let _ = fs::remove_dir_all(tmp);
            Ok(dest.to_path_buf())
        }
        Err(e) => Err(format!("{} -> {}: {e}", tmp.display(), dest.display())),
    }
}

/// `mlx_lm convert` of the tiny model with `mode`'s quantization (cached by content).
pub fn mlx_lm_convert(model_type: &str, mode: Mode) -> PathBuf {
    crate::mlx_lm_build::mlx_lm_convert(&tiny_model(model_type), mode.mlx_lm_args())
}

/// `cargo rmlx build` of the tiny Hugging Face directory with `mode` (an rmlx.toml in a
/// scratch workspace) next to `mlx_lm convert`: every tensor identical (name, dtype, shape,
/// bytes), every safetensors file byte-identical (tensor data order, header), and
/// config.json and model.safetensors.index.json byte-identical.
pub fn check_build(model_type: &str, mode: Mode) {
    check_build_of(&tiny_model(model_type), model_type, mode);
}

/// [`check_build`] of the model directory `source` (`label` names it in failures).
pub fn check_build_of(source: &Path, label: &str, mode: Mode) {
    check_build_sharded(source, label, mode, None);
}

/// [`check_build_of`] with both tools' shard size set to `max_shard_bytes`, when given
/// (`RMLX_MAX_SHARD_BYTES` here, mlx-lm's `make_shards` limit there). Returns the number of
/// safetensors files.
pub fn check_build_sharded(
    source: &Path,
    label: &str,
    mode: Mode,
    max_shard_bytes: Option<u64>,
) -> usize {
    let model_type = label;
    let theirs =
        crate::mlx_lm_build::mlx_lm_convert_sharded(source, mode.mlx_lm_args(), max_shard_bytes);
    let ws = scratch_dir();
    fs::write(ws.path().join("Cargo.toml"), "[workspace]\n").expect("write Cargo.toml");
    let manifest = format!(
        "[models.tiny]\nsource = {:?}\n{}\n",
        source.display().to_string(),
        mode.rmlx_toml()
    );
    fs::write(ws.path().join("rmlx.toml"), manifest).expect("write rmlx.toml");
    let mut cmd = Command::new(bin());
    cmd.current_dir(ws.path())
        .args(["rmlx", "build"])
        .env("NO_COLOR", "1")
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RMLX_MAX_SHARD_BYTES");
    if let Some(n) = max_shard_bytes {
        cmd.env("RMLX_MAX_SHARD_BYTES", n.to_string());
    }
    let run = run_command(cmd, SETUP_TIMEOUT);
    assert!(
        run.success(),
        "cargo rmlx build of the tiny {model_type} model ({mode:?}) failed\n{}",
        run.describe()
    );
    let ours = ws.path().join("target").join("rmlx").join("tiny");
    assert_same_tensors(&ours, &theirs);
    let shards = assert_same_weight_files(&ours, &theirs);
    for file in ["config.json", "model.safetensors.index.json"] {
        let read = |dir: &Path| {
            fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        };
        assert_eq!(
            read(&ours),
            read(&theirs),
            "{model_type} ({mode:?}): {file} differs between ours ({}) and mlx_lm convert's ({})",
            ours.display(),
            theirs.display()
        );
    }
    shards
}
