//! The reference build and directory comparison shared by the e2e and build tests:
//! `mlx_lm convert` of a source directory (cached under `target/test-models/build-cache`;
//! optionally with a small shard size), tensor-by-tensor comparison of two model
//! directories, and byte-for-byte comparison of their safetensors files.

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
    mlx_lm_convert_sharded(src, args, None)
}

/// [`mlx_lm_convert`] with mlx-lm's shard size (`make_shards`' 5 GiB default) set to
/// `max_shard_bytes`, when given.
pub fn mlx_lm_convert_sharded(src: &Path, args: &[&str], max_shard_bytes: Option<u64>) -> PathBuf {
    static RUNS: OnceMap<(PathBuf, Vec<String>, Option<u64>), PathBuf> = OnceLock::new();
    let key = (
        src.to_path_buf(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        max_shard_bytes,
    );
    once_per_key(&RUNS, key, || convert_cached(src, args, max_shard_bytes))
}

/// mlx-lm's own `convert` entry point, its `make_shards` default limit replaced by a value
/// whose `<< 30` (GiB to bytes) is the wanted byte count.
const SHARDED_CONVERT: &str = "import sys\n\
import mlx_lm.utils as u\n\
limit = int(sys.argv.pop(1))\n\
class Bytes:\n    def __lshift__(self, _):\n        return limit\n\
u.make_shards.__defaults__ = (Bytes(),)\n\
from mlx_lm.convert import main\n\
main()\n";

fn convert_command(src: &Path, out: &Path, args: &[&str], max_shard_bytes: Option<u64>) -> Command {
    let mut cmd = Command::new(support::oracle_python());
    match max_shard_bytes {
        None => cmd.args(["-m", "mlx_lm", "convert"]),
        Some(n) => cmd.args(["-c", SHARDED_CONVERT, &n.to_string()]),
    };
    cmd.arg("--hf-path")
        .arg(src)
        .arg("--mlx-path")
        .arg(out)
        .args(args);
    cmd
}

fn convert_cached(
    src: &Path,
    args: &[&str],
    max_shard_bytes: Option<u64>,
) -> Result<PathBuf, String> {
    let requirements = fs::read(repo_root().join("scripts/oracle-requirements.txt"))
        .map_err(|e| format!("oracle-requirements.txt: {e}"))?;
    let shards = match max_shard_bytes {
        None => String::new(),
        Some(n) => format!("\nshards of {n} bytes"),
    };
    let key = sha256_hex(format!(
        "{}\n{args:?}\n{}{shards}",
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
    let run = run_command(
        convert_command(src, &tmp, args, max_shard_bytes),
        CONVERT_TIMEOUT,
    );
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

/// The `*.safetensors` file names of `dir`, sorted.
fn weight_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
}

/// A safetensors file's header length and its tensor names in the order of their data.
fn data_order(bytes: &[u8]) -> (usize, Vec<String>) {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .unwrap_or(0);
    let header: serde_json::Value = bytes
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice(h).ok())
        .unwrap_or_default();
    let mut order: Vec<(u64, String)> = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap_or(0), k.clone()))
        .collect();
    order.sort();
    (n, order.into_iter().map(|(_, k)| k).collect())
}

/// Where two different safetensors files first differ, and both tensor orders from there.
fn describe_difference(file: &str, ours: &[u8], theirs: &[u8]) -> String {
    let first = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let (ha, oa) = data_order(ours);
    let (hb, ob) = data_order(theirs);
    let same = oa.iter().zip(&ob).take_while(|(a, b)| a == b).count();
    let window = |o: &[String]| o.iter().skip(same).take(12).cloned().collect::<Vec<_>>();
    format!(
        "{file}: first difference at byte {first} (sizes {} vs {}; headers {ha} vs {hb} \
         bytes); the data orders agree on the first {same} of {} vs {} tensors, then\n  \
         ours:   {:?}\n  theirs: {:?}",
        ours.len(),
        theirs.len(),
        oa.len(),
        ob.len(),
        window(&oa),
        window(&ob)
    )
}

/// Asserts both directories hold the same `*.safetensors` files, byte for byte; a
/// difference names the file, the first differing byte and both tensor orders there.
/// Returns the number of files.
pub fn assert_same_weight_files(ours: &Path, theirs: &Path) -> usize {
    let names = weight_files(theirs);
    assert_eq!(
        weight_files(ours),
        names,
        "different safetensors files in {} and {}",
        ours.display(),
        theirs.display()
    );
    for name in &names {
        let read = |d: &Path| fs::read(d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (a, b) = (read(ours), read(theirs));
        assert!(
            a == b,
            "{} (ours: {}, mlx_lm convert's: {})",
            describe_difference(name, &a, &b),
            ours.display(),
            theirs.display()
        );
    }
    names.len()
}
