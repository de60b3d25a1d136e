//! Concurrency limits: a full queue answers 429 with Retry-After, a client that disconnects
//! mid-stream frees the model, a request past --timeout gets 504, and SIGTERM lets in-flight
//! streams finish.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn long_stream_body(max_tokens: usize) -> Value {
    let mut b = chat_body("Write a very long story about a dragon.", max_tokens);
    b["stream"] = json!(true);
    b["ignore_eos"] = json!(true);
    b
}

#[test]
fn queue_overflow_429_disconnect_frees_the_slot_and_sigterm_drains() {
    let dir = model_dir();
    let args = vec![
        dir.display().to_string(),
        "--queue-depth".into(),
        "1".into(),
        // One generation at a time, as this test's queue arithmetic assumes (batching has its
        // own 429 test in batching.rs).
        "--max-batch".into(),
        "1".into(),
        // The drain under test must not race the grace period on a slow machine.
        "--shutdown-timeout".into(),
        "600".into(),
    ];
    let s = Server::start(&args, &repo_root());
    s.wait_ready();

    // A: a long generation, running.
    let mut a = EventStream::open(&s, "/v1/chat/completions", &long_stream_body(2000));
    assert_eq!(a.status, 200);
    let first = a.next_data().expect("first chunk");
    assert!(first.contains("chat.completion.chunk"), "{first}");
    assert!(a.next_data().is_some(), "a content chunk");

    // B: queued behind A.
    let base = s.base.clone();
    let b = std::thread::spawn(move || {
        let started = Instant::now();
        let r = agent()
            .post(&format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(chat_body(CAPITAL_QUESTION, 2).to_string())
            .unwrap();
        (r.status().as_u16(), started.elapsed())
    });
    wait_until("B queued", Duration::from_secs(60), || {
        s.metric("rmlx_queue_depth", &[]) >= 1.0
    });

    // C: beyond the bound.
    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 2));
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(r.json["error"]["type"], "rate_limit_error");
    assert_eq!(r.json["error"]["code"], "queue_full");
    let rejected = s.metric("rmlx_requests_rejected_total", &["reason=\"queue-full\""]);
    assert_eq!(rejected, 1.0);

    // A's client goes away: its generation stops and B runs.
    drop(a);
    let (status, waited) = b.join().unwrap();
    assert_eq!(status, 200);
    assert!(waited < Duration::from_secs(240), "B waited {waited:?}");
    wait_until("A counted as cancelled", Duration::from_secs(30), || {
        s.metric("rmlx_requests_cancelled_total", &["reason=\"client-gone\""]) >= 1.0
    });
    let generated = s.metric("rmlx_generated_tokens_total", &[]);
    assert!(
        generated < 500.0,
        "A kept generating after its client left: {generated} tokens"
    );
    assert_eq!(s.metric("rmlx_queue_depth", &[]), 0.0);
    assert_eq!(s.metric("rmlx_running_requests", &[]), 0.0);

    // SIGTERM while a stream runs: the stream completes, then the process exits 0.
    let mut d = EventStream::open(&s, "/v1/chat/completions", &long_stream_body(12));
    assert!(d.next_data().is_some());
    let status = s.terminate(Duration::from_millis(1));
    assert!(
        status.is_none(),
        "the server exited with a request in flight"
    );
    let rest = d.rest();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("[DONE]"),
        "{rest:#?}\n{}",
        s.log()
    );
    let status = s
        .terminate(Duration::from_secs(60))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}\n{}", s.log());
    assert!(s.log().contains("Stopping"), "{}", s.log());
}

#[test]
fn sigterm_past_the_grace_period_exits_cleanly_mid_generation() {
    let dir = model_dir();
    let args = vec![
        dir.display().to_string(),
        "--shutdown-timeout".into(),
        "1".into(),
        "--no-probe".into(),
    ];
    let s = Server::start(&args, &repo_root());
    s.wait_ready();
    let mut a = EventStream::open(&s, "/v1/chat/completions", &long_stream_body(5000));
    assert_eq!(a.status, 200);
    assert!(a.next_data().is_some());
    assert!(a.next_data().is_some(), "a content chunk");
    // The model thread is inside a generation when the grace period ends: the process must
    // still exit with success, not crash tearing MLX down under that thread.
    let status = s
        .terminate(Duration::from_secs(60))
        .expect("exit after the grace period");
    assert!(status.success(), "{status}\n{}", s.log());
    assert!(s.log().contains("still running after 1 s"), "{}", s.log());
    let rest = a.rest();
    assert_ne!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:#?}");
}

#[test]
fn request_past_the_timeout_gets_504() {
    let dir = model_dir();
    let args = vec![
        dir.display().to_string(),
        "--timeout".into(),
        "8".into(),
        "--no-probe".into(),
    ];
    let s = Server::start(&args, &repo_root());
    s.wait_ready();
    let mut b = chat_body("Write a very long story about a dragon.", 2000);
    b["ignore_eos"] = json!(true);
    let started = Instant::now();
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json["error"]["type"], "timeout_error");
    assert!(started.elapsed() < Duration::from_secs(60));
    wait_until("the generation stopped", Duration::from_secs(60), || {
        s.metric("rmlx_requests_cancelled_total", &["reason=\"timeout\""]) >= 1.0
            && s.metric("rmlx_running_requests", &[]) == 0.0
    });
    // The model is free again.
    let r = s.post("/v1/chat/completions", &chat_body(CAPITAL_QUESTION, 1));
    assert_eq!(r.status, 200, "{}", r.text);
}
