//! Malformed input on the real stdio (issue 12, item 4): garbage before a header, a length
//! that is not a number or is absurd, well-framed bodies that are not JSON-RPC. Each one
//! costs that message only: a body gets a JSON-RPC error, the next valid request is answered,
//! and the session still shuts down cleanly.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{file_uri, LspClient};
use crate::model::scratch;
use crate::protocol::CLEAN;

const T: Duration = Duration::from_secs(60);

fn framed(body: &str) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The error answer expected for a bad frame: its code and id.
struct Answer {
    code: i64,
    id: Value,
}

fn cases() -> Vec<(&'static str, Vec<u8>, Option<Answer>)> {
    let invalid = |id| Some(Answer { code: -32600, id });
    vec![
        (
            "garbage before a header",
            b"garbage\r\n\r\nand more: garbage".to_vec(),
            None,
        ),
        (
            "Content-Length: abc",
            b"Content-Length: abc\r\n\r\n{}".to_vec(),
            None,
        ),
        (
            "a negative length",
            b"Content-Length: -5\r\n\r\n{}".to_vec(),
            None,
        ),
        (
            "an absurd length",
            b"Content-Length: 1000000000000000\r\n\r\n{\"jsonrpc\":\"2.0\"}".to_vec(),
            None,
        ),
        (
            "a header line without a colon",
            b"Content-Length: 2\r\nbogus\r\n\r\n{}".to_vec(),
            None,
        ),
        ("[]", framed("[]"), invalid(Value::Null)),
        ("{}", framed("{}"), invalid(Value::Null)),
        ("null", framed("null"), invalid(Value::Null)),
        (
            "a request with a bad method",
            framed(r#"{"jsonrpc":"2.0","id":77,"method":5}"#),
            invalid(json!(77)),
        ),
        (
            "a body that is not JSON",
            framed("{\"jsonrpc\": "),
            Some(Answer {
                code: -32700,
                id: Value::Null,
            }),
        ),
    ]
}

#[test]
fn bad_frames_cost_one_message_not_the_session() {
    let dir = scratch();
    let path = dir.path().join("chat_template.jinja");
    std::fs::write(&path, CLEAN).unwrap();
    let uri = file_uri(&path);
    let mut c = LspClient::start(&[]);
    c.initialize(dir.path(), json!({"probe": false}));
    let m = c.mark();
    c.open(&uri, "jinja", 1, CLEAN);
    c.wait_diagnostics(m, &uri, Some(1), T);
    for (name, bytes, answer) in cases() {
        let m = c.mark();
        c.write_raw(&bytes);
        if let Some(a) = answer {
            let e = c
                .wait_for(m, T, |v| {
                    v.get("error").is_some() && v.get("method").is_none()
                })
                .value;
            assert_eq!(e["error"]["code"], a.code, "{name}: {e}");
            assert_eq!(e["id"], a.id, "{name}: {e}");
            assert_eq!(e["jsonrpc"], "2.0", "{name}: {e}");
        }
        // The next valid request is answered with a real result.
        let lenses = c
            .request(
                "textDocument/codeLens",
                json!({"textDocument": {"uri": uri}}),
            )
            .unwrap_or_else(|e| panic!("{name}: codeLens failed: {e}\n{}", c.stderr()));
        assert_eq!(
            lenses[0]["command"]["title"], "Preview render",
            "{name}: {lenses}"
        );
        assert!(c.try_status().is_none(), "{name}: rmlx-lsp ended");
    }
    // Every skip was logged with its reason.
    let stderr = c.stderr();
    assert!(
        stderr.contains("skipped") && stderr.contains("is not a length"),
        "{stderr}"
    );
    let status = c.shutdown_and_exit();
    assert_eq!(status.code(), Some(0), "rmlx-lsp exit status {status}");
}

#[test]
fn a_frame_split_across_writes_and_one_of_many_in_a_write_both_arrive() {
    let dir = scratch();
    let mut c = LspClient::start(&[]);
    c.initialize(dir.path(), Value::Null);
    // `[]` framed between two valid notifications in one write, then a request written a
    // few bytes at a time.
    let path = dir.path().join("chat_template.jinja");
    std::fs::write(&path, CLEAN).unwrap();
    let uri = file_uri(&path);
    let open = json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "jinja", "version": 1, "text": CLEAN}}});
    let change = json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": "{{ x"}]}});
    let mut burst = framed(&open.to_string());
    burst.extend(framed("[]"));
    burst.extend(framed(&change.to_string()));
    let m = c.mark();
    c.write_raw(&burst);
    let d = c.wait_diagnostics(m, &uri, Some(2), T).value;
    assert_eq!(
        d["params"]["diagnostics"][0]["code"], "rmlx::template::syntax",
        "{d}"
    );
    let req = json!({"jsonrpc": "2.0", "id": 500, "method": "textDocument/codeLens", "params": {"textDocument": {"uri": uri}}});
    let m = c.mark();
    for piece in framed(&req.to_string()).chunks(7) {
        c.write_raw(piece);
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = c.wait_for(m, T, |v| v["id"] == 500).value;
    assert!(r["result"].is_array(), "{r}");
    let status = c.shutdown_and_exit();
    assert_eq!(status.code(), Some(0), "rmlx-lsp exit status {status}");
}
