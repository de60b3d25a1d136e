//! File races under a serving model: weights rewritten in place (`cp` over
//! `model.safetensors`, which truncates the file the loader is reading), a reload racing a
//! truncation, and a config.json with an absurd size saved under `--watch`. The server must
//! stay up (never end with a signal), report the failed reload, and keep serving the old
//! version.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(240);

/// A model copy whose weights file is its own inode (the cache's file is never written).
fn own_weights_copy(scratch: &Path) -> PathBuf {
    let dir = copy_model(scratch);
    let weights = dir.join("model.safetensors");
    fs::remove_file(&weights).unwrap();
    fs::copy(model_dir().join("model.safetensors"), &weights).unwrap();
    dir
}

fn reloads(s: &Server) -> f64 {
    s.metric("rmlx_reloads_total", &[])
}

/// Answers a chat request (the server is alive and serving); returns the version served.
fn serves(s: &Server) -> Option<String> {
    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 2));
    assert_eq!(r.status, 200, "{}\n{}", r.text, s.log());
    r.header("x-rmlx-model-version").map(str::to_owned)
}

/// Ends the server with SIGTERM; its exit must not be a signal of its own (SIGBUS, SIGABRT).
fn assert_clean_exit(s: &Server) {
    let status = s
        .terminate(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the server did not exit\n{}", s.log()));
    assert!(
        status.signal().is_none(),
        "the server ended with {status}\n{}",
        s.log()
    );
}

/// A server on a fresh model copy (with `--watch` when asked), ready; returns the copy too.
fn serve_copy(scratch: &Path, watch: bool) -> (PathBuf, Server) {
    let dir = own_weights_copy(scratch);
    let mut args = vec![dir.display().to_string()];
    if watch {
        args.extend(["--watch", "--debounce-ms", "300"].map(String::from));
    }
    let s = Server::start(&args, scratch);
    s.wait_ready();
    (dir, s)
}

#[test]
fn weights_copied_over_twice_under_watch() {
    let scratch = scratch_dir();
    let (dir, s) = serve_copy(scratch.path(), true);
    let original = model_dir().join("model.safetensors");
    // `fs::copy` opens the existing file with O_TRUNC and writes it again, like `cp`: a load
    // that started after the first copy reads a file that shrinks to zero under it.
    for round in 0..3 {
        let before = reloads(&s);
        fs::copy(&original, dir.join("model.safetensors")).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        fs::copy(&original, dir.join("model.safetensors")).unwrap();
        wait_until(
            &format!("a reload after round {round}"),
            RELOAD_TIMEOUT,
            || reloads(&s) > before,
        );
        // Let the reloads the copies triggered finish, then check it still answers.
        std::thread::sleep(Duration::from_secs(2));
        serves(&s);
    }
    wait_until("the model to be ready", RELOAD_TIMEOUT, || {
        s.get("/v1/models").json["data"][0]["state"] == "ready"
    });
    serves(&s);
    assert_clean_exit(&s);
}

#[test]
fn reload_racing_a_truncation_keeps_the_old_version() {
    let scratch = scratch_dir();
    let (dir, s) = serve_copy(scratch.path(), false);
    let old = serves(&s);
    let weights = dir.join("model.safetensors");
    let reply = std::thread::scope(|scope| {
        let reload = scope.spawn(|| s.post(&format!("/v1/models/{MODEL_NAME}/reload"), &json!({})));
        std::thread::sleep(Duration::from_millis(50));
        let f = fs::OpenOptions::new().write(true).open(&weights).unwrap();
        f.set_len(30_000_000).unwrap();
        reload.join().unwrap()
    });
    assert_eq!(reply.status, 422, "{}\n{}", reply.text, s.log());
    let code = reply.json["error"]["code"].as_str().unwrap_or_default();
    assert!(code.starts_with("rmlx::snapshot::"), "{}", reply.text);
    assert!(
        reply.text.contains("truncated"),
        "the reload must say the weights are truncated: {}",
        reply.text
    );
    assert_eq!(serves(&s), old, "the old version must keep serving");
    let m = s.get("/v1/models").json["data"][0].clone();
    assert_eq!(m["state"], "ready", "{m}");
    assert!(!m["last_error"].is_null(), "{m}");
    assert_clean_exit(&s);
}

#[test]
fn absurd_config_size_saved_under_watch_is_a_failed_reload() {
    let scratch = scratch_dir();
    let (dir, s) = serve_copy(scratch.path(), true);
    let old = serves(&s);
    let config = dir.join("config.json");
    let text = fs::read_to_string(&config).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["num_hidden_layers"] = json!(4_294_967_295u64);
    let tmp = dir.join(".config.json.swp");
    fs::write(&tmp, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    fs::rename(&tmp, &config).unwrap();
    wait_until("the failed reload", RELOAD_TIMEOUT, || {
        s.metric("rmlx_reloads_total", &["result=\"failed\""]) >= 1.0
    });
    let m = s.get("/v1/models").json["data"][0].clone();
    let message = m["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("num_hidden_layers") && message.contains("4294967295"),
        "{m}"
    );
    assert_eq!(serves(&s), old, "the old version must keep serving");
    assert_clean_exit(&s);
}
