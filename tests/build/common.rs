//! Shared machinery of the build tests: scratch workspaces with an rmlx.toml, running the
//! binary in a directory, parsing status lines, shared builds; the reference conversions
//! (`mlx_lm convert`, cached) and tensor-by-tensor comparison come from `mlx_lm_build`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub use crate::mlx_lm_build::{assert_same_tensors, mlx_lm_convert, tensors};
use crate::support::{
    self, bin, converted, once_per_key, repo_root, run_command, OnceMap, Run, Variant,
};
use rmlx_test_support::rmlx_command;

/// Wall-clock limit of one child process.
pub const TIMEOUT: Duration = Duration::from_secs(1200);

/// The dense bf16 SmolLM2 directory (`cargo rmlx convert` of the GGUF, cached).
pub fn bf16_source() -> PathBuf {
    converted(Variant::Bf16)
}

/// `cargo-rmlx rmlx ARGS…` in `cwd` with plain, wide diagnostics and extra environment.
pub fn cargo_rmlx<S: AsRef<OsStr>>(cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    let mut cmd = rmlx_command(bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RMLX_MAX_SHARD_BYTES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, TIMEOUT)
}

/// A scratch cargo workspace (a bare `[workspace]` Cargo.toml, so the repository's own
/// workspace is never consulted) holding an rmlx.toml.
pub struct Ws {
    dir: tempfile::TempDir,
}

/// Makes `dir` a workspace root of its own.
pub fn own_workspace(dir: &Path) {
    fs::write(dir.join("Cargo.toml"), "[workspace]\n").expect("write Cargo.toml");
}

impl Ws {
    pub fn new() -> Self {
        let dir = support::scratch_dir();
        own_workspace(dir.path());
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest(&self, text: &str) {
        fs::write(self.path().join("rmlx.toml"), text).expect("write rmlx.toml");
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        cargo_rmlx(self.path(), args, &[])
    }

    /// `build ARGS…`, asserting success.
    pub fn build_ok(&self, args: &[&str]) -> Run {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        let run = self.run(&all);
        assert!(run.success(), "build failed\n{}", run.describe());
        run
    }

    /// `target/rmlx/<name>` of this workspace.
    pub fn out(&self, name: &str) -> PathBuf {
        self.path().join("target").join("rmlx").join(name)
    }
}

/// The cargo-style status lines of a run: (verb, first word after it).
pub fn statuses(run: &Run) -> Vec<(String, String)> {
    run.stderr
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let verb = words.next()?;
            let rest = words.next().unwrap_or("");
            let is_status = l.starts_with(' ')
                && ["Building", "Fresh", "Finished", "Blocking", "Created"].contains(&verb);
            is_status.then(|| (verb.to_string(), rest.to_string()))
        })
        .collect()
}

/// Names of the models a run reported with `verb`.
pub fn with_status(run: &Run, verb: &str) -> Vec<String> {
    let mut v: Vec<String> = statuses(run)
        .into_iter()
        .filter(|(v, _)| v == verb)
        .map(|(_, n)| n)
        .collect();
    v.sort();
    v
}

/// Builds `[models.<name>]` with the given extra TOML lines from the bf16 source, once per
/// process (`--force`: the binary may have changed since the last run), in
/// `target/build-tests/<name>/`. Returns the output directory.
pub fn shared_build(name: &str, body: &str) -> PathBuf {
    static BUILDS: OnceMap<String, PathBuf> = OnceLock::new();
    once_per_key(&BUILDS, name.to_string(), || {
        let dir = repo_root().join("target").join("build-tests").join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        own_workspace(&dir);
        let toml = format!(
            "[models.{name}]\nsource = {:?}\n{body}\n",
            bf16_source().display().to_string()
        );
        fs::write(dir.join("rmlx.toml"), toml).map_err(|e| e.to_string())?;
        let run = cargo_rmlx(&dir, &["build", "--force"], &[]);
        if !run.success() {
            return Err(format!("building {name} failed\n{}", run.describe()));
        }
        Ok(dir.join("target").join("rmlx").join(name))
    })
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of the hidden leftovers of interrupted builds in `target/rmlx/`.
pub fn leftovers(ws: &Ws) -> Vec<String> {
    hidden_entries(&ws.path().join("target").join("rmlx"))
}

/// Hidden entries of `dir` other than lock files (staging directories), sorted.
pub fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// stderr with miette's line wrapping undone (the `|` gutters removed, wrapped lines joined,
/// a line broken after a hyphen joined without a space), for substring assertions.
pub fn flat(stderr: &str) -> String {
    let mut out = String::new();
    for line in stderr.lines() {
        let t = line.trim();
        let t = ["| ", "! ", "x ", "|"]
            .iter()
            .find_map(|p| t.strip_prefix(p))
            .unwrap_or(t)
            .trim();
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('-') {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}
