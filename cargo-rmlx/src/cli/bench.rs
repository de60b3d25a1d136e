//! `cargo rmlx bench <MODEL> [--compare-mlx-lm]`: prefill/decode throughput, time to first
//! token and peak memory, side by side with mlx-lm in the same invocation.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::generate::DtypeArg;
use super::{exit, GlobalArgs, MessageFormat};
use crate::bench::{
    measure_mlx_lm, measure_rmlx, median, synthetic_prompt, Measurement, Reference,
};
use crate::diagnostic::{Diagnostic, Result};
use crate::manifest::resolve_model;
use crate::session::Session;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory.
    pub model: String,
    /// Prompt lengths to measure prefill at.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Compute dtype of our engine.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeArg,
    /// Also run mlx-lm (model dtype and float32-cast) on the same prompts, interleaved.
    #[arg(long)]
    pub compare_mlx_lm: bool,
    /// Python of the reference venv (default: target/oracle-venv/bin/python).
    #[arg(long, env = "RMLX_ORACLE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// Runs `bench`.
pub fn run(g: &GlobalArgs, a: BenchArgs) -> Result<u8> {
    let dir = resolve_model(&a.model, g.manifest_path.as_deref())?;
    let session = Session::load(&dir, a.dtype.into())?;
    let reference = if a.compare_mlx_lm {
        Some(reference(a.python.clone())?)
    } else {
        None
    };
    let mut rows: Vec<Measurement> = Vec::new();
    for &n in &a.prompt_tokens {
        let prompt = synthetic_prompt(&session, n)?;
        let mut ours = Vec::new();
        let mut theirs: Vec<(&str, Vec<Measurement>)> =
            vec![("model", vec![]), ("float32", vec![])];
        // Warm-up (first MLX run pays for kernel setup).
        measure_rmlx(&session, &prompt[..prompt.len().min(8)], 2)?;
        for _ in 0..a.repeat.max(1) {
            ours.push(measure_rmlx(&session, &prompt, a.decode_tokens)?);
            if let Some(r) = &reference {
                for (dtype, runs) in theirs.iter_mut() {
                    runs.push(measure_mlx_lm(r, &dir, &prompt, a.decode_tokens, dtype)?);
                }
            }
        }
        rows.extend(median(&ours));
        for (_, runs) in &theirs {
            rows.extend(median(runs));
        }
    }
    let mut out = std::io::stdout().lock();
    if a.message_format == MessageFormat::Json {
        for r in &rows {
            let _ = writeln!(out, "{}", serde_json::to_string(r).expect("serializable"));
        }
        return Ok(exit::OK);
    }
    let _ = writeln!(
        out,
        "{:<20} {:>7} {:>12} {:>9} {:>11} {:>10} {:>10} {:>10}",
        "runner",
        "prompt",
        "prefill t/s",
        "ttft s",
        "decode t/s",
        "peak MiB",
        "prefill ×",
        "decode ×"
    );
    for r in &rows {
        let ours = rows
            .iter()
            .find(|o| o.runner == "rmlx" && o.prompt_tokens == r.prompt_tokens)
            .expect("our row exists for each prompt length");
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let _ = writeln!(
            out,
            "{:<20} {:>7} {:>12.1} {:>9.3} {:>11.1} {:>10.0} {:>10} {:>10}",
            r.runner,
            r.prompt_tokens,
            r.prefill_tps,
            r.ttft_s,
            r.decode_tps,
            r.peak_rss_mib,
            if r.runner == "rmlx" {
                "-".to_string()
            } else {
                format!("{:.2}", ratio(ours.prefill_tps, r.prefill_tps))
            },
            if r.runner == "rmlx" {
                "-".to_string()
            } else {
                format!("{:.2}", ratio(ours.decode_tps, r.decode_tps))
            },
        );
    }
    if reference.is_some() {
        let _ = writeln!(
            out,
            "(× = rmlx throughput / that runner's throughput; >1 means rmlx is faster)"
        );
    }
    Ok(exit::OK)
}

fn reference(python: Option<PathBuf>) -> Result<Reference> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = python.unwrap_or_else(|| root.join("target/oracle-venv/bin/python"));
    let script = root.join("scripts/bench_mlx_lm.py");
    if !python.exists() {
        return Err(Diagnostic::error(
            "rmlx::bench::reference",
            format!("no reference python at {}", python.display()),
        )
        .with_help("run scripts/oracle-venv.sh (or pass --python)"));
    }
    Ok(Reference { python, script })
}
