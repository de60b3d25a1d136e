//! Shared machinery of the build tests: scratch workspaces with an rmlx.toml, running the
//! binary in a directory, parsing status lines, the reference conversions (`mlx_lm
//! convert`, cached), shared builds, and comparing safetensors tensor by tensor.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::{self, bin, converted, repo_root, run_command, Run, Variant};

/// Wall-clock limit of one child process.
pub const TIMEOUT: Duration = Duration::from_secs(1200);

/// The dense bf16 SmolLM2 directory (`cargo rmlx convert` of the GGUF, cached).
pub fn bf16_source() -> PathBuf {
    converted(Variant::Bf16)
}

/// `cargo-rmlx rmlx ARGS…` in `cwd` with plain, wide diagnostics and extra environment.
pub fn cargo_rmlx<S: AsRef<OsStr>>(cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("rmlx")
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("CARGO_TERM_COLOR", "never")
        .env("COLUMNS", "400")
        .env_remove("CLICOLOR_FORCE")
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

pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    Sha256::digest(bytes.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The venv python with mlx-lm (`scripts/oracle-venv.sh`, created on first use).
pub fn python() -> PathBuf {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/oracle-venv.sh"))
            .current_dir(repo_root());
        let run = run_command(cmd, TIMEOUT);
        let py = run.stdout.lines().last().map(|l| PathBuf::from(l.trim()));
        match py {
            Some(p) if run.success() && p.is_file() => Ok(p),
            _ => Err(format!(
                "the reference (mlx-lm) is not available: scripts/oracle-venv.sh failed\n{}",
                run.describe()
            )),
        }
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `python -m mlx_lm convert --hf-path SRC --mlx-path OUT ARGS…`, cached under
/// `target/test-models/build-cache/` by the source's content, the arguments and the
/// reference's pinned requirements. Returns the output directory.
pub fn mlx_lm_convert(src: &Path, args: &[&str]) -> PathBuf {
    type Cell = std::sync::Arc<OnceLock<Result<PathBuf, String>>>;
    type Runs = Mutex<BTreeMap<(PathBuf, Vec<String>), Cell>>;
    static RUNS: OnceLock<Runs> = OnceLock::new();
    let key = (
        src.to_path_buf(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let cell: Cell = RUNS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(|| convert_cached(src, args))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn convert_cached(src: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let requirements = fs::read(repo_root().join("scripts/oracle-requirements.txt"))
        .map_err(|e| format!("oracle-requirements.txt: {e}"))?;
    let key = sha256_hex(format!(
        "{}\n{args:?}\n{}",
        support::content_hash(src),
        sha256_hex(requirements)
    ));
    let cache = support::models_dir().join("build-cache");
    let dest = cache.join(&key[..16]);
    if dest.join("config.json").is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let tmp = cache.join(format!(".{}.tmp-{}", &key[..16], std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let mut cmd = Command::new(python());
    cmd.args(["-m", "mlx_lm", "convert", "--hf-path"])
        .arg(src)
        .arg("--mlx-path")
        .arg(&tmp)
        .args(args);
    let run = run_command(cmd, TIMEOUT);
    if !run.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!("mlx_lm convert failed\n{}", run.describe()));
    }
    match fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        Err(_) if dest.join("config.json").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dest)
        }
        Err(e) => Err(format!("{} -> {}: {e}", tmp.display(), dest.display())),
    }
}

/// Builds `[models.<name>]` with the given extra TOML lines from the bf16 source, once per
/// process (`--force`: the binary may have changed since the last run), in
/// `target/build-tests/<name>/`. Returns the output directory.
pub fn shared_build(name: &str, body: &str) -> PathBuf {
    type Cell = std::sync::Arc<OnceLock<Result<PathBuf, String>>>;
    static BUILDS: OnceLock<Mutex<BTreeMap<String, Cell>>> = OnceLock::new();
    let cell: Cell = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| {
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
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A tensor: (safetensors dtype name, shape, bytes).
pub type Tensor = (String, Vec<usize>, Vec<u8>);

/// Every tensor of every `*.safetensors` file in `dir`.
pub fn tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no safetensors in {}", dir.display());
    for f in files {
        let bytes = fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (name, view) in st.tensors() {
            let prev = out.insert(
                name.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(
                prev.is_none(),
                "tensor {name} in two files of {}",
                dir.display()
            );
        }
    }
    out
}

/// Asserts both directories hold the same tensor names with identical dtypes, shapes and
/// bytes; returns how many tensors were compared.
pub fn assert_same_tensors(ours: &Path, theirs: &Path) -> usize {
    let a = tensors(ours);
    let b = tensors(theirs);
    let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "tensor names differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
        ours.display(),
        theirs.display()
    );
    let mut differing = Vec::new();
    for (name, (dt, shape, bytes)) in &a {
        let (dt2, shape2, bytes2) = &b[name];
        if dt != dt2 || shape != shape2 {
            differing.push(format!("{name}: {dt} {shape:?} vs {dt2} {shape2:?}"));
        } else if bytes != bytes2 {
            let first = bytes
                .iter()
                .zip(bytes2)
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            differing.push(format!("{name}: bytes differ from offset {first}"));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} tensors differ between {} and {}:\n{}",
        differing.len(),
        a.len(),
        ours.display(),
        theirs.display(),
        differing.join("\n")
    );
    a.len()
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
