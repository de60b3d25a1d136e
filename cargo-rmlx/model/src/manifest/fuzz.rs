//! Mutation fuzzing of the rmlx.toml parser (test-only; the harness is
//! [`crate::snapshot::fuzz`]): the manifest of the parser tests, using every section, is mutated and parsed. Each case
//! must give `Ok` or a `Diagnostic` whose span lies inside the text, never panic, and never
//! allocate from an unchecked size.

use std::path::{Path, PathBuf};

use super::tests::FULL_EXAMPLE;
use super::Manifest;
use crate::snapshot::fuzz::{check_diagnostic, fuzz};

#[test]
fn fuzz_rmlx_toml() {
    fuzz("rmlx.toml", FULL_EXAMPLE.as_bytes(), |input| {
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
