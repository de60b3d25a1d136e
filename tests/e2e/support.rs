//! Machinery of the end-to-end tests: running the `cargo-rmlx` binary, its generation
//! output, and the reference implementation (mlx-lm, run by `scripts/oracle_mlx_lm.py` in
//! the venv of `scripts/oracle-venv.sh`). Paths, processes, scripts and the SmolLM2 test
//! model come from `rmlx-test-support` (re-exported here).
//!
//! Nothing here skips: when a model or the reference cannot be obtained, the test fails
//! and says why.

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub use rmlx_test_support::{
    copy_model_dir, models_dir, once_per_key, repo_root, run_command, sha256_hex, smollm2_gguf,
    OnceMap, Run, Variant, STAMP_FILE,
};

pub const CHAT_PROMPT: &str = "What is the capital of France?";
pub const RAW_PROMPT: &str = "The capital of France is";

/// Greedy steps compared against the reference, and how many top entries it reports.
pub const ORACLE_STEPS: usize = 16;
const ORACLE_TOP: usize = 5;

/// Wall-clock limit for child processes (a hang fails the test instead of blocking CI).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cargo-rmlx"))
}

/// A fresh scratch directory under `target/e2e-tmp` (removed when dropped).
pub fn scratch_dir() -> tempfile::TempDir {
    rmlx_test_support::scratch_dir("e2e-tmp", "case-")
}

/// The SmolLM2 GGUF converted by the binary under test (cached; see
/// `rmlx_test_support::smollm2`).
pub fn converted(variant: Variant) -> PathBuf {
    rmlx_test_support::converted(bin(), variant)
}

/// The python of the venv made by `scripts/<script>` (`oracle-venv.sh`, `llama-venv.sh`);
/// `what` names the reference in the failure message.
pub fn venv_python(script: &str, what: &str) -> PathBuf {
    rmlx_test_support::venv_python(&format!("scripts/{script}"), what)
}

/// `cargo-rmlx rmlx ARGS…` (the way cargo invokes a `cargo-<name>` subcommand), with plain,
/// wide, uncoloured diagnostics so assertions can search them.
pub fn rmlx<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = rmlx_test_support::rmlx_command(bin());
    cmd.args(args);
    run_command(cmd, RUN_TIMEOUT)
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
// Model directories

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
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cache
        .lock()
        .unwrap()
        .insert(dir.to_path_buf(), hash.clone());
    hash
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
    venv_python(
        "oracle-venv.sh",
        "the reference implementation (mlx-lm, installed with pip into target/oracle-venv)",
    )
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
        "script_helpers": file_sha(&scripts.join("bench_common.py")),
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
