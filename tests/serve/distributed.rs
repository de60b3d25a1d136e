//! `serve --hostfile` with two local ranks over MLX's `ring` backend: the same greedy answer
//! as a one-process server (the probe gate runs across the ranks on the way), before and
//! after a hot reload, and a killed
//! rank taking the model out of service — `/health` says so within seconds, requests get 503
//! naming the dead rank, a request in flight ends instead of hanging, and the server stays
//! up until it is stopped.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ranks::{hostfile, rank_children};
use crate::support::{scratch_dir, wait_until, EventStream, Server, CAPITAL_QUESTION};

fn greedy_chat(max_tokens: usize) -> Value {
    json!({
        "messages": [{"role": "user", "content": CAPITAL_QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": true,
    })
}

/// The generated tokens of a chat completion (from its logprobs).
fn tokens(reply: &Value) -> Vec<String> {
    reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs in {reply}"))
        .iter()
        .map(|t| t["token"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Rank 1's process, a child of the server.
fn rank1(server: &Server) -> u32 {
    let found = rank_children(server.pid(), 1);
    assert_eq!(found.len(), 1, "one rank 1: {found:?}\n{}", server.log());
    found[0]
}

#[test]
fn a_two_rank_server_answers_like_one_process() {
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    let single = Server::model(&["--max-batch", "1", "--no-probe"]);
    let expected = single.post("/v1/chat/completions", &greedy_chat(12));
    assert_eq!(expected.status, 200, "{}", expected.text);
    drop(single);
    let tp = Server::model(&["--hostfile", &hosts.to_string_lossy()]);
    let health = tp.get("/health");
    assert_eq!(health.json["distributed"]["ranks"], 2, "{}", health.text);
    assert_eq!(health.json["distributed"]["state"], "ok", "{}", health.text);
    let got = tp.post("/v1/chat/completions", &greedy_chat(12));
    assert_eq!(got.status, 200, "{}\n{}", got.text, tp.log());
    assert_eq!(tokens(&got.json), tokens(&expected.json), "greedy tokens");
    assert_eq!(
        got.json["choices"][0]["message"]["content"],
        expected.json["choices"][0]["message"]["content"]
    );
    // Hot reload: version 2 loads and passes its probe on both ranks, version 1 is retired
    // on both, and the next request (a fresh sequence) runs on version 2.
    let name = crate::support::model_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let reload = tp.post(&format!("/v1/models/{name}/reload"), &json!({}));
    assert_eq!(reload.json["version"], 2, "{}\n{}", reload.text, tp.log());
    assert_eq!(reload.json["verdict"], "ok", "{}", reload.text);
    let again = tp.post("/v1/chat/completions", &greedy_chat(12));
    assert_eq!(
        tokens(&again.json),
        tokens(&expected.json),
        "after the reload"
    );
    assert!(
        tp.log().contains("max-batch 8 → 1"),
        "the one-sequence limit is logged:\n{}",
        tp.log()
    );
    let status = tp
        .terminate(Duration::from_secs(30))
        .expect("the server stops");
    assert!(status.success(), "{status}\n{}", tp.log());
}

#[test]
fn a_killed_rank_takes_the_model_out_of_service() {
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    let server = Server::model(&["--hostfile", &hosts.to_string_lossy(), "--timeout", "60"]);
    // A long streamed generation is running when rank 1 dies.
    let mut body = greedy_chat(2000);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    let mut stream = EventStream::open(&server, "/v1/chat/completions", &body);
    assert_eq!(stream.status, 200);
    stream.next_data().expect("a first chunk");
    let (tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(stream.rest());
    });
    unsafe {
        libc::kill(rank1(&server) as i32, libc::SIGKILL);
    }
    let killed = Instant::now();
    wait_until(
        "/health reports the dead rank",
        Duration::from_secs(10),
        || server.get("/health").json["distributed"]["state"] == "rank-died",
    );
    eprintln!(
        "/health reported the dead rank after {:?}",
        killed.elapsed()
    );
    let rest = ended
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the request in flight hangs\n{}", server.log()));
    assert!(
        rest.iter().any(|d| d.contains("error")) || rest.last().is_some_and(|d| d == "[DONE]"),
        "the stream ends: {rest:?}"
    );
    let health = server.get("/health");
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(
        health.json["models"][0]["state"], "failed",
        "{}",
        health.text
    );
    let message = health.json["distributed"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("rank 1"), "{}", health.text);
    let refused = server.post("/v1/chat/completions", &greedy_chat(4));
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(
        refused.text.contains("rank 1") && refused.text.contains("rank-died"),
        "{}",
        refused.text
    );
    // The server stays up until it is stopped, then exits with the failure's code.
    let status = server
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the server hangs on SIGTERM\n{}", server.log()));
    assert!(!status.success(), "{status}");
}
