//! Build fingerprints: when is `target/rmlx/<name>/` up to date?
//!
//! Policy (like cargo's for source files): a model is `Fresh` when
//! - the settings are unchanged: the resolved source path and kind, `quantize` (with every
//!   override), `dtype`, `chat-template`, the shard size, the cargo-rmlx version, the output
//!   format version and the MLX version;
//! - every source file the build reads (the GGUF file, or the source directory's config,
//!   weights, tokenizer and template files, and the chat-template override) has the same path,
//!   size and modification time (nanoseconds) as when the output was built, and no such file
//!   appeared or disappeared;
//! - every output file recorded in the fingerprint still exists with its recorded size.
//!
//! Only metadata is read (`stat`), never file contents, so a fresh check takes milliseconds.
//! Touching a source file therefore rebuilds its model even when the content did not change
//! (the safe direction); an edit that keeps both size and modification time is not noticed
//! (`--force` rebuilds regardless).
//!
//! The fingerprint lives in the output directory as `.rmlx-fingerprint.json`, written last
//! into the temporary directory before it is renamed into place, so it only ever describes a
//! complete output.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostic::{code, Diagnostic, Result};

/// File name of the fingerprint inside an output directory.
pub const FILE: &str = ".rmlx-fingerprint.json";

/// Bumped whenever the output layout or conversion changes in a way that invalidates
/// previous outputs.
pub const FORMAT: u32 = 1;

/// Size and modification time of one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

impl FileStamp {
    /// Stats `path`.
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Diagnostic::io(code::Build::Io, "cannot stat", path, &e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// An output file and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStamp {
    /// File name inside the output directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
}

/// Everything a build depended on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The settings (compared as a whole).
    pub settings: Value,
    /// Source files.
    pub sources: Vec<FileStamp>,
    /// Output files (filled in after the build).
    #[serde(default)]
    pub outputs: Vec<OutputStamp>,
}

/// Why a model is not fresh (for `-v` logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// No previous output (or no fingerprint in it).
    NoOutput,
    /// The fingerprint file could not be parsed.
    Unreadable,
    /// Settings differ.
    Settings,
    /// A source file changed, appeared or disappeared.
    Source(PathBuf),
    /// An output file is missing or has another size.
    Output(String),
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::NoOutput => write!(f, "not built yet"),
            Stale::Unreadable => write!(f, "the previous fingerprint is unreadable"),
            Stale::Settings => write!(f, "the build settings changed"),
            Stale::Source(p) => write!(f, "{} changed", p.display()),
            Stale::Output(n) => write!(f, "output file {n} is missing or changed"),
        }
    }
}

impl Fingerprint {
    /// Compares `self` (freshly computed, no outputs) with the fingerprint stored in
    /// `out_dir`. `Ok(())` means fresh.
    pub fn check(&self, out_dir: &Path) -> std::result::Result<(), Stale> {
        let text = match std::fs::read_to_string(out_dir.join(FILE)) {
            Ok(t) => t,
            Err(_) => return Err(Stale::NoOutput),
        };
        let old: Fingerprint = serde_json::from_str(&text).map_err(|_| Stale::Unreadable)?;
        if old.settings != self.settings {
            return Err(Stale::Settings);
        }
        for s in &self.sources {
            if !old.sources.contains(s) {
                return Err(Stale::Source(s.path.clone()));
            }
        }
        if let Some(gone) = old.sources.iter().find(|o| !self.sources.contains(o)) {
            return Err(Stale::Source(gone.path.clone()));
        }
        for o in &old.outputs {
            let ok = std::fs::metadata(out_dir.join(&o.file)).is_ok_and(|m| m.len() == o.size);
            if !ok {
                return Err(Stale::Output(o.file.clone()));
            }
        }
        if old.outputs.is_empty() {
            return Err(Stale::Output("(none recorded)".into()));
        }
        Ok(())
    }

    /// Records the files of `dir` (all but the fingerprint) and writes the fingerprint there.
    pub fn write(mut self, dir: &Path) -> Result<()> {
        let mut outputs = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Diagnostic::io(code::Build::Io, "cannot list", dir, &e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == FILE {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            outputs.push(OutputStamp { file: name, size });
        }
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        self.outputs = outputs;
        let text = serde_json::to_string_pretty(&self).map_err(|e| {
            Diagnostic::error(
                code::Build::Io,
                format!("cannot encode the fingerprint: {e}"),
            )
        })?;
        let path = dir.join(FILE);
        std::fs::write(&path, text + "\n")
            .map_err(|e| Diagnostic::io(code::Build::Io, "cannot write", &path, &e))
    }
}
