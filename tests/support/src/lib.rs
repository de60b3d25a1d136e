//! Machinery shared by every test target (cargo-rmlx's `e2e`, `build`, `serve`, `templates`
//! and rmlx-lsp's `e2e`): where the repository, the test models and scratch directories are,
//! one way to run a child process with a time limit ([`Run`]), the project scripts that make
//! venvs and fetch models, the SmolLM2 test model (its GGUF and its converted forms, cached
//! once under the test-models directory), and setup computed once per key.
//!
//! A target's own `support` module keeps only what that target alone needs and re-exports
//! the rest. The binary under test differs per package (`env!("CARGO_BIN_EXE_…")`), so the
//! functions that run it take its path.
//!
//! Nothing here skips: when a model or a reference cannot be obtained, the test fails and
//! says why.

mod once;
mod paths;
/// The versions-file reader of mlx-sys's build script (one implementation).
#[path = "../../../mlx-sys/pinned.rs"]
mod pinned;
mod run;
mod scripts;
pub mod smollm2;
mod versions;

pub use once::{once_per_key, OnceMap};
pub use paths::{models_dir, repo_root, scratch_dir};
pub use run::{rmlx_command, run_command, Run};
pub use scripts::{run_script, script_path, venv_python};
pub use smollm2::{
    converted, converted_with, copy_model_dir, sha256_hex, smollm2_gguf, Variant, SMOLLM2_GGUF,
    SMOLLM2_SHA256, STAMP_FILE,
};
pub use versions::pinned_version;
