use super::*;

use serde_json::json;

const PING: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;

fn frames(input: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::default();
    d.push(input);
    let mut out = Vec::new();
    while let Some(f) = d.next_frame() {
        out.push(f);
    }
    out.extend(d.finish());
    out
}

fn bodies(input: &[u8]) -> Vec<Vec<u8>> {
    frames(input)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Body(b) => Some(b),
            Frame::Skipped { .. } => None,
        })
        .collect()
}

fn skipped(input: &[u8]) -> Vec<String> {
    frames(input)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Skipped { why, .. } => Some(why),
            Frame::Body(_) => None,
        })
        .collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn well_framed_messages_pass_byte_by_byte() {
    let input = cat(&[
        &encode(PING),
        b"content-length: 2\nContent-Type: application/vscode-jsonrpc; charset=utf-8\n\n{}",
    ]);
    let mut d = Decoder::default();
    let mut got = Vec::new();
    for b in &input {
        d.push(std::slice::from_ref(b));
        while let Some(f) = d.next_frame() {
            got.push(f);
        }
    }
    assert_eq!(
        got,
        vec![Frame::Body(PING.to_vec()), Frame::Body(b"{}".to_vec())]
    );
    assert_eq!(d.finish(), None);
}

#[test]
fn garbage_before_a_header_is_skipped() {
    let input = cat(&[b"hello\r\n\r\nnot a header", &encode(PING)]);
    assert_eq!(bodies(&input), vec![PING.to_vec()]);
    assert_eq!(
        skipped(&input),
        vec!["bytes before a `Content-Length` header"]
    );
    // Garbage with no header at all is dropped as it comes, keeping a possible header start.
    let mut d = Decoder::default();
    d.push(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxContent-Len");
    assert!(matches!(
        d.next_frame(),
        Some(Frame::Skipped { bytes: 27, .. })
    ));
    assert_eq!(d.next_frame(), None);
    d.push(&encode(PING)[11..]);
    assert!(matches!(
        d.next_frame(),
        Some(Frame::Skipped { bytes: 3, .. })
    ));
    assert_eq!(d.next_frame(), Some(Frame::Body(PING.to_vec())));
}

#[test]
fn bad_lengths_are_skipped_and_the_next_frame_read() {
    for bad in [
        &b"Content-Length: abc\r\n\r\n"[..],
        b"Content-Length: -1\r\n\r\n{}",
        b"Content-Length: +2\r\n\r\n{}",
        b"Content-Length: 99999999999999999999999\r\n\r\n",
        b"Content-Length:\r\n\r\n",
        b"Content-Length: 2\r\ngarbage line\r\n\r\n{}",
        b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    ] {
        let input = cat(&[bad, &encode(PING)]);
        assert_eq!(
            bodies(&input),
            vec![PING.to_vec()],
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(!skipped(&input).is_empty());
    }
    let huge = format!("Content-Length: {}\r\n\r\n", MAX_BODY + 1);
    let input = cat(&[huge.as_bytes(), &encode(PING)]);
    assert_eq!(bodies(&input), vec![PING.to_vec()]);
    assert!(
        skipped(&input)[0].contains("over the limit"),
        "{:?}",
        skipped(&input)
    );
}

#[test]
fn a_header_that_never_ends_is_given_up() {
    let mut d = Decoder::default();
    d.push(b"Content-Length: 5");
    assert_eq!(
        d.next_frame(),
        None,
        "an incomplete header waits for more input"
    );
    d.push(&vec![b' '; MAX_HEADER]);
    assert_eq!(
        d.next_frame(),
        Some(Frame::Skipped {
            bytes: HEADER.len(),
            why: "a header block that does not end".into()
        })
    );
    while let Some(f) = d.next_frame() {
        assert!(matches!(f, Frame::Skipped { .. }), "{f:?}");
    }
    d.push(&encode(PING));
    let mut got = Vec::new();
    while let Some(f) = d.next_frame() {
        got.push(f);
    }
    assert_eq!(got.last(), Some(&Frame::Body(PING.to_vec())));
}

#[test]
fn a_cut_short_body_is_reported_at_the_end() {
    let f = frames(b"Content-Length: 10\r\n\r\n{}");
    assert_eq!(
        f,
        vec![Frame::Skipped {
            bytes: 2,
            why: "a body cut short (2 of 10 bytes)".into()
        }]
    );
}

fn answer(body: &[u8]) -> Option<Value> {
    reject(body).map(|r| serde_json::to_value(r).unwrap())
}

#[test]
fn json_rpc_messages_are_accepted() {
    for ok in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "exit"}),
        json!({"jsonrpc": "2.0", "id": "a", "result": null}),
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "no"}}),
    ] {
        assert_eq!(answer(ok.to_string().as_bytes()), None, "{ok}");
    }
}

#[test]
fn other_bodies_get_a_json_rpc_error() {
    let invalid = |id: Value| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "Invalid Request: not a JSON-RPC 2.0 request, notification or response"}});
    for bad in [
        "[]",
        "{}",
        "null",
        "42",
        "\"x\"",
        r#"{"jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"1.0","id":1,"result":0}"#,
    ] {
        assert_eq!(answer(bad.as_bytes()), Some(invalid(Value::Null)), "{bad}");
    }
    // A request whose fields are wrong is answered under its id.
    for (bad, id) in [
        (r#"{"jsonrpc":"2.0","id":9,"method":5}"#, json!(9)),
        (r#"{"jsonrpc":"1.0","id":"r","method":"x"}"#, json!("r")),
        (r#"{"id":{"x":1},"method":"x"}"#, Value::Null),
    ] {
        assert_eq!(answer(bad.as_bytes()), Some(invalid(id)), "{bad}");
    }
    for bad in ["", "{", "\u{feff}{}", "Content-Length: 5"] {
        let a = answer(bad.as_bytes()).unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(a["error"]["code"], -32700, "{bad:?}: {a}");
        assert_eq!(a["id"], Value::Null);
    }
    let a = answer(b"\xff\xfe").unwrap();
    assert_eq!(a["error"]["code"], -32700, "{a}");
}

/// The whole layer on in-memory pipes, with an echo "server" that answers every request.
#[tokio::test]
async fn answers_never_split_the_servers_frames() {
    let (client, input) = tokio::io::duplex(1 << 16);
    let (output, mut from_layer) = tokio::io::duplex(1 << 20);
    let echo = |mut rx: DuplexStream, mut tx: DuplexStream| async move {
        let mut d = Decoder::default();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            d.push(&buf[..n]);
            while let Some(Frame::Body(b)) = d.next_frame() {
                let v: Value = serde_json::from_slice(&b).unwrap();
                let big = "x".repeat(100_000);
                let reply = json!({"jsonrpc": "2.0", "id": v["id"], "result": big});
                // Written in small pieces, as a transport may.
                for piece in encode(reply.to_string().as_bytes()).chunks(777) {
                    tx.write_all(piece).await.unwrap();
                }
            }
        }
    };
    let mut writer = client;
    let feed = tokio::spawn(async move {
        for i in 0..20 {
            let ok = json!({"jsonrpc": "2.0", "id": i, "method": "ping"}).to_string();
            writer.write_all(&encode(ok.as_bytes())).await.unwrap();
            writer.write_all(&encode(b"[]")).await.unwrap();
        }
    });
    let read = tokio::spawn(async move {
        let mut all = Vec::new();
        from_layer.read_to_end(&mut all).await.unwrap();
        all
    });
    let layer = tokio::spawn(serve(input, output, echo, std::future::pending()));
    feed.await.unwrap();
    layer.await.unwrap();
    let all = read.await.unwrap();
    let msgs: Vec<Value> = bodies(&all)
        .iter()
        .map(|b| serde_json::from_slice(b).expect("every frame is whole JSON"))
        .collect();
    let errors = msgs.iter().filter(|m| m["error"]["code"] == -32600).count();
    let mut ids: Vec<i64> = msgs.iter().filter_map(|m| m["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!(errors, 20);
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert_eq!(skipped(&all), Vec::<String>::new());
}
