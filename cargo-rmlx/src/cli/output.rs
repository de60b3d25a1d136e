//! Terminal output of the CLI: tracing subscriber (from `-v/-q` and `RUST_LOG`), color the
//! way cargo decides it (`--color`, `CARGO_TERM_COLOR`, `NO_COLOR`, `CLICOLOR_FORCE`,
//! `CLICOLOR`), the miette report handler, cargo-style status lines, the JSON messages of
//! `--message-format json` (one object per line with a `reason`), and the model-loading
//! progress bar.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use owo_colors::OwoColorize;
use serde_json::{json, Map, Value};
use tracing_subscriber::EnvFilter;

use super::{ColorChoice, GlobalArgs};
use crate::diagnostic::{Diagnostic, Result};
use crate::engine::DtypePolicy;
use crate::progress::ByteSink;
use crate::session::Session;

static COLOR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether stderr output is colored.
pub fn color() -> bool {
    *COLOR.get().unwrap_or(&false)
}

/// Whether to color, as cargo decides: `--color always|never` (or `CARGO_TERM_COLOR`) wins;
/// under `auto`, a non-empty `NO_COLOR` turns color off, then `CLICOLOR_FORCE` (not `0`)
/// turns it on, `CLICOLOR=0` off, and otherwise stderr must be a terminal (not `TERM=dumb`).
pub fn decide_color(choice: ColorChoice, env: impl Fn(&str) -> Option<String>, tty: bool) -> bool {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto if set("NO_COLOR").is_some() => false,
        ColorChoice::Auto if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") => true,
        ColorChoice::Auto if set("CLICOLOR").is_some_and(|v| v == "0") => false,
        ColorChoice::Auto => tty && env("TERM").is_none_or(|t| t != "dumb"),
    }
}

/// Sets up logging, color, progress bars and error reporting once per process. `machine`:
/// the command prints JSON messages (no progress bars then).
pub fn init(g: &GlobalArgs, machine: bool) {
    let color = decide_color(
        g.color,
        |name| std::env::var(name).ok(),
        std::io::stderr().is_terminal(),
    );
    let _ = COLOR.set(color);
    crate::progress::set_allowed(!g.quiet && !machine);
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
        // A wrapped error (an MLX exception) is already in the message; its `source` is for
        // programs, not printed a second time.
        let mut opts = miette::MietteHandlerOpts::new()
            .color(color)
            .unicode(color)
            .terminal_links(false)
            .without_cause_chain();
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

/// `value` (an object) with `reason` as its first field; anything else under `data`.
pub fn with_reason(reason: &str, value: Value) -> Value {
    let mut out = Map::new();
    out.insert("reason".into(), json!(reason));
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                if k != "reason" {
                    out.insert(k, v);
                }
            }
        }
        other => {
            out.insert("data".into(), other);
        }
    }
    Value::Object(out)
}

/// Prints one JSON message on stdout: `value`'s fields after `"reason": reason`, one line.
pub fn message(reason: &str, value: &impl serde::Serialize) {
    let value = match serde_json::to_value(value) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot serialize a {reason} message: {e}");
            json!({ "error": e.to_string() })
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", with_reason(reason, value));
    let _ = out.flush();
}

/// A diagnostic as a JSON message's fields: the [`Diagnostic`] fields plus the 1-based
/// `line`/`column` of the span start when there is a source.
pub fn diagnostic_fields(d: &Diagnostic) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        if let Some((line, column)) = d.span.as_ref().and_then(|s| d.line_col(s.start)) {
            obj.insert("line".into(), json!(line));
            obj.insert("column".into(), json!(column));
        }
    }
    v
}

/// Prints `{"reason": "diagnostic", …}` on stdout.
pub fn diagnostic_message(d: &Diagnostic) {
    message("diagnostic", &diagnostic_fields(d));
}

/// How long a model load runs before its progress bar appears.
const LOAD_BAR_DELAY: Duration = Duration::from_secs(1);

/// [`Session::load`] with a progress bar of the weight bytes read, shown once the load has
/// taken [`LOAD_BAR_DELAY`] (and only where bars are allowed and stderr is a terminal).
pub fn load_session(dir: &Path, policy: DtypePolicy) -> Result<Session> {
    if !crate::progress::visible() {
        return Session::load(dir, policy);
    }
    let bar = Arc::new(LoadBar::new(dir));
    let result = crate::progress::with_sink(bar.clone(), || Session::load(dir, policy));
    bar.bar.finish_and_clear();
    result
}

/// The byte bar of one model load: hidden until [`LOAD_BAR_DELAY`] has passed.
struct LoadBar {
    bar: ProgressBar,
    started: Instant,
    shown: std::sync::atomic::AtomicBool,
}

impl LoadBar {
    fn new(dir: &Path) -> Self {
        let bar =
            ProgressBar::with_draw_target(Some(weight_bytes(dir)), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let name = dir.file_name().unwrap_or(dir.as_os_str());
        bar.set_message(format!("loading {}", name.to_string_lossy()));
        Self {
            bar,
            started: Instant::now(),
            shown: false.into(),
        }
    }
}

impl ByteSink for LoadBar {
    fn add(&self, bytes: u64) {
        self.bar.inc(bytes);
        use std::sync::atomic::Ordering;
        if self.started.elapsed() >= LOAD_BAR_DELAY && !self.shown.swap(true, Ordering::Relaxed) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}

/// The size of a model directory's safetensors files: what loading it reads, give or take
/// the headers.
pub fn weight_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn color_follows_cargo_rules() {
        use ColorChoice::*;
        /// `--color`, environment, stderr a terminal, expected.
        type Case<'a> = (ColorChoice, &'a [(&'a str, &'a str)], bool, bool);
        let cases: &[Case<'_>] = &[
            (Auto, &[], true, true),
            (Auto, &[], false, false),
            (Auto, &[("NO_COLOR", "1")], true, false),
            (Auto, &[("NO_COLOR", "")], true, true),
            (Auto, &[("CLICOLOR_FORCE", "1")], false, true),
            (Auto, &[("CLICOLOR_FORCE", "0")], false, false),
            (
                Auto,
                &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")],
                false,
                false,
            ),
            (Auto, &[("CLICOLOR", "0")], true, false),
            (Auto, &[("TERM", "dumb")], true, false),
            (Always, &[("NO_COLOR", "1")], false, true),
            (Never, &[("CLICOLOR_FORCE", "1")], true, false),
        ];
        for (choice, vars, tty, want) in cases {
            assert_eq!(
                decide_color(*choice, env(vars), *tty),
                *want,
                "{choice:?} {vars:?} tty={tty}"
            );
        }
    }

    #[test]
    fn reason_comes_first_and_replaces_a_stale_one() {
        let v = with_reason(
            "probe-verdict",
            json!({"model": "m", "reason": "old", "verdict": "ok"}),
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["reason", "model", "verdict"]);
        assert_eq!(v["reason"], "probe-verdict");
        assert_eq!(with_reason("x", json!(3))["data"], 3);
    }
}
