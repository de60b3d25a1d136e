//! The API against one shared server serving two models: the SmolLM2 directory and a copy
//! whose template shows `tools` and a `chat_template_kwargs` variable in the prompt. The
//! server requires an API key and limits bodies to 64 KiB.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::support::*;

const KEY: &str = "test-key-123";
const TOOLS_MODEL: &str = "smollm2-tools";

/// SmolLM2's template, plus a system turn listing the tools and the `flavor` kwarg.
const TOOLS_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
Tools: {% for t in tools %}{{ t.function.name }};{% endfor %}{% if flavor %} Flavor: {{ flavor }}{% endif %}<|im_end|>
{% endif %}{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' and not tools %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"#;

fn tools_model() -> PathBuf {
    let dir = models_dir().join("serve").join(TOOLS_MODEL);
    let _ = fs::remove_dir_all(&dir);
    let parent = models_dir().join("serve").join(".tools-copy");
    let _ = fs::remove_dir_all(&parent);
    fs::create_dir_all(&parent).unwrap();
    let copy = copy_model(&parent);
    fs::write(copy.join("chat_template.jinja"), TOOLS_TEMPLATE).unwrap();
    fs::rename(&copy, &dir).unwrap();
    dir
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let args = vec![
            model_dir().display().to_string(),
            tools_model().display().to_string(),
            "--api-key".into(),
            KEY.into(),
            "--max-body-bytes".into(),
            "65536".into(),
            "--max-tokens".into(),
            "48".into(),
        ];
        let s = Server::start(&args, &repo_root());
        s.wait_ready();
        // Both models serve before any test runs.
        wait_until("both models ready", READY_TIMEOUT, || {
            let r = s.get("/v1/models");
            r.json["data"]
                .as_array()
                .is_some_and(|d| d.len() == 2 && d.iter().all(|m| m["state"] == "ready"))
        });
        s
    })
}

fn content(r: &Reply) -> String {
    r.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no message content: {}", r.text))
        .to_string()
}

#[test]
fn chat_completion_answers_paris_with_usage() {
    let s = server();
    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 24));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(content(&r).contains("Paris"), "{}", r.text);
    assert_eq!(r.json["object"], "chat.completion");
    assert_eq!(r.json["model"], MODEL_NAME);
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop", "{}", r.text);
    assert_eq!(r.json["choices"][0]["message"]["role"], "assistant");
    let u = &r.json["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && c > 0 && c <= 24, "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(p + c));
    assert!(r.header("x-rmlx-model-version").is_some());
    // Content as a list of text parts is the same conversation.
    let mut parts = chat_body(CAPITAL_QUESTION, 24);
    parts["messages"][0]["content"] = json!([{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of France?"}]);
    let r2 = s.post("/v1/chat/completions", &parts);
    assert_eq!(r2.status, 200, "{}", r2.text);
    assert_eq!(content(&r2), content(&r));
}

#[test]
fn chat_stream_sends_chunks_usage_and_done() {
    let s = server();
    let mut body = chat_body(CAPITAL_QUESTION, 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut es = EventStream::open(s, "/v1/chat/completions", &body);
    assert_eq!(es.status, 200);
    assert!(es
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let data = es.rest();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:#?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    assert!(chunks.len() >= 4, "{chunks:#?}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.contains("Paris"), "{text}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // The same text as the non-streaming answer.
    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 24));
    assert_eq!(content(&r), text);
}

#[test]
fn completions_with_logprobs_stream_and_length() {
    let s = server();
    let body = json!({"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 4, "logprobs": 2});
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["object"], "text_completion");
    let choice = &r.json["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert!(
        choice["text"].as_str().unwrap().contains("Paris"),
        "{}",
        r.text
    );
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4, "{lp}");
    for (i, v) in lp["token_logprobs"].as_array().unwrap().iter().enumerate() {
        assert!(v.as_f64().unwrap() <= 0.0, "{lp}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{lp}");
    }
    assert_eq!(r.json["usage"]["completion_tokens"], 4);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let mut es = EventStream::open(s, "/v1/completions", &sb);
    let data = es.rest();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:#?}");
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(text, choice["text"].as_str().unwrap());
}

#[test]
fn chat_logprobs_stop_strings_and_max_tokens() {
    let s = server();
    let mut body = chat_body(CAPITAL_QUESTION, 24);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.json["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"], "{e}");
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
    let tokens: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, content(&r));

    let mut stop = chat_body(CAPITAL_QUESTION, 24);
    stop["stop"] = json!([" Paris", "zzz"]);
    let r = s.post("/v1/chat/completions", &stop);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop");
    let text = content(&r);
    assert!(!text.contains("Paris") && text.contains("France"), "{text}");

    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 2));
    assert_eq!(
        r.json["choices"][0]["finish_reason"], "length",
        "{}",
        r.text
    );
    assert_eq!(r.json["usage"]["completion_tokens"], 2);
    // max_completion_tokens wins over max_tokens.
    let mut b = chat_body(CAPITAL_QUESTION, 20);
    b["max_completion_tokens"] = json!(3);
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.json["usage"]["completion_tokens"], 3, "{}", r.text);
}

/// `logit_bias` bans a token the greedy answer uses; presence, frequency and repetition
/// penalties break a repetition loop the unpenalised model falls into.
#[test]
fn penalties_and_logit_bias_steer_generation() {
    let s = server();
    // The id of " Paris", as the server's tokenizer encodes it.
    let r = s.post(
        "/v1/completions",
        &json!({"model": MODEL_NAME, "prompt": " Paris", "max_tokens": 1, "return_prompt": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let ids = r.json["prompt"]["ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1, "\" Paris\" should be one token: {}", r.text);
    let paris = ids[0].as_u64().unwrap();

    let chosen = |body: &Value| -> Vec<String> {
        let r = s.post("/v1/chat/completions", body);
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["token"].as_str().unwrap().to_string())
            .collect()
    };
    let mut plain = chat_body(CAPITAL_QUESTION, 12);
    plain["logprobs"] = json!(true);
    assert!(
        chosen(&plain).iter().any(|t| t == " Paris"),
        "the unbiased answer uses the token"
    );
    let mut banned = plain.clone();
    banned["logit_bias"] = json!({ paris.to_string(): -100 });
    let tokens = chosen(&banned);
    assert!(
        !tokens.iter().any(|t| t == " Paris"),
        "logit_bias -100 must ban the token: {tokens:?}"
    );

    // A prompt that makes the greedy model repeat " 1".
    let text = |extra: Value| -> String {
        let mut body = json!({"model": MODEL_NAME, "prompt": "1 1 1 1 1 1 1 1", "max_tokens": 10});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let ones = |t: &str| t.matches(" 1").count();
    let base = text(json!({}));
    assert!(ones(&base) >= 4, "the unpenalised model repeats: {base:?}");
    for extra in [
        json!({"presence_penalty": 2.0}),
        json!({"frequency_penalty": 1.5}),
        json!({"repetition_penalty": 2.0}),
    ] {
        let t = text(extra.clone());
        assert!(
            ones(&t) < ones(&base),
            "{extra} should repeat \" 1\" less than {base:?}, got {t:?}"
        );
    }
    // Neutral values are accepted and change nothing.
    assert_eq!(
        text(
            json!({"presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": {}})
        ),
        base
    );
    // A biased id outside the vocabulary is the client's error.
    let mut bad = chat_body(CAPITAL_QUESTION, 4);
    bad["logit_bias"] = json!({"99999999": 1});
    let r = s.post("/v1/chat/completions", &bad);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("logit_bias"), "{}", r.text);
}

/// The prompt a request renders is byte-identical to the probe's for the same conversation:
/// compared with the probe that gated this server and with the library's probe seed.
#[test]
fn request_prompt_is_the_probe_prompt() {
    let s = server();
    let mut body = chat_body(rmlx::probe::DEFAULT_SEED, 4);
    body["return_prompt"] = json!(true);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<u64> = r.json["prompt"]["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no prompt ids: {}", r.text))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let text = r.json["prompt"]["text"].as_str().unwrap().to_string();

    let models = s.get("/v1/models");
    let m = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL_NAME)
        .unwrap()
        .clone();
    assert_eq!(m["probe"]["verdict"], "ok", "{m}");
    let probe_ids: Vec<u64> = m["probe"]["report"]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, probe_ids, "server request vs. the server's own probe");
    assert_eq!(m["probe"]["report"]["prompt"].as_str(), Some(text.as_str()));

    let session =
        rmlx::session::Session::load(&model_dir(), rmlx::engine::DtypePolicy::Auto).unwrap();
    let (prompt, _) =
        rmlx::probe::seed_prompt(&session, &rmlx::probe::ProbeOptions::default()).unwrap();
    assert_eq!(prompt.text.as_bytes(), text.as_bytes());
    let lib_ids: Vec<u64> = prompt.ids.iter().map(|&i| u64::from(i)).collect();
    assert_eq!(ids, lib_ids, "server request vs. rmlx::probe::seed_prompt");
}

#[test]
fn tools_and_template_kwargs_reach_the_template() {
    let s = server();
    let body = json!({
        "model": TOOLS_MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "chat_template_kwargs": {"flavor": "vanilla"},
        "max_tokens": 2,
        "return_prompt": true,
    });
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["model"], TOOLS_MODEL);
    let prompt = r.json["prompt"]["text"].as_str().unwrap();
    assert!(
        prompt.contains("Tools: get_weather; Flavor: vanilla"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    // An assistant turn with OpenAI-style string arguments and a tool result render too.
    let body = json!({
        "model": TOOLS_MODEL,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "max_tokens": 1,
        "return_prompt": true,
    });
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["prompt"]["text"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>tool\nsunny"));
}

#[test]
fn errors_are_openai_shaped() {
    let s = server();
    let err_type = |r: &Reply| r.json["error"]["type"].as_str().unwrap_or("").to_string();

    let r = s.post_raw("/v1/chat/completions", b"{\"messages\": [".to_vec());
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(err_type(&r), "invalid_request_error");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON"),
        "{}",
        r.text
    );

    let mut b = chat_body("hi", 4);
    b["temperature"] = json!(-1);
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("temperature")),
        "{}",
        r.text
    );

    let mut b = chat_body("hi", 4);
    b["n"] = json!(2);
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "unsupported_parameter");

    let mut b = chat_body("hi", 4);
    b["presence_penalty"] = json!(3.5);
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("presence_penalty")),
        "{}",
        r.text
    );

    let mut b = chat_body("hi", 4);
    b["model"] = json!("no-such-model");
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "model_not_found");
    let r = s.post("/v1/models/no-such-model/reload", &json!({}));
    assert_eq!(r.status, 404, "{}", r.text);

    let big = "x".repeat(80 * 1024);
    let r = s.post("/v1/chat/completions", &chat_body(&big, 4));
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(err_type(&r), "invalid_request_error");

    // The key is required on /v1/*, not on /health and /metrics.
    let r = agent()
        .post(&s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(chat_body("hi", 2).to_string())
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = agent()
        .get(&s.url("/v1/models"))
        .header("authorization", "Bearer wrong")
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(agent().get(&s.url("/health")).call().unwrap().status(), 200);
    assert_eq!(
        agent().get(&s.url("/metrics")).call().unwrap().status(),
        200
    );

    let r = s.get("/v1/nothing-here");
    assert_eq!(r.status, 404);
    assert_eq!(err_type(&r), "not_found_error");
}

#[test]
fn models_health_and_metrics() {
    let s = server();
    let r = s.get("/v1/models");
    assert_eq!(r.json["object"], "list");
    let ids: Vec<&str> = r.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL_NAME, TOOLS_MODEL]);
    let h = s.get("/health");
    assert_eq!((h.status, h.json["status"].as_str()), (200, Some("ok")));
    // A request without `model` goes to the first model.
    let mut b = chat_body(CAPITAL_QUESTION, 2);
    b.as_object_mut().unwrap().remove("model");
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.json["model"], MODEL_NAME, "{}", r.text);

    let text = s.get("/metrics").text;
    for name in [
        "rmlx_requests_total",
        "rmlx_prompt_tokens_total",
        "rmlx_generated_tokens_total",
        "rmlx_time_to_first_token_seconds_bucket",
        "rmlx_decode_tokens_per_second_bucket",
        "rmlx_queue_depth",
        "rmlx_probe_verdicts_total",
        "rmlx_reloads_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(s.metric("rmlx_probe_verdicts_total", &["verdict=\"ok\""]) >= 2.0);
    assert!(s.metric("rmlx_requests_total", &["status=\"200\""]) >= 1.0);
}
