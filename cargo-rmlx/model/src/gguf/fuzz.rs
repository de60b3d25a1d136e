//! Mutation fuzzing of the GGUF reader and the whole import (test-only; the harness is
//! [`crate::snapshot::fuzz`]): a small valid llama GGUF built in the test is mutated, opened,
//! every tensor read, and imported into a directory. Each case must give `Ok` or a
//! `Diagnostic`, never panic, and never allocate from an unchecked size.

use proptest::prelude::*;

use super::quants::GgmlType;
use super::tests::tiny_llama;
use super::{import_into, GgufFile, ImportOptions};
use crate::snapshot::fuzz::{check_diagnostic, fuzz};

#[test]
fn fuzz_gguf_reader_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_llama(GgmlType::Q8_0).bytes();
    let path = dir.path().join("case.gguf");
    let out = dir.path().join("out");
    let mut imported = 0usize;
    fuzz("gguf", &base, |input| {
        std::fs::write(&path, input).unwrap();
        let gguf = match GgufFile::open(&path) {
            Ok(g) => g,
            Err(d) => return check_diagnostic(&d, None),
        };
        for info in gguf.tensors() {
            match gguf.view(info).read() {
                Ok(bytes) => prop_assert_eq!(bytes.len() as u64, info.n_bytes),
                Err(d) => return check_diagnostic(&d, None),
            }
        }
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        match import_into(&path, &out, &ImportOptions::default()) {
            Ok(_) => {
                imported += 1;
                Ok(())
            }
            Err(d) => check_diagnostic(&d, None),
        }
    });
    eprintln!("fuzz gguf: {imported} mutated files imported completely");
}
