//! The reference build and directory comparison shared by the e2e and build tests:
//! `mlx_lm convert` of a source directory (cached under `target/test-models/build-cache`),
//! and tensor-by-tensor comparison of two model directories.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{self, once_per_key, repo_root, run_command, sha256_hex, OnceMap};

/// Wall-clock limit of one `mlx_lm convert`.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(1200);

/// `python -m mlx_lm convert --hf-path SRC --mlx-path OUT ARGS…`, cached under
/// `target/test-models/build-cache/` by the source's content, the arguments and the
/// reference's pinned requirements. Returns the output directory.
pub fn mlx_lm_convert(src: &Path, args: &[&str]) -> PathBuf {
    static RUNS: OnceMap<(PathBuf, Vec<String>), PathBuf> = OnceLock::new();
    let key = (
        src.to_path_buf(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    once_per_key(&RUNS, key, || convert_cached(src, args))
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
    let mut cmd = Command::new(support::oracle_python());
    cmd.args(["-m", "mlx_lm", "convert", "--hf-path"])
        .arg(src)
        .arg("--mlx-path")
        .arg(&tmp)
        .args(args);
    let run = run_command(cmd, CONVERT_TIMEOUT);
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
