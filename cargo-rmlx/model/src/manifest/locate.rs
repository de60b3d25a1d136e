//! Finding rmlx.toml and the target directory, and resolving MODEL arguments.

use std::path::{Path, PathBuf};

use super::{Manifest, FILE_NAME};
use crate::diagnostic::{code, Diagnostic, Result};

/// Where the manifest is and where its build products go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The rmlx.toml file.
    pub manifest: PathBuf,
    /// The target directory: cargo's (`cargo metadata`'s `target_directory`, so
    /// `CARGO_TARGET_DIR` and `build.target-dir` apply) when rmlx.toml sits at the workspace
    /// root, else `target/` next to rmlx.toml.
    pub target_dir: PathBuf,
}

/// Finds rmlx.toml.
///
/// - `--manifest-path <…/rmlx.toml>`: that file.
/// - `--manifest-path <…/Cargo.toml>`, or a `Cargo.toml` in the current directory or above:
///   the workspace root is asked of `cargo metadata` (run through `$CARGO` when set); its
///   `rmlx.toml` wins.
/// - Otherwise the nearest `rmlx.toml` in the start directory (the current directory, or the
///   directory of `--manifest-path`) or above it.
///
/// `Ok(None)` when there is none.
pub fn locate(manifest_path: Option<&Path>) -> Result<Option<Location>> {
    let cwd = current_dir()?;
    let manifest_path = manifest_path.map(|p| cwd.join(p));
    if let Some(p) = &manifest_path {
        if !p.is_file() {
            return Err(Diagnostic::error(
                code::Manifest::NotFound,
                format!("--manifest-path {} does not exist", p.display()),
            )
            .with_file(p));
        }
        if p.file_name().is_some_and(|n| n == FILE_NAME) {
            let dir = p.parent().unwrap_or(&cwd).to_path_buf();
            return Ok(Some(Location {
                manifest: p.clone(),
                target_dir: dir.join("target"),
            }));
        }
    }
    let start = match &manifest_path {
        Some(p) => p.parent().unwrap_or(&cwd).to_path_buf(),
        None => cwd.clone(),
    };
    let has_cargo = manifest_path.is_some() || find_upwards(&start, "Cargo.toml").is_some();
    if has_cargo && (manifest_path.is_some() || root_may_hold_manifest(&start)) {
        let (root, target) = workspace(manifest_path.as_deref(), &start)?;
        let at_root = root.join(FILE_NAME);
        if at_root.is_file() {
            return Ok(Some(Location {
                manifest: at_root,
                target_dir: target,
            }));
        }
    }
    Ok(find_upwards(&start, FILE_NAME).map(|manifest| {
        let dir = manifest.parent().unwrap_or(&start).to_path_buf();
        Location {
            manifest,
            target_dir: dir.join("target"),
        }
    }))
}

/// The directory `cargo rmlx init` writes rmlx.toml into: the cargo workspace root when
/// there is one, else the current directory (or `--manifest-path`'s directory).
pub fn init_dir(manifest_path: Option<&Path>) -> Result<PathBuf> {
    let cwd = current_dir()?;
    let manifest_path = manifest_path.map(|p| cwd.join(p));
    if let Some(p) = &manifest_path {
        if p.file_name().is_some_and(|n| n == FILE_NAME) {
            return Ok(p.parent().unwrap_or(&cwd).to_path_buf());
        }
        if !p.is_file() {
            return Err(Diagnostic::error(
                code::Manifest::NotFound,
                format!("--manifest-path {} does not exist", p.display()),
            )
            .with_file(p));
        }
    }
    let start = match &manifest_path {
        Some(p) => p.parent().unwrap_or(&cwd).to_path_buf(),
        None => cwd.clone(),
    };
    if manifest_path.is_some() || find_upwards(&start, "Cargo.toml").is_some() {
        let (root, _) = workspace(manifest_path.as_deref(), &start)?;
        return Ok(root);
    }
    Ok(start)
}

/// Whether the cargo workspace root above `start` may hold an rmlx.toml — if not, `cargo
/// metadata` (25–90 ms a run, most of a cold `cargo rmlx probe DIR`'s start) cannot change
/// what [`locate`] finds. Cargo finds the root upwards from the nearest `Cargo.toml`, so it
/// is `start` or a directory above unless that file names its workspace elsewhere
/// (`package.workspace`): with no rmlx.toml upwards and no such key, it holds none. A
/// `Cargo.toml` that cannot be read or parsed is left to `cargo metadata` to report.
fn root_may_hold_manifest(start: &Path) -> bool {
    if find_upwards(start, FILE_NAME).is_some() {
        return true;
    }
    let Some(cargo_toml) = find_upwards(start, "Cargo.toml") else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(&cargo_toml) else {
        return true;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return true;
    };
    if table
        .get("package")
        .and_then(|p| p.get("workspace"))
        .is_some()
    {
        return true;
    }
    tracing::debug!(
        "no rmlx.toml at or above {} and {} names no other workspace: `cargo metadata` skipped",
        start.display(),
        cargo_toml.display()
    );
    false
}

fn find_upwards(start: &Path, name: &str) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// (workspace root, target directory) from `cargo metadata --no-deps`.
fn workspace(manifest_path: Option<&Path>, start: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut cmd = cargo_metadata::MetadataCommand::new();
    cmd.no_deps().current_dir(start);
    if let Some(p) = manifest_path {
        cmd.manifest_path(p);
    }
    let meta = cmd.exec().map_err(|e| {
        let detail = match &e {
            cargo_metadata::Error::CargoMetadata { stderr } => stderr.trim().to_string(),
            other => other.to_string(),
        };
        let mut d = Diagnostic::error(
            code::Manifest::CargoMetadata,
            format!("`cargo metadata` failed: {detail}"),
        )
        .with_help("rmlx.toml is looked up at the cargo workspace root; fix Cargo.toml or pass --manifest-path path/to/rmlx.toml");
        if let Some(p) = manifest_path {
            d = d.with_file(p);
        }
        d
    })?;
    Ok((
        meta.workspace_root.into_std_path_buf(),
        meta.target_directory.into_std_path_buf(),
    ))
}

/// A MODEL argument: a model declared in rmlx.toml (its build output,
/// `target/rmlx/<name>/`), else a model directory.
pub fn resolve_model(arg: &str, manifest_path: Option<&Path>) -> Result<PathBuf> {
    resolve_model_in(
        arg,
        Manifest::find(manifest_path).as_ref().map(Option::as_ref),
    )
}

/// [`resolve_model`] against a manifest lookup already made (`cargo metadata` runs once).
pub fn resolve_model_in(
    arg: &str,
    found: std::result::Result<Option<&Manifest>, &Diagnostic>,
) -> Result<PathBuf> {
    let as_dir = PathBuf::from(arg);
    match found {
        Ok(Some(m)) => {
            if let Some(decl) = m.model(arg) {
                let out = m.output_dir(&decl.name);
                if !out.join("config.json").is_file() {
                    return Err(m
                        .located(
                            true,
                            code::Manifest::NotBuilt,
                            format!("model `{arg}` is declared but not built"),
                            decl.name_span.clone(),
                            "declared here",
                        )
                        .with_help(format!("run `cargo rmlx build {arg}`")));
                }
                return Ok(out);
            }
        }
        Ok(None) => {}
        Err(e) => {
            if as_dir.is_dir() {
                tracing::warn!("ignoring rmlx.toml ({}): {}", e.code, e.message);
            } else {
                return Err(e.clone());
            }
        }
    }
    if as_dir.is_dir() {
        return Ok(as_dir);
    }
    Err(Diagnostic::error(
        code::Cli::UnknownModel,
        format!("no model directory `{arg}` and no model of that name in rmlx.toml"),
    )
    .with_help(
        "pass the name of a model declared in rmlx.toml, or the path of an MLX-format model \
         directory (config.json, *.safetensors, tokenizer.json)",
    ))
}

/// The current directory, or a located error.
fn current_dir() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| {
        Diagnostic::error(
            code::Manifest::Io,
            format!("cannot read the current directory: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::root_may_hold_manifest;

    /// A package directory `ws/pkg/src` with `Cargo.toml` text `cargo` in `ws/pkg` and,
    /// when `manifest_above`, an rmlx.toml in `ws`; answers for a start in `src`.
    fn may_hold(cargo: &str, manifest_above: bool) -> bool {
        let ws = tempfile::tempdir().expect("temp dir");
        let src = ws.path().join("pkg/src");
        std::fs::create_dir_all(&src).expect("dirs");
        std::fs::write(ws.path().join("pkg/Cargo.toml"), cargo).expect("Cargo.toml");
        if manifest_above {
            std::fs::write(ws.path().join("rmlx.toml"), "").expect("rmlx.toml");
        }
        root_may_hold_manifest(&src)
    }

    #[test]
    fn cargo_metadata_is_skipped_only_when_no_root_can_hold_rmlx_toml() {
        let package = "[package]\nname = \"a\"\nversion.workspace = true\n";
        assert!(!may_hold(package, false), "no rmlx.toml upwards");
        assert!(may_hold(package, true), "rmlx.toml above the package");
        let elsewhere = "[package]\nname = \"a\"\nworkspace = \"../../other\"\n";
        assert!(
            may_hold(elsewhere, false),
            "package.workspace may point anywhere"
        );
        assert!(
            may_hold("[package\nname = ", false),
            "broken: cargo reports it"
        );
    }
}
