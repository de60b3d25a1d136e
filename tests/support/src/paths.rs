//! Where things are: the repository, the test models, scratch directories.

use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `tests/support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support lives inside the repository")
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

/// A fresh scratch directory `target/<area>/<prefix>…` (removed when dropped).
pub fn scratch_dir(area: &str, prefix: &str) -> tempfile::TempDir {
    let parent = repo_root().join("target").join(area);
    std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .expect("create a scratch directory")
}
