//! `cargo rmlx build [MODEL…] [--force] [--message-format json]`: build the models declared
//! in rmlx.toml into `target/rmlx/<name>/`.

use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::output::{diagnostic_message, message, report, status};
use super::{exit, GlobalArgs, MessageFormat};
use crate::build::{build, BuildOptions, Event};
use crate::diagnostic::{code, Result};
use crate::manifest::Manifest;

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Models to build (names from rmlx.toml; default: all).
    pub models: Vec<String>,
    /// Rebuild even when up to date.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// Runs `build`.
pub fn run(g: &GlobalArgs, a: BuildArgs) -> Result<u8> {
    let started = Instant::now();
    let json = a.message_format == MessageFormat::Json;
    let result = build_all(g, &a, json);
    let elapsed_s = started.elapsed().as_secs_f64();
    if !json {
        if result.is_ok() && !g.quiet {
            status("Finished", &format!("in {elapsed_s:.2}s"));
        }
        return result.map(|()| exit::OK);
    }
    // As cargo: the error's message first, then an unsuccessful `build-finished`.
    let code = match &result {
        Ok(()) => exit::OK,
        Err(d) => {
            diagnostic_message(d);
            report(d);
            super::exit_code(d)
        }
    };
    let success = result.is_ok();
    message(
        "build-finished",
        &json!({ "success": success, "elapsed_s": elapsed_s }),
    );
    Ok(code)
}

fn build_all(g: &GlobalArgs, a: &BuildArgs, json: bool) -> Result<()> {
    let manifest = Manifest::find_required(g.manifest_path.as_deref())?;
    if manifest.models.is_empty() {
        let d = crate::Diagnostic::warning(
            code::Manifest::NoModels,
            format!("{} declares no models", manifest.path.display()),
        )
        .with_file(&manifest.path)
        .with_help("add a [models.<name>] table with a `source`");
        on_event(g.quiet, json, Event::Diagnostic(d));
    }
    let opts = BuildOptions {
        force: a.force,
        progress: crate::progress::visible(),
        ..BuildOptions::default()
    };
    let quiet = g.quiet;
    build(&manifest, &a.models, &opts, &mut |e| {
        on_event(quiet, json, e)
    })?;
    Ok(())
}

/// Reports one build event: status lines the cargo way, or with `json` a `model-built` /
/// `diagnostic` message (shared by `build` and the commands that build stale models first,
/// like `probe`).
pub fn on_event(quiet: bool, json: bool, e: Event<'_>) {
    match e {
        Event::Fresh { name, dir } if json => {
            message(
                "model-built",
                &json!({ "name": name, "dir": dir, "fresh": true }),
            );
        }
        Event::Built(r) if json => message(
            "model-built",
            &json!({
                "name": r.name,
                "dir": r.out_dir,
                "fresh": r.fresh,
                "elapsed_s": r.elapsed.as_secs_f64(),
                "files": r.files,
                "quantized": r.quantized,
                "kept": r.kept,
                "requantized": r.requantized,
                "dequantized": r.dequantized,
                "bytes": r.bytes,
            }),
        ),
        Event::Diagnostic(d) if json => diagnostic_message(&d),
        _ if json => {}
        e => print_event(quiet, e),
    }
}

/// Prints one build event for people.
fn print_event(quiet: bool, e: Event<'_>) {
    match e {
        Event::Fresh { name, .. } if !quiet => status("Fresh", name),
        Event::Blocking { name } if !quiet => status(
            "Blocking",
            &format!("waiting for another build of {name} to finish"),
        ),
        Event::Building { name, what, reason } => {
            tracing::info!("building {name}: {reason}");
            if !quiet {
                status("Building", &format!("{name} ({what})"));
            }
        }
        Event::Diagnostic(d) if !quiet || d.is_error() => report(&d),
        Event::Built(r) => tracing::info!(
            "{}: {} quantized, {} kept, {} re-quantized, {} dequantized, {:.1} MiB in {:.1}s",
            r.name,
            r.quantized,
            r.kept,
            r.requantized,
            r.dequantized,
            r.bytes as f64 / (1 << 20) as f64,
            r.elapsed.as_secs_f64()
        ),
        _ => {}
    }
}
