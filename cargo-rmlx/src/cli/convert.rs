//! `cargo rmlx convert <FILE.gguf> --out <DIR>`: import a GGUF file into an MLX-format model
//! directory (the same import `cargo rmlx build` uses for `.gguf` sources).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::output::status;
use super::{exit, GlobalArgs, MessageFormat};
use crate::diagnostic::{Diagnostic, Result};
use crate::gguf::{import, Dtype as OutDtype, ImportOptions, TensorAction};

/// Arguments of `convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The GGUF file.
    pub gguf: PathBuf,
    /// Output model directory.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Keep Q4_0/Q4_1/Q8_0 tensors quantized (exact MLX affine, groups of 32).
    #[arg(long)]
    pub keep_quantized: bool,
    /// Dtype of dense tensors.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: OutDtypeArg,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutDtypeArg {
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
    /// float32.
    F32,
}

/// Runs `convert`.
pub fn run(g: &GlobalArgs, a: ConvertArgs) -> Result<u8> {
    let non_empty = a
        .out
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !a.force {
        return Err(Diagnostic::error(
            "rmlx::cli::output-exists",
            format!("{} exists and is not empty", a.out.display()),
        )
        .with_help("pass --force to replace it"));
    }
    let started = Instant::now();
    let human = a.message_format == MessageFormat::Human;
    if human && !g.quiet {
        status("Converting", &a.gguf.display().to_string());
    }
    let opts = ImportOptions {
        keep_quantized: a.keep_quantized,
        dtype: match a.dtype {
            OutDtypeArg::Bf16 => OutDtype::Bf16,
            OutDtypeArg::F16 => OutDtype::F16,
            OutDtypeArg::F32 => OutDtype::F32,
        },
    };
    if non_empty {
        std::fs::remove_dir_all(&a.out)
            .map_err(|e| Diagnostic::io("rmlx::cli::io", "cannot remove", &a.out, &e))?;
    }
    let report = import(&a.gguf, &a.out, &opts)?;
    let kept = report
        .tensors
        .iter()
        .filter(|t| matches!(t.action, TensorAction::KeptQuantized { .. }))
        .count();
    if !human {
        super::output::message(
            "convert-finished",
            &serde_json::json!({
                "success": true,
                "gguf": a.gguf,
                "out": a.out,
                "architecture": format!("{:?}", report.architecture),
                "kept_quantized": kept,
                "dense": report.tensors.len() - kept,
                "skipped": report.skipped.len(),
                "files": report.files,
                "elapsed_s": started.elapsed().as_secs_f64(),
            }),
        );
    } else if !g.quiet {
        status(
            "Finished",
            &format!(
                "{} ({:?}, {kept} tensors kept quantized, {} dense) in {:.1}s",
                a.out.display(),
                report.architecture,
                report.tensors.len() - kept,
                started.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(exit::OK)
}
