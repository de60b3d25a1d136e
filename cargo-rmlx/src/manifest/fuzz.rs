//! Mutation fuzzing of the rmlx.toml parser (test-only; the harness is
//! [`crate::snapshot::fuzz`]): a manifest using every section is mutated and parsed. Each case
//! must give `Ok` or a `Diagnostic` whose span lies inside the text, never panic, and never
//! allocate from an unchecked size.

use std::path::{Path, PathBuf};

use super::Manifest;
use crate::snapshot::fuzz::{check_diagnostic, fuzz};

const MANIFEST: &str = r#"
[models.smollm2]
source = "models/smol.gguf"
chat-template = "t.jinja"
dtype = "bf16"

[models.smollm2.quantize]
mode = "affine"
bits = 4
group-size = 32
overrides = { "lm_head" = { bits = 8 }, "model.layers.*.mlp.down_proj" = false, "model.embed_tokens" = { mode = "mxfp8" } }

[models.smollm2.probe]
prompt = "Hi?"
expect = "Paris"
max-tokens = 12

[models.dense]
source = "models/dense"
quantize = false
"#;

#[test]
fn fuzz_rmlx_toml() {
    fuzz("rmlx.toml", MANIFEST.as_bytes(), |input| {
        let text = String::from_utf8_lossy(input);
        match Manifest::parse(
            Path::new("/ws/rmlx.toml"),
            &text,
            PathBuf::from("/ws/target"),
        ) {
            Ok(_) => Ok(()),
            Err(d) => check_diagnostic(&d, Some(&text)),
        }
    });
}
