//! Terminal output of the CLI: tracing subscriber (from `-v/-q` and `RUST_LOG`), the miette
//! report handler honouring `--color`, cargo-style status lines.

use std::io::{IsTerminal, Write};

use owo_colors::OwoColorize;
use tracing_subscriber::EnvFilter;

use super::{ColorChoice, GlobalArgs};
use crate::diagnostic::Diagnostic;

static COLOR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether stderr output is colored.
pub fn color() -> bool {
    *COLOR.get().unwrap_or(&false)
}

/// Sets up logging and error reporting once per process.
pub fn init(g: &GlobalArgs) {
    let color = match g.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stderr().is_terminal(),
    };
    let _ = COLOR.set(color);
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .try_init();
    // On a terminal miette wraps at its width; into a pipe or a log file a wrapped line
    // would split paths and messages that people grep for, so nothing is wrapped there.
    let on_terminal = std::io::stderr().is_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        let mut opts = miette::MietteHandlerOpts::new()
            .color(color)
            .unicode(color)
            .terminal_links(false);
        if !on_terminal {
            opts = opts.width(10_000).break_words(false);
        }
        Box::new(opts.build())
    }));
}

/// Prints a diagnostic to stderr as a miette report.
pub fn report(d: &Diagnostic) {
    let report = miette::Report::new(d.clone());
    let _ = writeln!(std::io::stderr(), "{report:?}");
}

/// A cargo-style status line on stderr: `   Verb message`.
pub fn status(verb: &str, message: &str) {
    let mut err = std::io::stderr();
    if color() {
        let _ = writeln!(err, "{:>12} {message}", verb.green().bold());
    } else {
        let _ = writeln!(err, "{verb:>12} {message}");
    }
}
