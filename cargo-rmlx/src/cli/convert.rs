//! `cargo rmlx convert <FILE.gguf> --out <DIR>`: import a GGUF file into an MLX-format model
//! directory (the same import `cargo rmlx build` uses for `.gguf` sources).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::output::status;
use super::{exit, GlobalArgs, MessageFormat};
use crate::diagnostic::Result;
use crate::gguf::{import_to, Dtype, Existing, ImportOptions};

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
    #[arg(long, value_parser = super::generate::dtype_parser(), default_value = "bf16")]
    pub dtype: Dtype,
    /// Replace an existing output (directory or file) once the conversion succeeded; the
    /// input GGUF is never replaced.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// Runs `convert`.
pub fn run(g: &GlobalArgs, a: ConvertArgs) -> Result<u8> {
    let started = Instant::now();
    let human = a.message_format == MessageFormat::Human;
    if human && !g.quiet {
        status("Converting", &a.gguf.display().to_string());
    }
    let opts = ImportOptions {
        keep_quantized: a.keep_quantized,
        dtype: a.dtype,
    };
    let existing = if a.force {
        Existing::Replace
    } else {
        Existing::Refuse
    };
    let report = import_to(&a.gguf, &a.out, &opts, existing)?;
    let kept = report.quantized.len();
    if !human {
        super::output::message(
            "convert-finished",
            &serde_json::json!({
                "success": true,
                "gguf": a.gguf,
                "out": a.out,
                "architecture": report.architecture.name,
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
                "{} ({}, {kept} tensors kept quantized, {} dense) in {:.1}s",
                a.out.display(),
                report.architecture,
                report.tensors.len() - kept,
                started.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(exit::OK)
}
