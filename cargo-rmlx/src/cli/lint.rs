//! `cargo rmlx lint [FILE…] [--model DIR] [--message-format json]`: lint chat templates with
//! the library's lint engine ([`crate::lint`]) and report the diagnostics with miette (or as
//! JSON lines). Exit 0 when there are no errors (warnings and advice allowed), 1 when any
//! template has an error, 2 on a usage error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::{exit, output, GlobalArgs, MessageFormat};
use crate::diagnostic::{code, Diagnostic, Result, Severity};
use crate::lint::{self, LintOptions, LintReport, LintTarget};
use crate::manifest::Manifest;

/// Exit code when a template has an error.
const EXIT_LINT_ERRORS: u8 = 1;

/// Arguments of `lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// Template files, model directories, or directories of `*.jinja` templates. Default:
    /// the templates of the models in rmlx.toml, else every `chat_template.jinja` under the
    /// current directory.
    #[arg(value_name = "FILE")]
    pub paths: Vec<PathBuf>,
    /// Model directory whose tokenizer the token-level checks use (default: the template's
    /// own directory when it holds a tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
    /// Time N lint runs of each template (no output but the timings).
    #[arg(long, value_name = "N", hide = true)]
    pub bench: Option<usize>,
}

/// Runs `lint`.
pub fn run(g: &GlobalArgs, a: LintArgs) -> Result<u8> {
    if let Some(m) = &a.model {
        if !m.is_dir() {
            return Err(Diagnostic::error(
                code::Lint::NoSuchPath,
                format!("--model {}: not a directory", m.display()),
            )
            .with_help("give a model directory (with tokenizer.json)"));
        }
    }
    let targets = targets(g, &a)?;
    let opts = LintOptions::default();
    if let Some(n) = a.bench {
        return bench(&targets, &opts, n.max(1));
    }
    let reports = lint::lint_targets(&targets, &opts);
    let count = |s: Severity| reports.iter().map(|r| r.count(s)).sum::<usize>();
    let (errors, warnings, advice) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Advice),
    );
    match a.message_format {
        MessageFormat::Human => {
            for r in &reports {
                for d in &r.diagnostics {
                    if g.quiet && d.severity == Severity::Advice {
                        continue;
                    }
                    output::report(d);
                }
            }
            if !g.quiet {
                if reports.is_empty() {
                    output::status(
                        "Finished",
                        "no chat templates to lint (none given, no chat_template.jinja found)",
                    );
                } else {
                    output::status(
                        "Linted",
                        &format!(
                            "{} template{}: {errors} error{}, {warnings} warning{}",
                            reports.len(),
                            plural(reports.len()),
                            plural(errors),
                            plural(warnings),
                        ),
                    );
                }
            }
        }
        MessageFormat::Json => {
            let mut out = std::io::stdout().lock();
            for r in &reports {
                for d in &r.diagnostics {
                    let _ = writeln!(out, "{}", diagnostic_json(r, d));
                }
                let _ = writeln!(out, "{}", r.summary_json());
            }
            let _ = writeln!(
                out,
                "{}",
                json!({
                    "reason": "lint-finished",
                    "templates": reports.len(),
                    "errors": errors,
                    "warnings": warnings,
                    "advice": advice,
                    "success": errors == 0,
                })
            );
        }
    }
    Ok(if errors > 0 {
        EXIT_LINT_ERRORS
    } else {
        exit::OK
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The targets: the given paths; else the templates of the models declared in rmlx.toml;
/// else every `chat_template.jinja` under the current directory.
fn targets(g: &GlobalArgs, a: &LintArgs) -> Result<Vec<LintTarget>> {
    if !a.paths.is_empty() {
        return lint::targets_from_paths(&a.paths, a.model.as_deref());
    }
    if let Some(m) = Manifest::find(g.manifest_path.as_deref())? {
        if !m.models.is_empty() {
            let mut targets = lint::manifest_targets(&m);
            if let Some(model) = &a.model {
                for t in &mut targets {
                    t.model = Some(model.clone());
                }
            }
            return Ok(targets);
        }
    }
    let cwd = std::env::current_dir().map_err(|e| {
        Diagnostic::error(
            code::Lint::NoSuchPath,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    Ok(lint::find_templates(&cwd)
        .into_iter()
        .map(|p| LintTarget::file(p, a.model.as_deref()))
        .collect())
}

/// One diagnostic as a JSON line: the [`Diagnostic`] fields plus the template, and the
/// 1-based line/column of the span start.
fn diagnostic_json(r: &LintReport, d: &Diagnostic) -> serde_json::Value {
    let mut v = output::diagnostic_fields(d);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("template".into(), json!(r.origin.to_string()));
    }
    output::with_reason("lint-diagnostic", v)
}

/// `--bench N`: lints each target N times (after 5 warm-up runs); prints per template the
/// minimum, first quartile, median and maximum wall time in milliseconds. On a machine
/// shared with other work the minimum and first quartile show the undisturbed cost.
fn bench(targets: &[LintTarget], opts: &LintOptions, n: usize) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    for t in targets {
        for _ in 0..5 {
            let _ = lint::lint_targets(std::slice::from_ref(t), opts);
        }
        let mut wall = Vec::with_capacity(n);
        let mut diags = 0;
        for _ in 0..n {
            let t0 = Instant::now();
            let reports = lint::lint_targets(std::slice::from_ref(t), opts);
            wall.push(t0.elapsed().as_secs_f64() * 1e3);
            diags = reports.iter().map(|r| r.diagnostics.len()).sum();
        }
        wall.sort_by(f64::total_cmp);
        let line = json!({
            "target": match &t.template {
                lint::TemplateRef::File(p) | lint::TemplateRef::ModelDir(p) => p.display().to_string(),
            },
            "runs": n,
            "min_ms": wall[0],
            "p25_ms": wall[n / 4],
            "median_ms": wall[n / 2],
            "max_ms": wall[n - 1],
            "diagnostics": diags,
        });
        let _ = writeln!(out, "{line}");
    }
    Ok(exit::OK)
}
