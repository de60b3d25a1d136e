//! Structured output through the real server and the official `openai` client
//! (`structured_client.py`): JSON-schema answers that validate on SmolLM2 and
//! Qwen2.5-Coder-0.5B (the shared serve builds; greedy and sampled, sent concurrently so
//! they run batched), a regex, `json_object`, streaming, and invalid constraints refused
//! with a 400 naming the field. Raw-HTTP checks of the field forms, and two requests with
//! different schemas decoded in one batch, each under its own grammar.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::*;

/// Requests per sampling mode and model (the issue asks for 20).
const REQUESTS: usize = 20;

fn run_client(dir: &str, name: &str) {
    let args = [
        dir,
        "--no-probe",
        "--api-key",
        "sk-structured",
        "--max-batch",
        "8",
    ]
    .map(String::from);
    let s = Server::start(&args, &repo_root());
    s.wait_ready();
    let out = Command::new(openai_python())
        .arg(repo_root().join("tests/serve/structured_client.py"))
        .args([
            s.base.as_str(),
            name,
            "sk-structured",
            &REQUESTS.to_string(),
        ])
        .output()
        .expect("run structured_client.py");
    assert!(
        out.status.success(),
        "structured output failed on {name}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}

#[test]
fn json_schema_answers_validate_on_smollm2() {
    run_client(&model_dir().display().to_string(), MODEL_NAME);
}

#[test]
fn json_schema_answers_validate_on_qwen2_5() {
    run_client(&qwen_dir().display().to_string(), QWEN_NAME);
}

#[test]
fn constraint_fields_and_their_errors() {
    let s = Server::model(&[]);
    let mut body = chat_body("Pick a colour.", 8);
    body["guided_json"] = json!("{\"enum\": [\"red\", \"green\"]}");
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text == "\"red\"" || text == "\"green\"", "{text}");

    let prompt = json!({"prompt": "Yes or no?", "max_tokens": 4, "guided_grammar": "start: \" yes\" | \" no\""});
    let r = s.post("/v1/completions", &prompt);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json["choices"][0]["text"].as_str().unwrap();
    assert!(text == " yes" || text == " no", "{text}");
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop");

    for (field, value) in [
        ("guided_grammar", json!("start: missing_rule")),
        (
            "json_schema",
            json!({"type": "object", "properties": {"a": {"type": 5}}}),
        ),
    ] {
        let mut body = chat_body("hi", 4);
        body[field] = value;
        body["stream"] = json!(true);
        let r = s.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 400, "{field}: {}", r.text);
        assert_eq!(r.json["error"]["param"], field, "{}", r.text);
        assert_eq!(
            r.json["error"]["code"], "rmlx::constrain::invalid",
            "{}",
            r.text
        );
    }
}

/// A JSON schema and the check that an answer matches it.
type Schema = (Value, fn(&Value) -> bool);

/// Two schemas no answer can satisfy both of: each answer must match its own.
fn two_schemas() -> [Schema; 2] {
    let colours = json!({
        "type": "object",
        "properties": {"colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                   "minItems": 8, "maxItems": 8}},
        "required": ["colours"], "additionalProperties": false,
    });
    let numbers = json!({
        "type": "object",
        "properties": {"numbers": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                                   "minItems": 8, "maxItems": 8}},
        "required": ["numbers"], "additionalProperties": false,
    });
    let is_colours = |v: &Value| {
        let items = v["colours"].as_array();
        v.as_object().is_some_and(|o| o.len() == 1)
            && items.is_some_and(|a| {
                a.len() == 8
                    && a.iter()
                        .all(|c| ["red", "green", "blue"].contains(&c.as_str().unwrap_or("")))
            })
    };
    let is_numbers = |v: &Value| {
        let items = v["numbers"].as_array();
        v.as_object().is_some_and(|o| o.len() == 1)
            && items.is_some_and(|a| {
                a.len() == 8 && a.iter().all(|n| n.as_u64().is_some_and(|n| n <= 99))
            })
    };
    [(colours, is_colours), (numbers, is_numbers)]
}

#[test]
fn two_schemas_in_one_batch_each_validate() {
    let s = Server::model(&["--no-probe", "--max-batch", "4"]);
    let before = multi_sequence_passes(&s);
    let schemas = two_schemas();
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = schemas
            .iter()
            .map(|(schema, _)| {
                let s = &s;
                scope.spawn(move || {
                    let mut body = chat_body("List some things as JSON.", 80);
                    body["temperature"] = json!(0);
                    body["response_format"] =
                        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
                    s.post("/v1/chat/completions", &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((schema, valid), r) in schemas.iter().zip(&answers) {
        assert_eq!(r.status, 200, "{}", r.text);
        let choice = &r.json["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{}", r.text);
        let text = choice["message"]["content"].as_str().unwrap_or_default();
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert!(valid(&value), "{text} does not match {schema}");
    }
    assert!(
        multi_sequence_passes(&s) > before,
        "no decode pass ran both constrained requests together\n{}",
        s.get("/metrics").text
    );
}
