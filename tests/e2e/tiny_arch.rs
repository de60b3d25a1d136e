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
use std::process::Command;
use std::time::Duration;

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

/// `cargo rmlx serve DIR --no-probe` (random weights fail the gate by design) loads the model
/// and answers one chat completion through the real HTTP server.
pub fn check_serve(dir: &Path) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Command::new(crate::support::bin())
        .args([
            "rmlx",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-probe",
        ])
        .arg(dir)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("start the server");
    let reply = serve_one_request(log.path());
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let reply = reply.unwrap_or_else(|e| panic!("{}: {e}\n{text}", dir.display()));
    assert!(
        reply["choices"][0]["message"]["content"].is_string(),
        "{}: no completion in {reply:#}\n{text}",
        dir.display()
    );
}

/// Waits for the server logging to `log` to be ready, then posts one chat completion.
fn serve_one_request(log: &Path) -> Result<serde_json::Value, String> {
    let start = std::time::Instant::now();
    let base = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find("Listening on http://") {
            let rest = &text[i + "Listening on ".len()..];
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err("the server did not listen within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let healthy = |agent: &ureq::Agent| {
        agent
            .get(format!("{base}/health"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    };
    while !healthy(&agent) {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("/health did not answer 200 within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 4
    });
    let mut reply = agent
        .post(format!("{base}/v1/chat/completions"))
        .send_json(&body)
        .map_err(|e| e.to_string())?;
    if reply.status().as_u16() != 200 {
        return Err(format!("chat completion answered {}", reply.status()));
    }
    reply.body_mut().read_json().map_err(|e| e.to_string())
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
            check_build, check_generation, check_probe, check_serve, mlx_lm_convert,
            mlx_lm_dense, tiny_model, Mode,
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

                #[test]
                fn serve_answers_a_chat_completion() {
                    check_serve(&mlx_lm_convert($model_type, Mode::named(stringify!($mode))));
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
