//! GGUF import of the new families against llama.cpp itself, on the tiny random-weight
//! models: `scripts/tiny_gguf.py` writes each tiny Hugging Face directory as a GGUF the way
//! llama.cpp's converter does (llama.cpp's own `gguf-py`, no torch; cached next to the tiny
//! models), `cargo rmlx convert` imports it (float32), and
//!
//! - llama.cpp (llama-cpp-python 0.3.36, `scripts/llama_cpp_greedy.py`) on the GGUF and our
//!   engine on the import agree: step-0 top-1, its logit within 1e-3 relative, 16 greedy
//!   tokens (a Q8_0 GGUF: llama.cpp also quantizes the activations to 8 bits, so 1e-2 and
//!   the tokens while llama.cpp's top-1 leads by >= 1e-2 relative);
//! - for families whose GGUF holds every setting of the tiny model, our engine on the import
//!   and on the original Hugging Face directory agree (prompt ids, 16 greedy tokens, step-0
//!   top-1; its logit within 1e-3 relative for f32 — Q8_0 moves logits by per cents, so
//!   there the tokens while the source's top-1 leads by >= 10%).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use crate::support::{
    generate, models_dir, once_per_key, oracle_python, parse_json, repo_root, rmlx, run_command,
    sha256_hex, venv_python, Generation, OnceMap, CHAT_PROMPT, ORACLE_STEPS, RAW_PROMPT,
};
use crate::tiny_build::{mlx_lm_convert, tiny_model, tiny_model_variant, Mode};

const SETUP_TIMEOUT: Duration = Duration::from_secs(900);

/// A step of llama.cpp's greedy run (scripts/llama_cpp_greedy.py).
#[derive(Debug, Deserialize)]
struct LlamaStep {
    id: u32,
    logit: f64,
    margin: f64,
}

#[derive(Debug, Deserialize)]
struct LlamaRun {
    generated_ids: Vec<u32>,
    steps: Vec<LlamaStep>,
}

/// llama.cpp's `gguf-py` (scripts/gguf-py.sh: extracted once from the llama-cpp-python
/// source distribution).
fn gguf_py() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts").join("gguf-py.sh"))
            .current_dir(repo_root());
        let run = run_command(cmd, SETUP_TIMEOUT);
        match run.stdout.lines().last().map(|l| PathBuf::from(l.trim())) {
            Some(dir) if run.success() && dir.join("gguf").is_dir() => dir,
            _ => panic!("llama.cpp's gguf-py is not available\n{}", run.describe()),
        }
    })
    .clone()
}

/// The llama venv's python (llama-cpp-python built from source).
fn llama_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| venv_python("llama-venv.sh", "the llama.cpp reference"))
        .clone()
}

/// The tiny model a GGUF is written from: gpt-oss's in its released layout (MXFP4 experts,
/// which the converter keeps for `mxfp4` and writes as their float32 values for `f32`), the
/// others' dense model.
fn gguf_source(model_type: &str) -> PathBuf {
    match model_type {
        "gpt_oss" => tiny_model_variant(model_type, "mxfp4-native"),
        _ => tiny_model(model_type),
    }
}

/// The model our engine runs as the source oracle: the GGUF's source, or — for Qwen3.5, whose
/// checkpoint layout (prefixed names, norms stored `w − 1`, `[C, 1, K]` convolution) runs
/// only after conversion, and Gemma 4, whose checkpoint fuses the experts' gate and up
/// projections — its float `mlx_lm convert`.
fn source_oracle(model_type: &str) -> PathBuf {
    match model_type {
        "qwen3_5" | "qwen3_5_moe" | "gemma4_text" | "gemma4" => {
            mlx_lm_convert(model_type, Mode::Float)
        }
        _ => gguf_source(model_type),
    }
}

/// Whether the GGUF holds the source's weights exactly (f32, or MXFP4 experts kept as they
/// were released), so the import must match the source to 1e-3.
fn lossless(outtype: &str) -> bool {
    matches!(outtype, "f32" | "mxfp4")
}

/// The GGUF of `model_type`'s tiny model with `outtype` (f32, q8_0, mxfp4), written on first use to
/// `<models>/tiny/<model_type>-<outtype>-<scripts' hash>.gguf`.
fn tiny_gguf(model_type: &str, outtype: &str) -> PathBuf {
    static FILES: OnceMap<String, PathBuf> = OnceLock::new();
    once_per_key(&FILES, format!("{model_type}/{outtype}"), || {
        make_gguf(model_type, outtype)
    })
}

fn make_gguf(model_type: &str, outtype: &str) -> Result<PathBuf, String> {
    let source = gguf_source(model_type);
    let scripts = repo_root().join("scripts");
    let mut hashed = Vec::new();
    for s in ["tiny_models.py", "tiny_gguf.py"] {
        hashed.extend(fs::read(scripts.join(s)).map_err(|e| format!("{s}: {e}"))?);
    }
    let name = format!("{model_type}-{outtype}-{}.gguf", &sha256_hex(hashed)[..12]);
    let dest = models_dir().join("tiny").join(&name);
    if dest.is_file() {
        return Ok(dest);
    }
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let mut cmd = Command::new(oracle_python());
    cmd.arg(scripts.join("tiny_gguf.py"))
        .arg("make")
        .arg(&source)
        .arg(&tmp)
        .arg("--gguf-py")
        .arg(gguf_py())
        .args(["--outtype", outtype]);
    let run = run_command(cmd, SETUP_TIMEOUT);
    if !run.success() {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "writing the tiny {model_type} GGUF failed\n{}",
            run.describe()
        ));
    }
    fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(dest)
}

/// `cargo rmlx convert` of the GGUF, float32 dense tensors (Q8_0 matrices kept as MLX affine
/// 8-bit, group 32: exactly the GGUF's values).
fn import(gguf: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch dir");
    let out = dir.path().join("model");
    let run = rmlx([
        "convert".as_ref(),
        gguf.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--keep-quantized".as_ref(),
        "--dtype".as_ref(),
        "f32".as_ref(),
    ]);
    assert!(run.success(), "convert failed\n{}", run.describe());
    dir
}

/// The context llama.cpp runs `model_type` with; 0: the script's default (prompt + steps).
/// Phi-3: llama.cpp picks `rope_factors_short` while the context is within the original
/// one and the long factors beyond it; mlx-lm (and our engine) apply the long factors at
/// every length, so llama.cpp gets a context just past the tiny model's original 4096.
fn llama_cpp_context(model_type: &str) -> usize {
    match model_type {
        "phi3" => 4096 + 512,
        _ => 0,
    }
}

fn llama_cpp(gguf: &Path, prompt_ids: &[u32], n_ctx: usize) -> LlamaRun {
    let mut cmd = Command::new(llama_python());
    cmd.arg(repo_root().join("scripts").join("llama_cpp_greedy.py"))
        .arg(gguf)
        .arg("--prompt-ids")
        .arg(serde_json::to_string(prompt_ids).expect("ids"))
        .arg("--steps")
        .arg(ORACLE_STEPS.to_string())
        .arg("--n-ctx")
        .arg(n_ctx.to_string());
    let run = run_command(cmd, SETUP_TIMEOUT);
    assert!(run.success(), "llama.cpp failed\n{}", run.describe());
    parse_json(&run)
}

/// Our run on the import against llama.cpp on the GGUF (see the module docs).
fn check_llama_cpp(model_type: &str, outtype: &str, chat: bool) {
    let gguf = tiny_gguf(model_type, outtype);
    let dir = import(&gguf);
    let prompt = if chat { CHAT_PROMPT } else { RAW_PROMPT };
    let ours = generate(
        &dir.path().join("model"),
        prompt,
        chat,
        ORACLE_STEPS,
        &["--ignore-eos"],
    );
    let theirs = llama_cpp(&gguf, &ours.prompt_ids, llama_cpp_context(model_type));
    let case = format!("{model_type} {outtype} GGUF, chat={chat}");
    let (id, logit) = ours.steps[0].rank(0);
    assert_eq!(id, theirs.steps[0].id, "{case}: step-0 top-1 vs llama.cpp");
    // Q8_0: llama.cpp multiplies with 8-bit activations too, which moves logits by ~0.3%.
    let rel = if outtype == "f32" { 1e-3 } else { 1e-2 };
    assert!(
        (logit - theirs.steps[0].logit).abs() <= rel * theirs.steps[0].logit.abs(),
        "{case}: step-0 logit {logit} vs llama.cpp {} (tolerance {rel} relative)",
        theirs.steps[0].logit
    );
    let n = if outtype == "f32" {
        ORACLE_STEPS
    } else {
        clear_prefix(&theirs)
    };
    assert_eq!(
        ours.generated_ids[..n],
        theirs.generated_ids[..n],
        "{case}: greedy tokens vs llama.cpp (the first {n} steps; for Q8_0 those where its \
         top-1 leads by >= 1e-2 relative)"
    );
}

/// The steps of llama.cpp's run before the first whose top-1/top-2 margin is below 1e-2
/// relative (8-bit activations move logits by about that much).
fn clear_prefix(run: &LlamaRun) -> usize {
    run.steps
        .iter()
        .position(|s| s.margin < 1e-2)
        .unwrap_or(run.steps.len())
}

/// Our run on the import against our run on the original Hugging Face directory.
fn check_against_source(model_type: &str, outtype: &str, chat: bool) {
    let gguf = tiny_gguf(model_type, outtype);
    let dir = import(&gguf);
    let prompt = if chat { CHAT_PROMPT } else { RAW_PROMPT };
    let run =
        |d: &Path| -> Generation { generate(d, prompt, chat, ORACLE_STEPS, &["--ignore-eos"]) };
    let ours = run(&dir.path().join("model"));
    let source = run(&source_oracle(model_type));
    let case = format!("{model_type} {outtype} GGUF import vs the source, chat={chat}");
    assert_eq!(ours.prompt_ids, source.prompt_ids, "{case}: prompt ids");
    let n = if lossless(outtype) {
        ORACLE_STEPS
    } else {
        clear_source_prefix(&source)
    };
    assert_eq!(
        ours.generated_ids[..n],
        source.generated_ids[..n],
        "{case}: greedy tokens (the first {n}; for Q8_0 those where the source's top-1 leads \
         by >= {Q8_MARGIN} relative)"
    );
    let (id, logit) = ours.steps[0].rank(0);
    let (sid, slogit) = source.steps[0].rank(0);
    assert_eq!(id, sid, "{case}: step-0 top-1");
    // Q8_0 rounds the tiny models' (scaled) weights enough to move logits by several per
    // cent: only the tokens are compared there (the logits are checked against llama.cpp).
    if lossless(outtype) {
        assert!(
            (logit - slogit).abs() <= 1e-3 * slogit.abs(),
            "{case}: step-0 logit {logit} vs {slogit}"
        );
    }
}

/// The top-1/top-2 margin (relative to |top-1|) below which Q8_0's rounding of the tiny
/// models' weights (several per cent on the logits) may flip a greedy choice.
const Q8_MARGIN: f64 = 0.1;

/// The source's steps before the first whose top-1 leads by less than [`Q8_MARGIN`].
fn clear_source_prefix(run: &Generation) -> usize {
    run.steps
        .iter()
        .position(|s| {
            let (top, second) = (s.rank(0).1, s.rank(1).1);
            (top - second) < Q8_MARGIN * top.abs()
        })
        .unwrap_or(run.steps.len())
}

/// Our run on the Q8_0 import against our run on the import of the same GGUF with every Q8_0
/// tensor replaced by gguf-py's float32 dequantization of it (`--outtype q8_0-values`): the
/// same values on both sides, so prompt ids, 16 greedy tokens, step-0 top-1 and its logit
/// within 1e-3 relative. It checks the Q8_0 decoding (kept as MLX affine 8-bit, or
/// dequantized) against llama.cpp's own library where llama.cpp cannot run the model; the
/// float import is checked against the source by the family's f32 line.
fn check_against_values(model_type: &str, chat: bool) {
    let quantized = import(&tiny_gguf(model_type, "q8_0"));
    let values = import(&tiny_gguf(model_type, "q8_0-values"));
    let prompt = if chat { CHAT_PROMPT } else { RAW_PROMPT };
    let run = |d: &tempfile::TempDir| -> Generation {
        generate(
            &d.path().join("model"),
            prompt,
            chat,
            ORACLE_STEPS,
            &["--ignore-eos"],
        )
    };
    let (ours, theirs) = (run(&quantized), run(&values));
    let case = format!("{model_type} Q8_0 GGUF import vs its dequantized values, chat={chat}");
    assert_eq!(ours.prompt_ids, theirs.prompt_ids, "{case}: prompt ids");
    assert_eq!(
        ours.generated_ids, theirs.generated_ids,
        "{case}: greedy tokens"
    );
    let ((id, logit), (tid, tlogit)) = (ours.steps[0].rank(0), theirs.steps[0].rank(0));
    assert_eq!(id, tid, "{case}: step-0 top-1");
    assert!(
        (logit - tlogit).abs() <= 1e-3 * tlogit.abs(),
        "{case}: step-0 logit {logit} vs {tlogit}"
    );
}

/// One line per architecture and GGUF type, naming the oracles:
/// `gguf_tests!(olmo2_f32, "olmo2", "f32", [llama_cpp, source]);` — `llama_cpp`: llama.cpp
/// on the GGUF; `source`: our engine on the tiny model (when the GGUF holds all its settings);
/// `values` (Q8_0): our engine on the import of the GGUF's dequantized values.
macro_rules! gguf_tests {
    ($name:ident, $model_type:literal, $outtype:literal, [$($oracle:ident),+]) => {
        mod $name {
            $(gguf_tests!(@$oracle $model_type, $outtype);)+
        }
    };
    (@llama_cpp $model_type:literal, $outtype:literal) => {
        #[test]
        fn raw_matches_llama_cpp() {
            super::check_llama_cpp($model_type, $outtype, false);
        }

        #[test]
        fn chat_matches_llama_cpp() {
            super::check_llama_cpp($model_type, $outtype, true);
        }
    };
    (@values $model_type:literal, $outtype:literal) => {
        #[test]
        fn raw_matches_its_values() {
            super::check_against_values($model_type, false);
        }

        #[test]
        fn chat_matches_its_values() {
            super::check_against_values($model_type, true);
        }
    };
    (@source $model_type:literal, $outtype:literal) => {
        #[test]
        fn raw_matches_the_source() {
            super::check_against_source($model_type, $outtype, false);
        }

        #[test]
        fn chat_matches_the_source() {
            super::check_against_source($model_type, $outtype, true);
        }
    };
}

gguf_tests!(llama_f32, "llama", "f32", [llama_cpp, source]);
gguf_tests!(qwen3_f32, "qwen3", "f32", [llama_cpp, source]);
gguf_tests!(olmo2_f32, "olmo2", "f32", [llama_cpp, source]);
gguf_tests!(olmo2_q8_0, "olmo2", "q8_0", [llama_cpp, source]);
// The tiny SmolLM3 skips RoPE every 2nd layer; llama.cpp hard-codes every 4th (not in the
// GGUF), and so does the import: llama.cpp is the only oracle here.
gguf_tests!(smollm3_f32, "smollm3", "f32", [llama_cpp]);
// llama.cpp's qwen3moe has no dense layers (the tiny model's layer 1 is one, written under
// llama's names by the script): llama.cpp refuses the file, the source is the oracle.
gguf_tests!(qwen3_moe_f32, "qwen3_moe", "f32", [source]);
// (No Q8_0 qwen3_moe line: rounding the tiny model's weights flips its top-2 expert choice
// and, with it, the chat prompt's first token; no llama.cpp run exists to compare with.)
// Phi-3: fused qkv / gate_up, longrope factors from the GGUF's rope_factors_* tensors.
gguf_tests!(phi3_f32, "phi3", "f32", [llama_cpp, source]);
// GPT-OSS (sinks, sliding/full layers, YaRN, biased experts): with float32 experts against
// llama.cpp and the source; as released, MXFP4 experts kept MXFP4 by the converter and by
// the import (MLX `mxfp4`, the same codes and scales), against the source only: llama.cpp
// multiplies MXFP4 with 8-bit activations, which moves this tiny model's logits by ~2%
// (its f32 GGUF agrees with ours to 1e-6, so that is the whole difference).
gguf_tests!(gpt_oss_f32, "gpt_oss", "f32", [llama_cpp, source]);
gguf_tests!(gpt_oss_mxfp4, "gpt_oss", "mxfp4", [source]);
// Ministral 3 / Mistral 3 text: llama's Q/K permutation, YaRN with `mscale_all_dim`, Llama 4
// query scaling from `attention.temperature_scale`.
gguf_tests!(ministral3_f32, "ministral3", "f32", [llama_cpp, source]);
// Qwen3.5: delta-net layers (A as -exp(A_log), squeezed convolution, value heads reordered
// to llama.cpp's tiled order — the tiny models have 4 value and 2 key heads) and gated full
// attention; the MoE variant with routed experts and a gated shared expert.
gguf_tests!(qwen3_5_f32, "qwen3_5", "f32", [llama_cpp, source]);
gguf_tests!(qwen3_5_moe_f32, "qwen3_5_moe", "f32", [llama_cpp, source]);
// Gemma 4 (`gemma4_text`: per-layer inputs, KV-shared layers with double-wide MLPs, head
// widths and RoPE per layer type with proportional partial RoPE from `rope_freqs`, K=V on
// full layers with their own KV-head count, the MoE block with its fused gate/up experts,
// softcapping; `gemma4`: the multimodal checkpoint's E2B-like text model, without K=V or
// MoE, whose converter writes the text model alone). The source is the only oracle:
// llama.cpp hard-codes which layer a KV-shared layer reads (the last non-shared layer for a
// full one, the one before it for a sliding one), which holds for the released checkpoints
// but not for the tiny models' layer kinds (sliding, sliding, full, sliding | shared
// sliding, shared full), so it aborts on their GGUFs (`GGML_ASSERT(map_layer_ids…)`).
gguf_tests!(gemma4_text_f32, "gemma4_text", "f32", [source]);
gguf_tests!(gemma4_f32, "gemma4", "f32", [source]);

// Q8_0 GGUFs of the newer families, against the import of the same file's dequantized
// values (`values`: exact, 1e-3). Not against the float source: the tiny models' "champion"
// output rows (a spike of 12 in one feature) make Q8_0's per-block rounding coarse on those
// rows, which moves logits by up to ~12% and flips greedy choices. Not against llama.cpp
// either: it multiplies Q8_0 matrices with activations rounded to 8 bits too, which on these
// models' spiky activations moves step-0 logits by 2-10% (measured: gpt_oss chat 8%,
// ministral3 chat 3%, qwen3_5 raw 2% and a flipped chat top-1, qwen3_5_moe 3% and 10%),
// beyond a tolerance that would still catch a wrong import. The f32 lines above compare the
// same mapping with llama.cpp at 1e-3; `values` proves the Q8_0 decoding exact (kept as MLX
// affine 8-bit or dequantized). Gemma 4's tiny GGUFs llama.cpp does not load (see above).
gguf_tests!(gpt_oss_q8_0, "gpt_oss", "q8_0", [values]);
gguf_tests!(ministral3_q8_0, "ministral3", "q8_0", [values]);
gguf_tests!(qwen3_5_q8_0, "qwen3_5", "q8_0", [values]);
gguf_tests!(qwen3_5_moe_q8_0, "qwen3_5_moe", "q8_0", [values]);
gguf_tests!(gemma4_text_q8_0, "gemma4_text", "q8_0", [values]);
gguf_tests!(gemma4_q8_0, "gemma4", "q8_0", [values]);
