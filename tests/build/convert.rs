//! `cargo rmlx convert` and GGUF sources against careless use and file races: the input is
//! never replaced, an existing output is refused without `--force`, two concurrent converts to
//! one output cannot both succeed, a directory input says what is wrong, a GGUF truncated while
//! it is read gives a located error (never a signal) and leaves no staging directories, and
//! staging directories of killed runs are removed by the next run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cargo_rmlx, flat, hidden_entries, leftovers, Ws};
use crate::support::{
    bin, converted, copy_model_dir, edit_config, scratch_dir, smollm2_gguf, Run, Variant,
};

const EXIT_USAGE: i32 = 2;
const EXIT_LOAD: i32 = 3;

fn convert(cwd: &Path, args: &[&str]) -> Run {
    let mut all = vec!["convert"];
    all.extend_from_slice(args);
    cargo_rmlx(cwd, &all, &[])
}

/// The test GGUF hard-linked into `dir` (never written through: only replaced or read).
fn linked_gguf(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    if fs::hard_link(smollm2_gguf(), &to).is_err() {
        fs::copy(smollm2_gguf(), &to).expect("copy the GGUF");
    }
    to
}

#[test]
fn convert_never_replaces_its_input() {
    let scratch = scratch_dir();
    let gguf = linked_gguf(scratch.path(), "x.gguf");
    let before = fs::metadata(&gguf).unwrap();
    for force in [false, true] {
        let mut args = vec!["x.gguf", "--out", "x.gguf"];
        if force {
            args.push("--force");
        }
        let run = convert(scratch.path(), &args);
        assert_eq!(run.code, Some(EXIT_USAGE), "{}", run.describe());
        assert!(
            run.stderr.contains("rmlx::convert::output-is-input"),
            "{}",
            run.describe()
        );
        let after = fs::metadata(&gguf).expect("the input still exists");
        assert!(after.is_file(), "the input was replaced (force: {force})");
        assert_eq!(
            (after.ino(), after.len()),
            (before.ino(), before.len()),
            "the input changed (force: {force})"
        );
    }
    assert_eq!(hidden_entries(scratch.path()), Vec::<String>::new());
}

#[test]
fn convert_refuses_an_existing_file_unless_forced() {
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    fs::write(&out, "keep me").unwrap();
    let gguf = smollm2_gguf().display().to_string();
    let run = convert(scratch.path(), &[&gguf, "--out", "out"]);
    assert_eq!(run.code, Some(EXIT_USAGE), "{}", run.describe());
    assert!(
        flat(&run.stderr).contains("exists and is a file"),
        "{}",
        run.describe()
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "keep me");

    let run = convert(scratch.path(), &[&gguf, "--out", "out", "--force"]);
    assert!(run.success(), "{}", run.describe());
    assert!(
        flat(&run.stderr).contains("--force replaces it with the model directory"),
        "--force must say that it replaces a file\n{}",
        run.describe()
    );
    assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());
    assert_eq!(hidden_entries(scratch.path()), Vec::<String>::new());
}

#[test]
fn concurrent_converts_to_one_output_cannot_both_succeed() {
    let scratch = scratch_dir();
    let gguf = smollm2_gguf().display().to_string();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (dir, gguf) = (scratch.path(), gguf.as_str());
                s.spawn(move || convert(dir, &[gguf, "--out", "out", "--keep-quantized"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = runs.iter().filter(|r| r.success()).count();
    let all = runs
        .iter()
        .map(Run::describe)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(ok, 1, "exactly one convert may succeed\n{all}");
    let refused = runs.iter().find(|r| !r.success()).unwrap();
    assert_eq!(refused.code, Some(EXIT_USAGE), "{all}");
    assert!(
        refused.stderr.contains("rmlx::convert::output-exists"),
        "{all}"
    );
    let out = scratch.path().join("out");
    assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());
    assert_eq!(hidden_entries(scratch.path()), Vec::<String>::new());
}

#[test]
fn convert_of_a_directory_says_what_is_wrong() {
    let scratch = scratch_dir();
    fs::create_dir(scratch.path().join("model")).unwrap();
    let run = convert(scratch.path(), &["model", "--out", "out"]);
    assert_eq!(run.code, Some(EXIT_LOAD), "{}", run.describe());
    let text = flat(&run.stderr);
    assert!(
        text.contains("rmlx::gguf::not-a-file") && text.contains("is a directory, not a GGUF file"),
        "{}",
        run.describe()
    );
    assert!(!text.contains("memory-map"), "{}", run.describe());
    assert!(!scratch.path().join("out").exists());
}

/// Starts `cargo-rmlx rmlx ARGS…` in `cwd` without waiting.
fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("rmlx")
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "400")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cargo-rmlx")
}

/// Whether a hidden directory of `dir` (a staging directory) already holds a
/// `model.safetensors`: the importer is then reading tensors.
fn import_in_progress(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|r| {
        r.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with('.')
                && e.path().join("model.safetensors").is_file()
        })
    })
}

/// Runs `args` in `cwd`; once the import is reading tensors (a staging directory under
/// `watch` holds model.safetensors), truncates `gguf` to half its size. Returns the run.
fn run_and_truncate(cwd: &Path, args: &[&str], watch: &Path, gguf: &Path) -> Run {
    let mut child = spawn(cwd, args);
    let started = Instant::now();
    let mut truncated = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if !truncated && import_in_progress(watch) {
            let f = fs::OpenOptions::new().write(true).open(gguf).unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap();
            truncated = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().expect("collect output");
    assert!(
        truncated,
        "the run ended before the import read tensors: {status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        cmdline: format!("cargo-rmlx rmlx {}", args.join(" ")),
        code: status.code(),
        timed_out: false,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn convert_of_a_gguf_truncated_while_read() {
    let scratch = scratch_dir();
    let gguf = scratch.path().join("m.gguf");
    fs::copy(smollm2_gguf(), &gguf).unwrap();
    // What killed runs of older and current versions leave behind.
    for stale in [".out.rmlx-import-4242-0", ".out.tmp-4242", ".out.old-4242"] {
        fs::create_dir_all(scratch.path().join(stale).join("x")).unwrap();
    }
    let run = run_and_truncate(
        scratch.path(),
        &["convert", "m.gguf", "--out", "out"],
        scratch.path(),
        &gguf,
    );
    assert_eq!(
        run.code,
        Some(EXIT_LOAD),
        "must fail with an error, not a signal\n{}",
        run.describe()
    );
    let text = flat(&run.stderr);
    assert!(
        text.contains("rmlx::gguf::truncated") && text.contains("shrank while being read"),
        "{}",
        run.describe()
    );
    assert!(!scratch.path().join("out").exists());
    assert_eq!(
        hidden_entries(scratch.path()),
        Vec::<String>::new(),
        "staging directories left behind"
    );
}

#[test]
fn gguf_source_truncated_during_a_build() {
    let ws = Ws::new();
    let gguf = ws.path().join("m.gguf");
    fs::copy(smollm2_gguf(), &gguf).unwrap();
    ws.manifest("[models.smol]\nsource = \"m.gguf\"\n");
    let root = ws.path().join("target").join("rmlx");
    let run = run_and_truncate(ws.path(), &["build"], &root, &gguf);
    assert_eq!(
        run.code,
        Some(EXIT_LOAD),
        "must fail with an error, not a signal\n{}",
        run.describe()
    );
    assert!(
        flat(&run.stderr).contains("rmlx::gguf::truncated"),
        "{}",
        run.describe()
    );
    assert!(!ws.out("smol").exists());
    assert_eq!(leftovers(&ws), Vec::<String>::new());
}

#[test]
fn probe_of_an_absurd_layer_count_is_an_error_not_an_abort() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("m");
    copy_model_dir(&converted(Variant::Q4), &dir, &[]);
    edit_config(&dir, |c| {
        c.insert(
            "num_hidden_layers".into(),
            serde_json::json!(4_294_967_295u64),
        );
    });
    let run = cargo_rmlx(scratch.path(), &["probe", "m"], &[]);
    assert_eq!(run.code, Some(EXIT_LOAD), "{}", run.describe());
    let text = flat(&run.stderr);
    assert!(
        text.contains("rmlx::snapshot::size-limit")
            && text.contains("`num_hidden_layers` is 4294967295"),
        "{}",
        run.describe()
    );
    assert!(
        text.contains("config.json:"),
        "not located\n{}",
        run.describe()
    );
}
