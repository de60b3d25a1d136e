//! Throughput measurements of the engine — prefill tok/s at given prompt lengths, decode
//! tok/s, time to first token, peak RSS — and the side-by-side comparison with the Python
//! reference (mlx-lm), which runs the same model directory on the same prompt ids in the same
//! invocation, interleaved with our runs. Only ratios are meaningful on a shared machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, Result};
use crate::engine::{generate, GenerateOptions};
use crate::session::Session;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Who ran it (`rmlx`, `mlx-lm (float32)`, …).
    pub runner: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prefill throughput (prompt tokens / time to first token).
    pub prefill_tps: f64,
    /// Time to first token, seconds.
    pub ttft_s: f64,
    /// Tokens generated.
    pub decode_tokens: usize,
    /// Decode throughput (tokens after the first / their time).
    pub decode_tps: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Prompt ids of exactly `n` tokens, made by repeating a fixed English passage.
pub fn synthetic_prompt(session: &Session, n: usize) -> Result<Vec<u32>> {
    const PASSAGE: &str = "The river winds through the valley, past fields of wheat and old \
        stone farmhouses. In the spring the water rises and the children of the village gather \
        on the bridge to watch the boats go by, counting them one by one until the sun sets. ";
    let ids = session.tokenizer.encode(PASSAGE, false)?;
    if ids.is_empty() {
        return Err(Diagnostic::error(
            "rmlx::bench::prompt",
            "the tokenizer encodes the benchmark passage to nothing",
        ));
    }
    Ok(ids.iter().copied().cycle().take(n).collect())
}

/// Peak resident set size of this process in MiB (VmHWM), where the OS reports it.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs our engine: prefill `prompt`, then `decode` greedy tokens ignoring EOS.
pub fn measure_rmlx(session: &Session, prompt: &[u32], decode: usize) -> Result<Measurement> {
    let opts = GenerateOptions {
        max_tokens: decode.max(1),
        ignore_eos: true,
        eos_ids: session.eos_ids(),
        top: 1,
        ..GenerateOptions::default()
    };
    let out = generate(&session.model, prompt, &opts, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let ttft = out.prefill.as_secs_f64();
    let n = out.steps.len();
    Ok(Measurement {
        runner: "rmlx".into(),
        prompt_tokens: prompt.len(),
        prefill_tps: prompt.len() as f64 / ttft.max(1e-9),
        ttft_s: ttft,
        decode_tokens: n,
        decode_tps: n.saturating_sub(1) as f64 / out.decode.as_secs_f64().max(1e-9),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// How to reach the Python reference.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The venv's python.
    pub python: PathBuf,
    /// `scripts/bench_mlx_lm.py`.
    pub script: PathBuf,
}

/// Runs mlx-lm on the same model and prompt ids, in a child process (its own peak RSS).
/// `dtype` is `model` (the weights' own dtype) or `float32` (all float parameters cast).
pub fn measure_mlx_lm(
    reference: &Reference,
    model_dir: &Path,
    prompt: &[u32],
    decode: usize,
    dtype: &str,
) -> Result<Measurement> {
    let ids = serde_json::to_string(prompt).expect("ids serialize");
    let out = Command::new(&reference.python)
        .arg(&reference.script)
        .arg(model_dir)
        .args(["--prompt-ids", &ids, "--max-tokens", &decode.to_string()])
        .args(["--dtype", dtype])
        .output()
        .map_err(|e| {
            Diagnostic::error(
                "rmlx::bench::reference",
                format!("cannot run {}: {e}", reference.python.display()),
            )
            .with_help("create the reference venv with scripts/oracle-venv.sh")
        })?;
    if !out.status.success() {
        return Err(Diagnostic::error(
            "rmlx::bench::reference",
            format!(
                "mlx-lm failed on {}: {}",
                model_dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let mut m: Measurement = serde_json::from_str::<MlxLmResult>(line)
        .map_err(|e| {
            Diagnostic::error(
                "rmlx::bench::reference",
                format!("unexpected output from the mlx-lm bench script: {e}: {line}"),
            )
        })?
        .into();
    m.runner = format!("mlx-lm ({dtype})");
    Ok(m)
}

#[derive(serde::Deserialize)]
struct MlxLmResult {
    prompt_tokens: usize,
    ttft_s: f64,
    decode_tokens: usize,
    decode_s: f64,
    peak_rss_mib: f64,
}

impl From<MlxLmResult> for Measurement {
    fn from(r: MlxLmResult) -> Self {
        Measurement {
            runner: String::new(),
            prompt_tokens: r.prompt_tokens,
            prefill_tps: r.prompt_tokens as f64 / r.ttft_s.max(1e-9),
            ttft_s: r.ttft_s,
            decode_tokens: r.decode_tokens,
            decode_tps: r.decode_tokens.saturating_sub(1) as f64 / r.decode_s.max(1e-9),
            peak_rss_mib: r.peak_rss_mib,
        }
    }
}

/// Median of each numeric column over repeated runs of one runner and prompt length.
pub fn median(runs: &[Measurement]) -> Option<Measurement> {
    let first = runs.first()?.clone();
    let med = |f: &dyn Fn(&Measurement) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Some(Measurement {
        prefill_tps: med(&|m| m.prefill_tps),
        ttft_s: med(&|m| m.ttft_s),
        decode_tps: med(&|m| m.decode_tps),
        peak_rss_mib: runs.iter().map(|m| m.peak_rss_mib).fold(0.0, f64::max),
        ..first
    })
}
