//! Incremental builds: an up-to-date model is `Fresh` in milliseconds without reading its
//! weights; touching a source or changing `quantize` rebuilds exactly that model; `--force`
//! rebuilds; a build killed midway leaves the previous output intact and loadable.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{leftovers, read, with_status, Ws};
use crate::support::{bin, copy_model_dir};

fn manifest(a_quantize: &str, b_quantize: &str) -> String {
    format!(
        "[models.a]\nsource = \"src-a\"\nquantize = {a_quantize}\n\n\
         [models.b]\nsource = \"src-b\"\nquantize = {b_quantize}\n"
    )
}

const G64: &str = "{ mode = \"affine\", bits = 4, group-size = 64 }";
const G32: &str = "{ mode = \"affine\", bits = 4, group-size = 32 }";
const MXFP4: &str = "{ mode = \"mxfp4\" }";

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).and_then(|m| m.modified()).unwrap()
}

/// A snapshot of an output directory's files (name → bytes, weights by size only).
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let value = if name.ends_with(".safetensors") {
                format!("{} bytes", e.metadata().unwrap().len())
            } else {
                read(&e.path())
            };
            (name, value)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fresh_touch_quantize_change_force_and_kill() {
    let ws = Ws::new();
    let src = crate::common::bf16_source();
    // `a` gets a private copy of the weights (the test rewrites them); `b` shares them.
    let src_a = ws.path().join("src-a");
    copy_model_dir(&src, &src_a, &["model.safetensors"]);
    fs::copy(
        src.join("model.safetensors"),
        src_a.join("model.safetensors"),
    )
    .unwrap();
    copy_model_dir(&src, &ws.path().join("src-b"), &[]);
    ws.manifest(&manifest(G64, G64));

    // 1. First build: both.
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Building"), ["a", "b"], "{}", run.stderr);
    assert!(run.stderr.contains("Finished in "), "{}", run.stderr);

    // 2. Second build: both Fresh, in milliseconds, without reading the weights: replace
    //    a's weights with zeros of the same size and restore their modification time; any
    //    read of them (even of the header) would fail the build.
    let weights_a = src_a.join("model.safetensors");
    let (size, when) = (fs::metadata(&weights_a).unwrap().len(), mtime(&weights_a));
    fs::rename(&weights_a, ws.path().join("real-weights")).unwrap();
    fs::write(&weights_a, vec![0u8; size as usize]).unwrap();
    set_mtime(&weights_a, when);
    let started = Instant::now();
    let run = ws.build_ok(&[]);
    let took = started.elapsed();
    assert_eq!(with_status(&run, "Fresh"), ["a", "b"], "{}", run.stderr);
    assert!(with_status(&run, "Building").is_empty(), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(2),
        "a fresh check took {took:?} (process start and `cargo metadata` included)"
    );
    eprintln!("fresh build of 2 models: {took:?}");
    fs::rename(ws.path().join("real-weights"), &weights_a).unwrap();
    set_mtime(&weights_a, when);
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Fresh"), ["a", "b"], "{}", run.stderr);

    // 3. Touching a's weights rebuilds a only.
    set_mtime(&weights_a, SystemTime::now());
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Building"), ["a"], "{}", run.stderr);
    assert_eq!(with_status(&run, "Fresh"), ["b"], "{}", run.stderr);

    // 4. Changing b's quantize rebuilds b only.
    ws.manifest(&manifest(G64, G32));
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Building"), ["b"], "{}", run.stderr);
    assert_eq!(with_status(&run, "Fresh"), ["a"], "{}", run.stderr);
    let config_b = crate::common::json(&ws.out("b").join("config.json"));
    assert_eq!(config_b["quantization"]["group_size"], 32);

    // Naming a model builds only that one; --force rebuilds a fresh one.
    let run = ws.build_ok(&["a", "--force"]);
    assert_eq!(with_status(&run, "Building"), ["a"], "{}", run.stderr);
    assert!(with_status(&run, "Fresh").is_empty(), "{}", run.stderr);

    // 5. A build killed midway leaves the previous output of a intact.
    let before = contents(&ws.out("a"));
    ws.manifest(&manifest(MXFP4, G32));
    let mut child = Command::new(bin())
        .args(["rmlx", "build", "a"])
        .current_dir(ws.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a build");
    // Wait until it is writing the new weights into its temporary directory.
    let root = ws.path().join("target").join("rmlx");
    let deadline = Instant::now() + Duration::from_secs(300);
    let writing = loop {
        let partial = fs::read_dir(&root).ok().and_then(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".a.tmp-"))
                .map(|e| e.path().join("model.safetensors"))
                .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
        });
        if partial.is_some() || Instant::now() > deadline {
            break partial;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the build ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().expect("kill the build");
    let status = child.wait().unwrap();
    let partial = writing.expect("the build never started writing weights");
    assert!(!status.success(), "the build finished before it was killed");
    assert_eq!(
        contents(&ws.out("a")),
        before,
        "the previous output changed although the build was killed (partial file: {})",
        partial.display()
    );
    rmlx::snapshot::Snapshot::open(&ws.out("a")).expect("the previous output still opens");
    assert!(
        leftovers(&ws).iter().any(|n| n.starts_with(".a.tmp-")),
        "{:?}",
        leftovers(&ws)
    );
    // With the previous settings back, the untouched output is recognised as fresh.
    ws.manifest(&manifest(G64, G32));
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Fresh"), ["a", "b"], "{}", run.stderr);
    // The next real build of a removes the leftovers.
    let run = ws.build_ok(&["--force", "a"]);
    assert_eq!(with_status(&run, "Building"), ["a"], "{}", run.stderr);
    assert!(leftovers(&ws).is_empty(), "{:?}", leftovers(&ws));
}
