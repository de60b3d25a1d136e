//! Oracle tests per architecture on tiny random-weight models (`scripts/tiny_models.py`:
//! transformers' config classes with tiny sizes and every layer kind of the family, random
//! float32 weights in the checkpoint layout, the SmolLM2 tokenizer, seeds chosen so that
//! mlx-lm's greedy steps have clear margins).
//!
//! For each enabled `model_type`, on the Hugging Face directory and on each `mlx_lm convert`
//! build of it (affine 4-bit g64, mxfp4), for the raw and the chat prompt: prompt ids equal
//! to mlx-lm's, step-0 top-1 equal with its logit within 1e-3 relative of mlx-lm float32,
//! and 16 greedy tokens equal. And `cargo rmlx build` of the Hugging Face directory with the
//! same quantization writes the same files as `mlx_lm convert` (see [`check_build`]).
//!
//! One line enables all of it for an architecture:
//! `tiny_arch_tests!(qwen3_moe, "qwen3_moe", modes = [affine4]);`

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::mlx_lm_build::assert_same_tensors;
use crate::oracle::{check_dir_with, LogitTolerance, Tolerance};
use crate::support::{
    bin, converted, models_dir, once_per_key, oracle_python, repo_root, run_command, scratch_dir,
    sha256_hex, OnceMap, Variant, CHAT_PROMPT, RAW_PROMPT,
};

/// Float32 weights, float32 computation on both sides: no near-ties to forgive (the script
/// checks mlx-lm's margins are >= 1e-2 relative at every step).
const TINY: Tolerance = Tolerance {
    step0_logit: LogitTolerance::Relative(1e-3),
    near_tie: None,
};

const SETUP_TIMEOUT: Duration = Duration::from_secs(900);

/// A quantized form of a tiny model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mlx_lm convert -q`: affine, 4 bits, group size 64.
    Affine4,
    /// `mlx_lm convert -q --q-mode mxfp4`.
    Mxfp4,
}

impl Mode {
    /// The mode named by the macro's `modes = [...]` list.
    pub fn named(name: &str) -> Mode {
        match name {
            "affine4" => Mode::Affine4,
            "mxfp4" => Mode::Mxfp4,
            other => panic!("tiny_arch_tests!: unknown mode `{other}` (affine4, mxfp4)"),
        }
    }

    fn mlx_lm_args(self) -> &'static [&'static str] {
        match self {
            Mode::Affine4 => &["-q"],
            Mode::Mxfp4 => &["-q", "--q-mode", "mxfp4"],
        }
    }

    fn rmlx_toml(self) -> &'static str {
        match self {
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

/// The oracle checks of `dir` for both prompts.
pub fn check_generation(dir: &Path, name: &str, chat: bool) {
    let prompt = if chat { CHAT_PROMPT } else { RAW_PROMPT };
    check_dir_with(dir, name, prompt, chat, TINY);
}

/// `cargo rmlx build` of the tiny Hugging Face directory with `mode` (an rmlx.toml in a
/// scratch workspace) next to `mlx_lm convert`: every tensor byte-identical (name, dtype,
/// shape, bytes), and config.json and model.safetensors.index.json byte-identical.
pub fn check_build(model_type: &str, mode: Mode) {
    let source = tiny_model(model_type);
    let theirs = mlx_lm_convert(model_type, mode);
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
        .env_remove("CARGO_TARGET_DIR");
    let run = run_command(cmd, SETUP_TIMEOUT);
    assert!(
        run.success(),
        "cargo rmlx build of the tiny {model_type} model ({mode:?}) failed\n{}",
        run.describe()
    );
    let ours = ws.path().join("target").join("rmlx").join("tiny");
    assert_same_tensors(&ours, &theirs);
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
}

/// All checks of one `model_type`: the dense directory, and for each listed mode
/// (`affine4`, `mxfp4`) its `mlx_lm convert` build and `cargo rmlx build`'s identity; with
/// `native_mxfp4`, also the model in gpt-oss's released layout (MXFP4 `*_blocks`/`*_scales`
/// expert tensors, `quant_method: mxfp4`).
macro_rules! tiny_arch_tests {
    ($name:ident, $model_type:literal, modes = [$($mode:ident),* $(,)?]) => {
        mod $name {
            tiny_arch_tests!(@body $model_type, [$($mode),*]);
        }
    };
    ($name:ident, $model_type:literal, modes = [$($mode:ident),* $(,)?], native_mxfp4) => {
        mod $name {
            tiny_arch_tests!(@body $model_type, [$($mode),*]);

            mod native_mxfp4 {
                use crate::tiny_arch::{check_generation, tiny_model_variant};

                const NAME: &str = concat!($model_type, " native mxfp4");

                #[test]
                fn raw_matches_mlx_lm() {
                    check_generation(&tiny_model_variant($model_type, "mxfp4-native"), NAME, false);
                }

                #[test]
                fn chat_matches_mlx_lm() {
                    check_generation(&tiny_model_variant($model_type, "mxfp4-native"), NAME, true);
                }
            }
        }
    };
    (@body $model_type:literal, [$($mode:ident),*]) => {
        use crate::tiny_arch::{check_build, check_generation, mlx_lm_convert, tiny_model, Mode};

        const DENSE: &str = concat!($model_type, " dense");

        #[test]
        fn dense_raw_matches_mlx_lm() {
            check_generation(&tiny_model($model_type), DENSE, false);
        }

        #[test]
        fn dense_chat_matches_mlx_lm() {
            check_generation(&tiny_model($model_type), DENSE, true);
        }

        $(
            mod $mode {
                use super::*;

                const NAME: &str = concat!($model_type, " ", stringify!($mode));

                fn dir() -> std::path::PathBuf {
                    mlx_lm_convert($model_type, Mode::named(stringify!($mode)))
                }

                #[test]
                fn raw_matches_mlx_lm() {
                    check_generation(&dir(), NAME, false);
                }

                #[test]
                fn chat_matches_mlx_lm() {
                    check_generation(&dir(), NAME, true);
                }

                #[test]
                fn build_is_byte_identical_to_mlx_lm_convert() {
                    check_build($model_type, Mode::named(stringify!($mode)));
                }
            }
        )*
    };
}

tiny_arch_tests!(llama, "llama", modes = [affine4]);
tiny_arch_tests!(qwen2, "qwen2", modes = [affine4]);
tiny_arch_tests!(qwen3, "qwen3", modes = [affine4]);
tiny_arch_tests!(gemma3_text, "gemma3_text", modes = [affine4]);
