//! Which documents are chat templates, which model a template belongs to (so the tokenizer
//! checks and the probe can run on it), and rmlx.toml's own diagnostics. The rules are
//! those of `cargo rmlx lint` ([`crate::lint::targets`]): a template file next to a
//! `tokenizer.json` belongs to that model directory; rmlx.toml ties a declared model's
//! `chat-template` override, and the templates of its built output and source directories,
//! to the model's built directory (else its source directory).

use std::path::{Path, PathBuf};

use crate::build;
use crate::diagnostic::Diagnostic;
use crate::lint::{self, LintTarget, TemplateRef};
use crate::manifest::{Manifest, ProbeDecl, FILE_NAME};
use crate::probe::ProbeOptions;

use super::same_path;

/// What an editor document is to rmlx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentKind {
    /// A chat template.
    Template,
    /// rmlx.toml.
    Manifest,
    /// Anything else (not served).
    Other,
}

/// A model a template belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLink {
    /// The model directory (tokenizer, weights).
    pub dir: PathBuf,
    /// Its name: the rmlx.toml name, else the directory's name.
    pub name: String,
    /// The `[models.<name>.probe]` settings, when rmlx.toml declares the model.
    pub probe: ProbeDecl,
}

impl ModelLink {
    /// Probe options for this model (seed, expectation and steps from rmlx.toml, else the
    /// probe's defaults).
    pub fn probe_options(&self) -> ProbeOptions<'static> {
        ProbeOptions::from_decl(&self.name, Some(&self.probe))
    }
}

/// The nearest rmlx.toml in `dir` or above it.
pub fn find_manifest(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
}

/// Classifies a document. A template is `chat_template.jinja`, a `*.jinja` file rmlx.toml
/// ties to a model, a `*.jinja` file inside a model directory, or (with `all_jinja`) any
/// `*.jinja` file.
pub fn classify(path: &Path, manifest: Option<&Manifest>, all_jinja: bool) -> DocumentKind {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == FILE_NAME {
        return DocumentKind::Manifest;
    }
    if !name.ends_with(".jinja") {
        return DocumentKind::Other;
    }
    if name == "chat_template.jinja"
        || all_jinja
        || manifest.is_some_and(|m| manifest_target(path, m).is_some())
        || path.parent().is_some_and(|d| {
            lint::targets::is_model_dir(d) || d.ends_with("additional_chat_templates")
        })
    {
        DocumentKind::Template
    } else {
        DocumentKind::Other
    }
}

/// The rmlx.toml target (and declared model) whose template is `path`.
fn manifest_target<'m>(
    path: &Path,
    m: &'m Manifest,
) -> Option<(LintTarget, &'m crate::manifest::ModelDecl)> {
    for decl in &m.models {
        let model_dir = m.tokenizer_dir(decl);
        let declared = decl
            .chat_template
            .as_ref()
            .is_some_and(|(t, _)| same_path(t, path));
        let inside = path.parent().is_some_and(|p| {
            m.model_places(decl).iter().any(|d| {
                d.is_dir()
                    && (same_path(p, d) || same_path(p, &d.join("additional_chat_templates")))
            })
        });
        if declared || inside {
            return Some((
                LintTarget {
                    template: TemplateRef::File(path.to_path_buf()),
                    model: model_dir,
                },
                decl,
            ));
        }
    }
    None
}

/// The model a template belongs to: rmlx.toml's declaration first, else the model
/// directory the file sits in (or whose `additional_chat_templates/` it sits in).
pub fn model_for(path: &Path, manifest: Option<&Manifest>) -> Option<ModelLink> {
    if let Some((target, decl)) = manifest.and_then(|m| manifest_target(path, m)) {
        if let Some(dir) = target.model {
            return Some(ModelLink {
                dir,
                name: decl.name.clone(),
                probe: decl.probe.clone(),
            });
        }
    }
    let parent = path.parent()?;
    let dir = if parent.ends_with("additional_chat_templates") {
        parent.parent()?
    } else {
        parent
    };
    LintTarget::file(dir.join("chat_template.jinja"), None)
        .model
        .map(|dir| ModelLink {
            name: dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            dir,
            probe: ProbeDecl::default(),
        })
}

/// rmlx.toml's diagnostics for the editor text `text` of the file at `path`: the parse
/// (syntax, unknown keys, types, values), then for each declared model the checks
/// `cargo rmlx build` makes before writing anything (the source exists and is a model
/// directory or GGUF file, the chat-template override exists). Returns the parsed
/// manifest too when it parses.
pub fn manifest_diagnostics(
    path: &Path,
    text: &str,
    target_dir: PathBuf,
) -> (Option<Manifest>, Vec<Diagnostic>) {
    match Manifest::parse(path, text, target_dir) {
        Err(d) => (None, vec![d]),
        Ok(m) => {
            let diags = m
                .models
                .iter()
                .filter_map(|decl| build::resolve_source(&m, decl).err())
                .collect();
            (Some(m), diags)
        }
    }
}
