//! `cargo rmlx build [MODEL…] [--force]`: build the models declared in rmlx.toml into
//! `target/rmlx/<name>/`.

use std::time::Instant;

use clap::Args;

use super::output::{report, status};
use super::{exit, GlobalArgs};
use crate::build::{build, BuildOptions, Event};
use crate::diagnostic::Result;
use crate::manifest::Manifest;

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Models to build (names from rmlx.toml; default: all).
    pub models: Vec<String>,
    /// Rebuild even when up to date.
    #[arg(long)]
    pub force: bool,
}

/// Runs `build`.
pub fn run(g: &GlobalArgs, a: BuildArgs) -> Result<u8> {
    let started = Instant::now();
    let manifest = Manifest::find_required(g.manifest_path.as_deref())?;
    if manifest.models.is_empty() && !g.quiet {
        report(
            &crate::Diagnostic::warning(
                "rmlx::manifest::no-models",
                format!("{} declares no models", manifest.path.display()),
            )
            .with_file(&manifest.path)
            .with_help("add a [models.<name>] table with a `source`"),
        );
    }
    let opts = BuildOptions {
        force: a.force,
        ..BuildOptions::default()
    };
    let quiet = g.quiet;
    let mut on = |e: Event<'_>| print_event(quiet, e);
    build(&manifest, &a.models, &opts, &mut on)?;
    if !g.quiet {
        status(
            "Finished",
            &format!("in {:.2}s", started.elapsed().as_secs_f64()),
        );
    }
    Ok(exit::OK)
}

/// Prints one build event the cargo way (shared by `build` and the commands that build stale
/// models first, like `probe`).
pub fn print_event(quiet: bool, e: Event<'_>) {
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
