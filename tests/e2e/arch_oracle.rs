//! Oracle tests of the qwen2 and gemma3 architectures: Qwen2.5-Coder-0.5B-Instruct (4-bit
//! g64) and gemma-3-270m (4-bit and 8-bit), each built by `cargo rmlx build` from its GGUF
//! (notes/test-models.md) and compared with mlx-lm 0.32.2 on the same directory, the same way
//! as SmolLM2 (see `oracle.rs`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::oracle::check_dir;
use crate::support::{bin, models_dir, repo_root, run_command, CHAT_PROMPT, RAW_PROMPT};

const QWEN_GGUF: &str = "qwen2.5-coder-0.5b/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
const GEMMA_GGUF: &str = "gemma3-270m/gemma-3-270m-Q4_K_M.gguf";

/// A persistent workspace under target/test-models whose rmlx.toml declares the three
/// builds; `cargo rmlx build` keeps them fresh between runs (fingerprints).
pub fn built() -> &'static PathBuf {
    static WS: OnceLock<PathBuf> = OnceLock::new();
    WS.get_or_init(|| {
        let models = models_dir();
        let fetch = run_command(
            {
                let mut c = Command::new("bash");
                c.arg(repo_root().join("scripts/fetch-models.sh"))
                    .arg("--all");
                c
            },
            Duration::from_secs(1800),
        );
        assert!(
            fetch.success(),
            "fetching Qwen and gemma failed\n{}",
            fetch.describe()
        );
        let ws = models.join("arch-oracle");
        fs::create_dir_all(&ws).expect("create workspace");
        let manifest = format!(
            r#"[models.qwen-q4g64]
source = "{qwen}"
quantize = {{ mode = "affine", bits = 4, group-size = 64 }}

[models.gemma-q4]
source = "{gemma}"
quantize = {{ mode = "affine", bits = 4, group-size = 64 }}

[models.gemma-q8]
source = "{gemma}"
quantize = {{ mode = "affine", bits = 8, group-size = 64 }}
"#,
            qwen = models.join(QWEN_GGUF).display(),
            gemma = models.join(GEMMA_GGUF).display(),
        );
        fs::write(ws.join("rmlx.toml"), manifest).expect("write rmlx.toml");
        let mut cmd = Command::new(bin());
        cmd.current_dir(&ws)
            .args(["rmlx", "build"])
            .env("CARGO_TERM_COLOR", "never");
        let run = run_command(cmd, Duration::from_secs(1800));
        assert!(run.success(), "cargo rmlx build failed\n{}", run.describe());
        ws.join("target").join("rmlx")
    })
}

#[test]
fn qwen2_4bit_g64_chat_matches_mlx_lm() {
    check_dir(&built().join("qwen-q4g64"), "qwen-q4g64", CHAT_PROMPT, true);
}

#[test]
fn gemma3_4bit_raw_matches_mlx_lm() {
    check_dir(&built().join("gemma-q4"), "gemma-q4", RAW_PROMPT, false);
}

#[test]
fn gemma3_8bit_raw_matches_mlx_lm() {
    check_dir(&built().join("gemma-q8"), "gemma-q8", RAW_PROMPT, false);
}
