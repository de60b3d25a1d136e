//! The project's setup scripts (bash): fetching models and corpora, making venvs. Each
//! prints the path it provides on its last stdout line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{models_dir, once_per_key, repo_root, run_command, OnceMap, Run};

/// How long a setup script may take (a first run downloads and builds).
const SETUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs `bash <repo>/<script> ARGS…` in the repository root with `RMLX_TEST_MODELS` set to
/// [`models_dir`]; `script` is relative to the repository root (`scripts/fetch-models.sh`).
pub fn run_script(script: &str, args: &[&str], timeout: Duration) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join(script))
        .args(args)
        .current_dir(repo_root())
        .env("RMLX_TEST_MODELS", models_dir());
    run_command(cmd, timeout)
}

/// Runs `script` and returns the existing path it prints last, or why there is none;
/// `what` names what the script provides, for the failure message.
pub fn script_path(script: &str, args: &[&str], what: &str) -> Result<PathBuf, String> {
    let run = run_script(script, args, SETUP_TIMEOUT);
    let last = run.stdout.lines().last().map(str::trim).unwrap_or_default();
    if run.success() && !last.is_empty() && PathBuf::from(last).exists() {
        return Ok(PathBuf::from(last));
    }
    Err(format!(
        "{what} is not available: {script} failed (the first run needs the package index; \
         results are cached under target/)\n{}",
        run.describe()
    ))
}

/// The python of the venv made by `script` (`scripts/oracle-venv.sh`, …), run once per
/// process; `what` names what the venv provides.
pub fn venv_python(script: &str, what: &str) -> PathBuf {
    static PYTHONS: OnceMap<String, PathBuf> = OnceLock::new();
    once_per_key(&PYTHONS, script.to_string(), || {
        script_path(script, &[], what).and_then(|p| {
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{script} printed {}, not a python", p.display()))
            }
        })
    })
}
