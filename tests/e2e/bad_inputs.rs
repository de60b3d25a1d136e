//! Broken inputs fail cleanly: the documented exit code (3 when a model cannot be loaded,
//! 2 for usage errors), a report on stderr that names the file or tensor at fault, and
//! never a panic.

use std::fs;
use std::path::Path;

use safetensors::tensor::{serialize_to_file, SafeTensors, TensorView};

use crate::support::{
    converted, copy_model_dir, edit_config, rmlx, scratch_dir, smollm2_gguf, Run, Variant,
};

const EXIT_USAGE: i32 = 2;
const EXIT_LOAD: i32 = 3;
/// Exit code of an unsupported architecture (README: exit codes).
const EXIT_UNSUPPORTED: i32 = 5;
const WEIGHTS: &str = "model.safetensors";

/// Asserts a clean failure: exit code `code`, no panic, and each of `needles` (compared
/// case-insensitively) in stderr.
fn assert_clean_failure(run: &Run, code: i32, needles: &[&str], what: &str) {
    assert!(!run.timed_out, "{what}: timed out\n{}", run.describe());
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "{what}: the binary panicked instead of reporting an error\n{}",
        run.describe()
    );
    assert_eq!(
        run.code,
        Some(code),
        "{what}: expected exit code {code}\n{}",
        run.describe()
    );
    let stderr = run.stderr.to_lowercase();
    for needle in needles {
        assert!(
            stderr.contains(&needle.to_lowercase()),
            "{what}: stderr should mention {needle:?}\n{}",
            run.describe()
        );
    }
}

/// `generate DIR --prompt … --max-tokens 1`.
fn generate_in(dir: &Path, prompt: &str) -> Run {
    rmlx([
        "generate".as_ref(),
        dir.as_os_str(),
        "--prompt".as_ref(),
        prompt.as_ref(),
        "--max-tokens".as_ref(),
        "1".as_ref() as &std::ffi::OsStr,
    ])
}

/// A copy of the 4-bit test model without its weights file.
fn model_copy_without_weights() -> (tempfile::TempDir, std::path::PathBuf) {
    let src = converted(Variant::Q4);
    assert!(
        src.join(WEIGHTS).is_file(),
        "the converted model {} has no {WEIGHTS}",
        src.display()
    );
    let scratch = scratch_dir();
    let dir = scratch.path().join("model");
    copy_model_dir(&src, &dir, &[WEIGHTS]);
    (scratch, dir)
}

#[test]
fn truncated_weights_file_is_a_load_error() {
    let (_scratch, dir) = model_copy_without_weights();
    let full = fs::read(converted(Variant::Q4).join(WEIGHTS)).expect("read the weights");
    fs::write(dir.join(WEIGHTS), &full[..full.len() / 2]).expect("write truncated weights");
    let run = generate_in(&dir, "Hello");
    assert_clean_failure(&run, EXIT_LOAD, &[WEIGHTS], "truncated model.safetensors");
}

#[test]
fn missing_weights_file_is_a_load_error() {
    let (_scratch, dir) = model_copy_without_weights();
    let run = generate_in(&dir, "Hello");
    assert_clean_failure(
        &run,
        EXIT_LOAD,
        &[".safetensors"],
        "missing model.safetensors",
    );
}

#[test]
fn tensor_with_wrong_shape_is_a_load_error() {
    const TENSOR: &str = "model.norm.weight";
    let (_scratch, dir) = model_copy_without_weights();
    let bytes = fs::read(converted(Variant::Q4).join(WEIGHTS)).expect("read the weights");
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("parse the weights header");
    let weights = SafeTensors::deserialize(&bytes).expect("parse the weights");
    let mut found = false;
    let tensors: Vec<(String, TensorView<'_>)> = weights
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if name != TENSOR {
                return (name, view);
            }
            found = true;
            // [576] -> [288]: half the values, consistent bytes, wrong shape.
            let mut shape = view.shape().to_vec();
            assert_eq!(shape.len(), 1, "{TENSOR} should be a vector");
            shape[0] /= 2;
            let half = &view.data()[..view.data().len() / 2];
            let bad = TensorView::new(view.dtype(), shape, half).expect("a valid view");
            (name, bad)
        })
        .collect();
    assert!(found, "the converted model has no tensor {TENSOR}");
    let views = tensors.iter().map(|(name, view)| (name.as_str(), view));
    serialize_to_file(views, header.metadata().clone(), &dir.join(WEIGHTS))
        .expect("write the modified weights");

    let run = generate_in(&dir, "Hello");
    assert_clean_failure(&run, EXIT_LOAD, &[TENSOR], "tensor with a wrong shape");
}

#[test]
fn unknown_model_type_is_an_unsupported_architecture_error() {
    let src = converted(Variant::Q4);
    let scratch = scratch_dir();
    let dir = scratch.path().join("model");
    copy_model_dir(&src, &dir, &[]);
    edit_config(&dir, |config| {
        config.insert("model_type".into(), "bogus".into());
    });
    let run = generate_in(&dir, "Hello");
    assert_clean_failure(
        &run,
        EXIT_UNSUPPORTED,
        &["bogus", "supported architectures"],
        "config.json with model_type \"bogus\"",
    );
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let src = converted(Variant::Q4);
    let scratch = scratch_dir();
    let dir = scratch.path().join("model");
    copy_model_dir(&src, &dir, &[]);
    edit_config(&dir, |config| {
        config.insert("max_position_embeddings".into(), 16.into());
    });
    // About 40 tokens, far beyond a 16-token context.
    let prompt = "one two three four five six seven eight nine ten ".repeat(4);
    let run = generate_in(&dir, prompt.trim_end());
    assert!(!run.timed_out, "{}", run.describe());
    assert!(
        !run.stderr.contains("panicked"),
        "a prompt longer than the context made the binary panic\n{}",
        run.describe()
    );
    assert!(
        matches!(run.code, Some(c) if c != 0 && c != 101),
        "a prompt longer than the context (16) must be an error exit\n{}",
        run.describe()
    );
    let stderr = run.stderr.to_lowercase();
    assert!(
        stderr.contains("context") && stderr.contains("16"),
        "the error should mention the context length (16)\n{}",
        run.describe()
    );
}

#[test]
fn gguf_with_bad_magic_is_a_load_error() {
    let gguf = fs::read(smollm2_gguf()).expect("read the GGUF");
    let scratch = scratch_dir();
    let bad = scratch.path().join("bad-magic.gguf");
    let mut head = gguf[..1 << 20].to_vec();
    head[..4].copy_from_slice(b"NOPE");
    fs::write(&bad, head).expect("write the corrupt GGUF");
    let out = scratch.path().join("out");
    let run = rmlx([
        "convert".as_ref(),
        bad.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_clean_failure(
        &run,
        EXIT_LOAD,
        &["bad-magic.gguf"],
        "GGUF with a bad magic",
    );
    assert!(
        !out.join(WEIGHTS).exists(),
        "a failed convert left a model behind in {}",
        out.display()
    );
}

#[test]
fn truncated_gguf_is_a_load_error() {
    let gguf = fs::read(smollm2_gguf()).expect("read the GGUF");
    let scratch = scratch_dir();
    let bad = scratch.path().join("truncated.gguf");
    fs::write(&bad, &gguf[..gguf.len() / 2]).expect("write the truncated GGUF");
    let out = scratch.path().join("out");
    let run = rmlx([
        "convert".as_ref(),
        bad.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_clean_failure(
        &run,
        EXIT_LOAD,
        &["truncated.gguf"],
        "GGUF truncated to half",
    );
    assert!(
        !out.join(WEIGHTS).exists(),
        "a failed convert left a model behind in {}",
        out.display()
    );
}

#[test]
fn convert_refuses_to_overwrite_a_non_empty_directory() {
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), "precious").unwrap();
    let run = rmlx([
        "convert".as_ref(),
        smollm2_gguf().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(
        !run.success() && !run.stderr.contains("panicked") && run.code != Some(101),
        "convert into a non-empty --out without --force must fail cleanly\n{}",
        run.describe()
    );
    assert_eq!(
        fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );
    assert!(
        !out.join(WEIGHTS).exists(),
        "convert wrote into a non-empty --out"
    );
}

#[test]
fn usage_errors_exit_2() {
    let scratch = scratch_dir();
    let run = rmlx(["generate", "some-model"]);
    assert_clean_failure(&run, EXIT_USAGE, &["--prompt"], "generate without --prompt");
    let run = rmlx(["convert".as_ref(), smollm2_gguf().as_os_str()]);
    assert_clean_failure(&run, EXIT_USAGE, &["--out"], "convert without --out");
    let run = rmlx(["frobnicate"]);
    assert_clean_failure(&run, EXIT_USAGE, &["frobnicate"], "an unknown subcommand");
    let missing = scratch.path().join("no-such-model");
    let run = generate_in(&missing, "Hello");
    assert!(
        matches!(run.code, Some(EXIT_USAGE | EXIT_LOAD)) && !run.stderr.contains("panicked"),
        "generate on a missing model directory must exit 2 or 3 without panicking\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("no-such-model"),
        "the error should name the missing model directory\n{}",
        run.describe()
    );
}
