//! The probe gate: a model that fails its probe is not served (503 for it, the reason in
//! /v1/models), /health is 503 with a JSON body while no model serves, `--no-probe` serves
//! anyway, and models declared in rmlx.toml are built, then probed with their declared
//! expectations.

use std::fs;

use serde_json::json;

use crate::support::*;

/// A template that cannot render any conversation.
const RAISING_TEMPLATE: &str = "{{ raise_exception('broken on purpose') }}";

fn model_state(s: &Server, name: &str) -> serde_json::Value {
    s.get("/v1/models").json["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == name).cloned())
        .unwrap_or_default()
}

#[test]
fn a_model_failing_its_probe_is_not_served() {
    let scratch = scratch_dir();
    let broken = scratch.path().join("broken-template");
    fs::rename(copy_model(scratch.path()), &broken).unwrap();
    fs::write(broken.join("chat_template.jinja"), RAISING_TEMPLATE).unwrap();

    // Alone, it never becomes ready: /health stays 503 with a JSON body.
    let alone = Server::start(&[broken.display().to_string()], scratch.path());
    let h = alone.get("/health");
    assert_eq!(h.status, 503, "{}", h.text);
    assert!(
        ["loading", "unavailable"].contains(&h.json["status"].as_str().unwrap_or("")),
        "{}",
        h.text
    );
    wait_until("the probe to fail", READY_TIMEOUT, || {
        model_state(&alone, "broken-template")["state"] == "failed"
    });
    let h = alone.get("/health");
    assert_eq!(
        (h.status, h.json["status"].as_str()),
        (503, Some("unavailable")),
        "{}",
        h.text
    );
    let m = model_state(&alone, "broken-template");
    let code = m["last_error"]["code"].as_str().unwrap_or_default();
    assert!(code.starts_with("rmlx::template::"), "{m}");
    assert!(
        m["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken on purpose"),
        "{m}"
    );
    let mut body = chat_body("hi", 2);
    body["model"] = json!("broken-template");
    let r = alone.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["error"]["type"], "model_not_ready");
    assert!(
        alone.log().contains("broken on purpose"),
        "the failure is logged:\n{}",
        alone.log()
    );
    assert_eq!(alone.metric("rmlx_model_ready", &[]), 0.0);
    assert_eq!(
        alone.metric("rmlx_reloads_total", &["result=\"failed\""]),
        1.0
    );
    drop(alone);

    // With --no-probe it serves, and the render error is the request's 400.
    let unprobed = Server::start(
        &[broken.display().to_string(), "--no-probe".into()],
        scratch.path(),
    );
    unprobed.wait_ready();
    let r = unprobed.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken on purpose"),
        "{}",
        r.text
    );
    assert!(
        r.json["error"]["code"]
            .as_str()
            .unwrap()
            .starts_with("rmlx::template::"),
        "{}",
        r.text
    );
    let m = model_state(&unprobed, "broken-template");
    assert_eq!(m["probe"]["verdict"], serde_json::Value::Null, "{m}");
}

#[test]
fn declared_models_are_built_and_probed_with_their_expectations() {
    let scratch = scratch_dir();
    let src = copy_model(scratch.path());
    let manifest = scratch.path().join("rmlx.toml");
    fs::write(
        &manifest,
        format!(
            r#"[models.smol]
source = "{src}"

[models.smol.probe]
expect = "Paris"
max-tokens = 12

[models.smol-wrong]
source = "{src}"

[models.smol-wrong.probe]
expect = "Berlin"
max-tokens = 12

[serve]
host = "127.0.0.1"
port = 1
"#,
            src = src.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let s = Server::start(
        &["--manifest-path".into(), manifest.display().to_string()],
        scratch.path(),
    );
    s.wait_ready();
    wait_until("smol-wrong to fail its probe", READY_TIMEOUT, || {
        model_state(&s, "smol-wrong")["state"] == "failed"
    });
    let good = model_state(&s, "smol");
    assert_eq!(good["state"], "ready", "{good}");
    assert_eq!(good["declared"], true);
    assert_eq!(good["probe"]["verdict"], "ok", "{good}");
    assert!(scratch
        .path()
        .join("target/rmlx/smol/config.json")
        .is_file());
    let wrong = model_state(&s, "smol-wrong");
    assert_eq!(
        wrong["last_error"]["verdict"], "unexpected-answer",
        "{wrong}"
    );
    assert!(
        wrong["last_error"]["probe"]["answer"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{wrong}"
    );

    let mut b = chat_body(CAPITAL_QUESTION, 16);
    b["model"] = json!("smol");
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 200, "{}", r.text);
    b["model"] = json!("smol-wrong");
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 503, "{}", r.text);
}
