//! `cargo rmlx render --template <FILE> --context <JSON FILE>`: render a chat template with
//! a JSON context through the project's one render path ([`crate::template`]), printing the
//! result to stdout byte-exact with nothing appended.
//!
//! Hidden, for conformance tests and benchmarks: `--batch CASES.jsonl` renders many cases in
//! one process (each input line `{"id": …, "template": "<path>", "context": {…}}`, each
//! output line `{"id": …, "ok": true, "output": …}` or `{"id": …, "ok": false, "code": …,
//! "message": …}`), through exactly the same read/compile/render functions as the single
//! case; `--bench N` additionally times N render passes over all cases.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::{exit, GlobalArgs};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::template::{self, ChatTemplate, TemplateOptions, TemplateOrigin};

/// Arguments of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The chat template file.
    #[arg(long, value_name = "FILE", required_unless_present = "batch")]
    pub template: Option<PathBuf>,
    /// A JSON object whose keys are the template variables (`messages`, `tools`,
    /// `add_generation_prompt`, `bos_token`, …); `-` reads standard input.
    #[arg(long, value_name = "JSON FILE", required_unless_present = "batch")]
    pub context: Option<PathBuf>,
    /// Fixed clock for `strftime_now`, as Unix seconds (UTC). Default: the current time.
    #[arg(long, value_name = "UNIX_SECONDS", allow_negative_numbers = true)]
    pub now: Option<i64>,
    /// Render the cases of a JSON-lines file (conformance tests).
    #[arg(long, value_name = "CASES", hide = true, conflicts_with_all = ["template", "context"])]
    pub batch: Option<PathBuf>,
    /// With --batch: time N render passes over all cases; prints a JSON line to stderr.
    #[arg(long, value_name = "N", hide = true, requires = "batch")]
    pub bench: Option<usize>,
}

/// Runs `render`.
pub fn run(_g: &GlobalArgs, a: RenderArgs) -> Result<u8> {
    let opts = TemplateOptions {
        now: a.now,
        ..TemplateOptions::default()
    };
    if let Some(cases) = &a.batch {
        return batch(cases, &opts, a.bench);
    }
    let (Some(template_path), Some(context_path)) = (&a.template, &a.context) else {
        return Err(Diagnostic::error(
            code::Cli::Usage,
            "render needs --template and --context",
        ));
    };
    let vars = read_context(context_path)?;
    let template = compile(template_path, &opts)?;
    let out = template.render_json(&vars)?;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
    {
        tracing::debug!("stdout closed: {e}");
    }
    Ok(exit::OK)
}

/// Reads and compiles a template file (clear errors for unreadable or non-UTF-8 files,
/// located syntax errors).
fn compile(path: &Path, opts: &TemplateOptions) -> Result<ChatTemplate> {
    let text = template::read_template_file(path)?;
    ChatTemplate::with_options(
        text,
        TemplateOrigin::File {
            path: path.to_path_buf(),
        },
        opts,
    )
}

/// Reads the context file (`-`: stdin) as JSON; a parse error points at its line and
/// column. Whether it is an object is checked by the render itself.
fn read_context(path: &Path) -> Result<serde_json::Value> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            Diagnostic::error(
                template::CODE_CONTEXT,
                format!("cannot read the context from stdin: {e}"),
            )
        })?;
        s
    } else {
        let bytes = std::fs::read(path)
            .map_err(|e| Diagnostic::io(template::CODE_CONTEXT, "cannot read context", path, &e))?;
        String::from_utf8(bytes).map_err(|e| {
            Diagnostic::error(
                template::CODE_CONTEXT,
                format!(
                    "context {} is not UTF-8 (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                ),
            )
            .with_file(path)
        })?
    };
    let vars: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        let offset = crate::diagnostic::offset_at(&text, e.line(), e.column());
        let end = text[offset..]
            .chars()
            .next()
            .map_or(offset, |c| offset + c.len_utf8());
        Diagnostic::error(
            template::CODE_CONTEXT,
            format!("context {} is not valid JSON: {e}", path.display()),
        )
        .with_file(path)
        .with_source(text.as_str())
        .with_span(offset..end, "here")
        .with_help("the context is one JSON object whose keys are the template variables")
    })?;
    if !vars.is_object() {
        let kind = template::json_kind(&vars);
        return Err(Diagnostic::error(
            template::CODE_CONTEXT,
            format!(
                "the render context must be a JSON object, but {} holds {kind}",
                path.display()
            ),
        )
        .with_file(path)
        .with_help(
            "give an object whose keys are the template variables, e.g. {\"messages\": [...], \
             \"add_generation_prompt\": true, \"bos_token\": \"<s>\"}",
        ));
    }
    Ok(vars)
}

#[derive(serde::Deserialize)]
struct Case {
    id: serde_json::Value,
    template: PathBuf,
    context: serde_json::Value,
}

/// `--batch`: one result line per case, in input order.
fn batch(cases_path: &Path, opts: &TemplateOptions, bench: Option<usize>) -> Result<u8> {
    let file = std::fs::File::open(cases_path)
        .map_err(|e| Diagnostic::io(code::Cli::Usage, "cannot read cases", cases_path, &e))?;
    let mut cases = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line
            .map_err(|e| Diagnostic::io(code::Cli::Usage, "cannot read cases", cases_path, &e))?;
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(&line).map_err(|e| {
            Diagnostic::error(
                code::Cli::Usage,
                format!("{}:{}: bad case: {e}", cases_path.display(), n + 1),
            )
        })?;
        cases.push(case);
    }
    let t0 = Instant::now();
    let mut compiled: HashMap<PathBuf, Result<ChatTemplate>> = HashMap::new();
    for c in &cases {
        compiled
            .entry(c.template.clone())
            .or_insert_with(|| compile(&c.template, opts));
    }
    let compile_s = t0.elapsed().as_secs_f64();
    let render = |c: &Case| -> Result<String> {
        match &compiled[&c.template] {
            Ok(t) => t.render_json(&c.context),
            Err(d) => Err(d.clone()),
        }
    };
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for c in &cases {
        let line = match render(c) {
            Ok(out) => json!({"id": c.id, "ok": true, "output": out}),
            Err(d) => json!({"id": c.id, "ok": false, "code": d.code, "message": d.message}),
        };
        writeln!(stdout, "{line}")
            .map_err(|e| Diagnostic::error(code::Cli::Io, format!("cannot write results: {e}")))?;
    }
    stdout
        .flush()
        .map_err(|e| Diagnostic::error(code::Cli::Io, format!("cannot write results: {e}")))?;
    if let Some(passes) = bench {
        let passes = passes.max(1);
        let t1 = Instant::now();
        for _ in 0..passes {
            for c in &cases {
                let _ = std::hint::black_box(render(c));
            }
        }
        let render_s = t1.elapsed().as_secs_f64() / passes as f64;
        let line = json!({
            "engine": "rmlx",
            "templates": compiled.len(),
            "cases": cases.len(),
            "compile_s": compile_s,
            "render_pass_s": render_s,
            "renders_per_s": cases.len() as f64 / render_s.max(1e-9),
        });
        eprintln!("{line}");
    }
    Ok(exit::OK)
}
