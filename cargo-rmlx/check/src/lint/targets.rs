//! Which templates `cargo rmlx lint` checks, and with which tokenizer.
//!
//! A [`LintTarget`] is a template (a file, or the template(s) of a model directory) plus an
//! optional model directory whose tokenizer the tokenizer checks use. Targets come from:
//! - explicit paths ([`targets_from_paths`]): a file is linted as is; a model directory
//!   (one with `tokenizer.json`, `tokenizer_config.json` or `chat_template.json`) gives its
//!   default and named templates; any other directory gives every `*.jinja` under it;
//! - the default search ([`find_templates`]): every `chat_template.jinja` under a directory;
//! - rmlx.toml ([`manifest_targets`]): each declared model's `chat-template` override, else
//!   the templates of its built model directory (`target/rmlx/<name>/`), else of its source
//!   directory; the tokenizer comes from the built directory, else the source directory.
//!
//! A template file next to a `tokenizer.json` belongs to that model directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use super::{lint_source, LintOptions, LintReport, CODE_TOKENIZER};
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::manifest::Manifest;
use crate::template::{self, TemplateOrigin};
use crate::tokenize::Tokenizer;

/// Code of a path argument that does not exist.
pub const CODE_NO_SUCH_PATH: Code = Code::Lint(code::Lint::NoSuchPath);

/// Where a target's template text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRef {
    /// A template file.
    File(PathBuf),
    /// Every template a model directory declares (`chat_template.jinja`, the config's
    /// `chat_template` string or named list, `additional_chat_templates/`).
    ModelDir(PathBuf),
}

/// One thing to lint. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintTarget {
    /// The template(s).
    pub template: TemplateRef,
    /// The model directory whose tokenizer the tokenizer checks use (`None`: none run).
    pub model: Option<PathBuf>,
}

impl LintTarget {
    /// A template file; its model is `model`, else the file's directory when that holds a
    /// `tokenizer.json`.
    pub fn file(path: impl Into<PathBuf>, model: Option<&Path>) -> Self {
        let path = path.into();
        let model = model.map(Path::to_path_buf).or_else(|| {
            path.parent()
                .filter(|d| d.join("tokenizer.json").is_file())
                .map(Path::to_path_buf)
        });
        Self {
            template: TemplateRef::File(path),
            model,
        }
    }
}

/// Is `dir` a model directory (as opposed to a folder of templates)?
pub fn is_model_dir(dir: &Path) -> bool {
    [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// Targets for the paths given on the command line. A path that does not exist is an
/// `rmlx::lint::no-such-path` error (a usage error).
pub fn targets_from_paths(paths: &[PathBuf], model: Option<&Path>) -> Result<Vec<LintTarget>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_file() {
            out.push(LintTarget::file(p, model));
        } else if p.is_dir() {
            if is_model_dir(p) {
                out.push(LintTarget {
                    template: TemplateRef::ModelDir(p.clone()),
                    model: Some(model.map_or_else(|| p.clone(), Path::to_path_buf)),
                });
            } else {
                let files = walk(p, &|name| name.ends_with(".jinja"));
                debug!(dir = %p.display(), templates = files.len(), "templates under directory");
                out.extend(files.into_iter().map(|f| LintTarget::file(f, model)));
            }
        } else {
            return Err(Diagnostic::error(
                CODE_NO_SUCH_PATH,
                format!("no such file or directory: {}", p.display()),
            )
            .with_help(
                "give template files (chat_template.jinja), model directories, or directories \
                 of templates",
            ));
        }
    }
    Ok(out)
}

/// The templates of the models declared in rmlx.toml (see the module documentation). A
/// model that is neither built nor a directory source (a `.gguf` file not yet built) has no
/// template to read yet; it is skipped with a warning in the log.
pub fn manifest_targets(m: &Manifest) -> Vec<LintTarget> {
    let mut out = Vec::new();
    for decl in &m.models {
        let model_dir = m.tokenizer_dir(decl);
        if let Some((template, _)) = &decl.chat_template {
            out.push(LintTarget {
                template: TemplateRef::File(template.clone()),
                model: model_dir,
            });
        } else if let Some(dir) = m
            .model_places(decl)
            .into_iter()
            .find(|d| d.is_dir() && is_model_dir(d))
        {
            out.push(LintTarget {
                template: TemplateRef::ModelDir(dir),
                model: model_dir,
            });
        } else {
            warn!(
                model = %decl.name,
                source = %decl.source.display(),
                "model not built yet and its source is not a directory: its chat template cannot \
                 be linted until `cargo rmlx build` has run"
            );
        }
    }
    out
}

/// Every `chat_template.jinja` under `root`, sorted; hidden directories, `target/` and
/// `node_modules/` are skipped, symlinks are not followed.
pub fn find_templates(root: &Path) -> Vec<PathBuf> {
    walk(root, &|name| name == "chat_template.jinja")
}

fn walk(root: &Path, want: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            debug!(dir = %dir.display(), "cannot read directory; skipped");
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                if name.starts_with('.') || name == "target" || name == "node_modules" {
                    continue;
                }
                stack.push(e.path());
            } else if ft.is_file() && want(&name) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Lints every target (tokenizers are loaded once per model directory). Reports come in
/// target order; a model directory yields one report per template it declares.
pub fn lint_targets(targets: &[LintTarget], opts: &LintOptions) -> Vec<LintReport> {
    let mut tokenizers: HashMap<PathBuf, std::result::Result<Arc<Tokenizer>, Diagnostic>> =
        HashMap::new();
    let mut out = Vec::new();
    for target in targets {
        let tok = target.model.as_ref().map(|dir| {
            tokenizers
                .entry(dir.clone())
                .or_insert_with(|| Tokenizer::from_dir(dir).map(Arc::new))
                .clone()
        });
        let (tokenizer, tok_error) = match tok {
            Some(Ok(t)) => (Some(t), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let sources: Vec<(String, TemplateOrigin)> = match &target.template {
            TemplateRef::File(path) => {
                let origin = TemplateOrigin::File { path: path.clone() };
                match template::read_template_file(path) {
                    Ok(text) => vec![(text, origin)],
                    Err(d) => {
                        out.push(LintReport::failed(origin, d));
                        continue;
                    }
                }
            }
            TemplateRef::ModelDir(dir) => match template::discover_sources(dir) {
                Ok(found) => {
                    let mut v: Vec<(String, TemplateOrigin)> = Vec::new();
                    if let Some(d) = found.default {
                        v.push((d.text, d.origin));
                    }
                    v.extend(found.named.into_iter().map(|(_, s)| (s.text, s.origin)));
                    if v.is_empty() {
                        out.push(LintReport::failed(
                            TemplateOrigin::File { path: dir.clone() },
                            Diagnostic::warning(
                                template::CODE_MISSING,
                                format!("{} has no chat template", dir.display()),
                            )
                            .with_file(dir)
                            .with_help(
                                "a base model has none (rmlx then probes with a bare prompt); an \
                                 instruction-tuned model needs chat_template.jinja or \
                                 tokenizer_config.json's chat_template",
                            ),
                        ));
                    }
                    v
                }
                Err(d) => {
                    out.push(LintReport::failed(
                        TemplateOrigin::File { path: dir.clone() },
                        d,
                    ));
                    continue;
                }
            },
        };
        for (text, origin) in sources {
            let mut report = lint_source(&text, origin, tokenizer.as_deref(), opts);
            if let Some(e) = &tok_error {
                report.diagnostics.push(
                    Diagnostic::warning(
                        CODE_TOKENIZER,
                        format!("tokenizer checks skipped: {}", e.message),
                    )
                    .with_help(e.help.clone().unwrap_or_else(|| {
                        "the model directory needs a valid tokenizer.json".into()
                    })),
                );
            }
            out.push(report);
        }
    }
    out
}
