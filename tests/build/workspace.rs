//! Finding rmlx.toml: at the cargo workspace root (`cargo metadata`, through `$CARGO`, with
//! `--manifest-path`, into cargo's target directory), or the nearest one outside a cargo
//! workspace; `cargo rmlx init`; model names as MODEL arguments of other commands.

use std::fs;

use crate::common::{bf16_source, cargo_rmlx, own_workspace, with_status, Ws};
use crate::support::CHAT_PROMPT;

fn dense_model(name: &str) -> String {
    // Kept as stored: a plain copy of the bf16 tensors, the fastest build.
    format!(
        "[models.{name}]\nsource = {:?}\n",
        bf16_source().display().to_string()
    )
}

#[test]
fn workspace_root_target_dir_and_names() {
    let ws = Ws::new();
    ws.manifest(&dense_model("smol"));
    let sub = ws.path().join("crates").join("app");
    fs::create_dir_all(&sub).unwrap();
    let target = ws.path().join("elsewhere");

    // Declared but not built yet: other commands say so.
    let run = cargo_rmlx(&sub, &["generate", "smol", "--prompt", "x"], &[]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("rmlx::manifest::not-built"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("cargo rmlx build smol"),
        "{}",
        run.describe()
    );

    // From a subdirectory, into cargo's target directory (CARGO_TARGET_DIR honoured).
    let run = cargo_rmlx(
        &sub,
        &["build"],
        &[("CARGO_TARGET_DIR", target.as_os_str())],
    );
    assert!(run.success(), "{}", run.describe());
    assert_eq!(with_status(&run, "Building"), ["smol"]);
    let out = target.join("rmlx").join("smol");
    assert!(out.join("config.json").is_file(), "{}", run.describe());
    assert!(!ws.path().join("target").exists());

    // A name resolves to the build output, from anywhere with --manifest-path.
    let elsewhere = crate::support::scratch_dir();
    let manifest = ws.path().join("Cargo.toml");
    let run = cargo_rmlx(
        elsewhere.path(),
        &[
            "generate".as_ref(),
            "smol".as_ref(),
            "--chat".as_ref(),
            "--prompt".as_ref(),
            CHAT_PROMPT.as_ref(),
            "-n".as_ref(),
            "2".as_ref(),
            "--manifest-path".as_ref(),
            manifest.as_os_str(),
        ],
        &[("CARGO_TARGET_DIR", target.as_os_str())],
    );
    assert!(run.success(), "{}", run.describe());

    // `--manifest-path` may name rmlx.toml itself (its target/ is next to it).
    let rmlx_toml = ws.path().join("rmlx.toml");
    let run = cargo_rmlx(
        elsewhere.path(),
        &[
            "build".as_ref(),
            "--manifest-path".as_ref(),
            rmlx_toml.as_os_str(),
        ],
        &[],
    );
    assert!(run.success(), "{}", run.describe());
    assert!(ws.out("smol").join("config.json").is_file());

    // `$CARGO` is the cargo that is asked for the workspace.
    let run = cargo_rmlx(
        &sub,
        &["build"],
        &[("CARGO", "/nonexistent/cargo".as_ref())],
    );
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("rmlx::manifest::cargo-metadata"),
        "{}",
        run.describe()
    );
}

#[test]
fn nearest_manifest_without_a_cargo_workspace() {
    // Outside the repository, so no Cargo.toml is above it.
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::write(dir.path().join("rmlx.toml"), dense_model("smol")).unwrap();
    let sub = dir.path().join("a").join("b");
    fs::create_dir_all(&sub).unwrap();
    let run = cargo_rmlx(&sub, &["build"], &[]);
    assert!(run.success(), "{}", run.describe());
    assert!(dir.path().join("target/rmlx/smol/config.json").is_file());
    let run = cargo_rmlx(&sub, &["build"], &[]);
    assert_eq!(with_status(&run, "Fresh"), ["smol"], "{}", run.describe());
}

#[test]
fn init_writes_a_scaffold_once() {
    let ws = crate::support::scratch_dir();
    own_workspace(ws.path());
    let sub = ws.path().join("member");
    fs::create_dir_all(&sub).unwrap();
    let run = cargo_rmlx(&sub, &["init"], &[]);
    assert!(run.success(), "{}", run.describe());
    let path = ws.path().join("rmlx.toml");
    assert_eq!(fs::read_to_string(&path).unwrap(), rmlx::manifest::TEMPLATE);
    // The scaffold is a valid manifest with no models yet.
    let run = cargo_rmlx(&sub, &["build"], &[]);
    assert!(run.success(), "{}", run.describe());
    assert!(
        run.stderr.contains("declares no models"),
        "{}",
        run.describe()
    );
    // A second init refuses to overwrite.
    fs::write(&path, "# mine\n").unwrap();
    let run = cargo_rmlx(&sub, &["init"], &[]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("rmlx::manifest::exists"),
        "{}",
        run.describe()
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\n");
}
