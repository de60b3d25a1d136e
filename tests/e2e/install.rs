//! Installable like a cargo tool: `cargo install --locked --path cargo-rmlx` and
//! `--path lsp` into a temporary root, then, from a directory outside the checkout and with
//! every cache the README names pointed at empty directories, `cargo rmlx probe` on a model,
//! `cargo rmlx bench` against mlx-lm (its script comes from the binary) and `rmlx-lsp`
//! (initialize / shutdown / exit over stdio). The installed binaries must load the MLX
//! runtime from the data directory, never from a cache, the checkout or a target directory.
//!
//! The install is a `--debug` one (the dev profile optimises this workspace, see the root
//! Cargo.toml; a release build takes longer and covers nothing more here) into its own
//! target directory, `<target>/install-test`, kept between runs so that only the first run
//! compiles everything (a few minutes on a CI machine). Not the suite's own target
//! directory: an install there rebuilds `target/debug/cargo-rmlx` whenever its dependency
//! features differ from the test build's (dev-dependencies change them), replacing the
//! binary that the other end-to-end tests are running at that moment.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    converted, copy_model_dir, repo_root, run_command, venv_python, Run, Variant,
};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// The target directory of this test build (`CARGO_TARGET_DIR`, else `<repo>/target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("target"),
    }
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from)
}

/// `cargo install --locked --debug --path <repo>/<package> --root <root>`, built in
/// `<target>/install-test`.
fn install(package: &str, root: &Path) {
    let mut cmd = Command::new(cargo());
    cmd.args(["install", "--locked", "--debug", "--quiet", "--path"])
        .arg(repo_root().join(package))
        .arg("--root")
        .arg(root)
        .env("CARGO_TARGET_DIR", target_dir().join("install-test"))
        .current_dir(repo_root());
    let run = run_command(cmd, INSTALL_TIMEOUT);
    assert!(
        run.success(),
        "cargo install of {package} failed\n{}",
        run.describe()
    );
}

/// A command run from `cwd` with the installed tools first on PATH and the caches the
/// README says may be cleared replaced by empty directories.
fn installed(program: impl AsRef<std::ffi::OsStr>, root: &Path, cwd: &Path) -> Command {
    let caches = cwd.join("empty-caches");
    std::fs::create_dir_all(&caches).expect("create the empty cache dir");
    let path = std::env::join_paths(std::iter::once(root.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("PATH", path)
        .env("XDG_CACHE_HOME", &caches)
        .env("RMLX_CACHE_DIR", &caches)
        .env("NO_COLOR", "1")
        .env_remove("RMLX_SOURCE_DIR")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

fn json_lines(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{}", run.describe()))
        })
        .collect()
}

/// The shared libraries `binary` loads, as `ldd` resolves them.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("not found"),
        "ldd {}: {text}",
        binary.display()
    );
    text.lines()
        .filter_map(|l| l.split("=>").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// Places the README calls caches (safe to clear), and places an installed binary must not
/// depend on: the checkout (and with it its target directory), cargo's target directory,
/// and the per-user cache directory.
fn must_not_load_from() -> Vec<PathBuf> {
    let mut dirs = vec![repo_root(), target_dir()];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache"));
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        dirs.push(PathBuf::from(cache));
    }
    dirs.into_iter()
        .map(|d| d.canonicalize().unwrap_or(d))
        .collect()
}

#[test]
fn installed_tools_run_outside_the_checkout_without_caches() {
    let model = converted(Variant::Q4);
    let oracle = venv_python("oracle-venv.sh", "the mlx-lm reference");
    let outside = tempfile::Builder::new()
        .prefix("rmlx-install-")
        .tempdir()
        .expect("a temporary directory");
    let cwd = outside.path().canonicalize().expect("canonical temp dir");
    assert!(
        !cwd.starts_with(repo_root().canonicalize().expect("repo root")),
        "the temporary directory {} is inside the checkout",
        cwd.display()
    );
    let root = cwd.join("root");
    install("cargo-rmlx", &root);
    install("lsp", &root);
    let (cli, lsp) = (root.join("bin/cargo-rmlx"), root.join("bin/rmlx-lsp"));

    for binary in [&cli, &lsp] {
        let libs = linked_libraries(binary);
        let mlx = libs
            .iter()
            .find(|l| {
                l.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libmlx"))
            })
            .unwrap_or_else(|| panic!("{} does not link libmlx: {libs:?}", binary.display()));
        let mlx = mlx.canonicalize().unwrap_or_else(|_| mlx.clone());
        for dir in must_not_load_from() {
            assert!(
                !mlx.starts_with(&dir),
                "{} loads MLX from {}, under {} (a cache or the checkout)",
                binary.display(),
                mlx.display(),
                dir.display()
            );
        }
    }

    let local_model = cwd.join("smollm2-q4");
    copy_model_dir(&model, &local_model, &[]);

    let mut probe = installed(cargo(), &root, &cwd);
    probe.args(["rmlx", "probe", "smollm2-q4", "--message-format", "json"]);
    let run = run_command(probe, RUN_TIMEOUT);
    assert!(run.success(), "installed probe failed\n{}", run.describe());
    let verdicts = json_lines(&run);
    assert_eq!(verdicts.len(), 1, "{}", run.describe());
    assert_eq!(verdicts[0]["reason"], "probe-verdict");
    assert_eq!(verdicts[0]["verdict"], "ok", "{}", run.describe());

    let mut bench = installed(cargo(), &root, &cwd);
    bench
        .args([
            "rmlx",
            "bench",
            "smollm2-q4",
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "2",
        ])
        .args(["--repeat", "1", "--no-probe-timing", "--compare-mlx-lm"])
        .args([
            "--mlx-lm-modes",
            "float32",
            "--message-format",
            "json",
            "--python",
        ])
        .arg(&oracle);
    let run = run_command(bench, RUN_TIMEOUT);
    assert!(run.success(), "installed bench failed\n{}", run.describe());
    let rows = json_lines(&run);
    assert!(
        rows.iter().any(|r| r["runner"] == "mlx-lm" && r["decode_tok_s"].as_f64().is_some_and(|v| v > 0.0)),
        "no mlx-lm row: the embedded script did not run\n{}",
        run.describe()
    );

    lsp_initialize_and_shutdown(installed(&lsp, &root, &cwd));
}

/// One LSP message with its header.
fn frame(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The next message the server sends.
fn read_frame(out: &mut impl BufRead) -> Value {
    let mut len = None;
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read from rmlx-lsp");
        assert!(n > 0, "rmlx-lsp closed its output");
        match line.trim_end() {
            "" => break,
            header => {
                if let Some(v) = header.strip_prefix("Content-Length:") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
    }
    let mut body = vec![0; len.expect("a Content-Length header")];
    out.read_exact(&mut body).expect("read a message body");
    serde_json::from_slice(&body).expect("a JSON message")
}

/// Sends a request and returns the answer with its id (skipping notifications).
fn request(stdin: &mut impl Write, out: &mut impl BufRead, message: Value) -> Value {
    stdin
        .write_all(&frame(&message))
        .expect("write to rmlx-lsp");
    stdin.flush().expect("flush");
    loop {
        let answer = read_frame(out);
        if answer["id"] == message["id"] {
            return answer;
        }
    }
}

/// `initialize`, `initialized`, `shutdown`, `exit` over stdio, each request answered
/// before the next is sent: both answers arrive and the server exits 0.
fn lsp_initialize_and_shutdown(mut cmd: Command) {
    cmd.arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start the installed rmlx-lsp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let init = request(
        &mut stdin,
        &mut out,
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"processId": null, "rootUri": null, "capabilities": {}}}),
    );
    assert!(init["result"]["capabilities"].is_object(), "{init}");
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "initialized", "params": {}});
    stdin.write_all(&frame(&initialized)).expect("write");
    let shutdown = request(
        &mut stdin,
        &mut out,
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}),
    );
    assert!(shutdown.get("error").is_none(), "{shutdown}");
    let exit = serde_json::json!({"jsonrpc": "2.0", "method": "exit"});
    stdin.write_all(&frame(&exit)).expect("write");
    stdin.flush().expect("flush");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for rmlx-lsp") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("rmlx-lsp did not exit after `exit`");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "rmlx-lsp exited with {status} after shutdown and exit"
    );
}
