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
//! `tiny_arch_tests!(qwen3_moe, "qwen3_moe", modes = [affine4]);` — ending in
//! `dense = mlx_lm_dense` when the checkpoint layout is not the MLX layout (the dense checks
//! then run on the unquantized `mlx_lm convert` of it).

use std::path::{Path, PathBuf};

use crate::oracle::{check_dir_with, LogitTolerance, Tolerance};
use crate::support::{CHAT_PROMPT, RAW_PROMPT};
pub use crate::tiny_build::{check_build, mlx_lm_convert, tiny_model, Mode};

/// Float32 weights, float32 computation on both sides: no near-ties to forgive (the script
/// checks mlx-lm's margins are >= 1e-2 relative at every step).
const TINY: Tolerance = Tolerance {
    step0_logit: LogitTolerance::Relative(1e-3),
    near_tie: None,
};

/// The unquantized `mlx_lm convert` of the tiny model: the dense directory checked for an
/// architecture whose checkpoint layout is not the MLX layout the engine reads (Qwen3.5:
/// convolution axes, shifted norms, the wrapper's prefixes).
pub fn mlx_lm_dense(model_type: &str) -> PathBuf {
    crate::mlx_lm_build::mlx_lm_convert(&tiny_model(model_type), &[])
}

/// `cargo rmlx probe` on `dir` computes a verdict (random weights give no particular one)
/// without a load failure, an unsupported-architecture exit or a panic.
pub fn check_probe(dir: &Path) {
    let (report, code) = crate::probe::probe(dir, &[]);
    let verdict = report["verdict"].as_str().unwrap_or("<none>");
    assert!(
        verdict != "<none>" && ![3, 5, 101].contains(&code),
        "{}: probe gave verdict {verdict}, exit {code}\n{report:#}",
        dir.display()
    );
}

/// The oracle checks of `dir` for both prompts.
pub fn check_generation(dir: &Path, name: &str, chat: bool) {
    let prompt = if chat { CHAT_PROMPT } else { RAW_PROMPT };
    check_dir_with(dir, name, prompt, chat, TINY);
}

/// All checks of one `model_type`: the dense directory, and for each listed mode
/// (`affine4`, `mxfp4`) its `mlx_lm convert` build and `cargo rmlx build`'s identity; with
/// `native_mxfp4`, also the model in gpt-oss's released layout (MXFP4 `*_blocks`/`*_scales`
/// expert tensors, `quant_method: mxfp4`).
macro_rules! tiny_arch_tests {
    ($name:ident, $model_type:literal, modes = [$($mode:ident),* $(,)?]) => {
        mod $name {
            tiny_arch_tests!(@body $model_type, [$($mode),*], tiny_model);
        }
    };
    ($name:ident, $model_type:literal, modes = [$($mode:ident),* $(,)?], dense = mlx_lm_dense) => {
        mod $name {
            tiny_arch_tests!(@body $model_type, [$($mode),*], mlx_lm_dense);
        }
    };
    ($name:ident, $model_type:literal, modes = [$($mode:ident),* $(,)?], native_mxfp4) => {
        mod $name {
            tiny_arch_tests!(@body $model_type, [$($mode),*], tiny_model);

            mod native_mxfp4 {
                use crate::tiny_arch::check_generation;
                use crate::tiny_build::tiny_model_variant;

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
    (@body $model_type:literal, [$($mode:ident),*], $dense:ident) => {
        #[allow(unused_imports)]
        use crate::tiny_arch::{
            check_build, check_generation, check_probe, mlx_lm_convert, mlx_lm_dense, tiny_model,
            Mode,
        };

        const DENSE: &str = concat!($model_type, " dense");

        #[test]
        fn dense_raw_matches_mlx_lm() {
            check_generation(&$dense($model_type), DENSE, false);
        }

        #[test]
        fn dense_chat_matches_mlx_lm() {
            check_generation(&$dense($model_type), DENSE, true);
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

                #[test]
                fn probe_computes_a_verdict() {
                    check_probe(&mlx_lm_convert($model_type, Mode::named(stringify!($mode))));
                }
            }
        )*
    };
}

tiny_arch_tests!(llama, "llama", modes = [affine4]);
tiny_arch_tests!(qwen2, "qwen2", modes = [affine4]);
tiny_arch_tests!(qwen3, "qwen3", modes = [affine4]);
tiny_arch_tests!(gemma3_text, "gemma3_text", modes = [affine4]);
tiny_arch_tests!(smollm3, "smollm3", modes = [affine4]);
tiny_arch_tests!(phi3, "phi3", modes = [affine4]);
tiny_arch_tests!(olmo2, "olmo2", modes = [affine4]);
tiny_arch_tests!(ministral3, "ministral3", modes = [affine4]);
tiny_arch_tests!(
    mistral3,
    "mistral3",
    modes = [affine4],
    dense = mlx_lm_dense
);
tiny_arch_tests!(qwen3_moe, "qwen3_moe", modes = [affine4]);
tiny_arch_tests!(gpt_oss, "gpt_oss", modes = [affine4, mxfp4], native_mxfp4);
tiny_arch_tests!(qwen3_5, "qwen3_5", modes = [affine4], dense = mlx_lm_dense);
tiny_arch_tests!(
    qwen3_5_moe,
    "qwen3_5_moe",
    modes = [affine4],
    dense = mlx_lm_dense
);
tiny_arch_tests!(
    gemma4_text,
    "gemma4_text",
    modes = [affine4],
    dense = mlx_lm_dense
);
tiny_arch_tests!(gemma4, "gemma4", modes = [affine4], dense = mlx_lm_dense);
