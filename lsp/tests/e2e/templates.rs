//! Templates that exhaust memory or stack, opened in the editor (issue 12 item 3): each
//! gets a `rmlx::template::resources` diagnostic, the server stays up, answers the next
//! document and exits cleanly.

use std::time::Duration;

use serde_json::Value;

use crate::client::{file_uri, LspClient};
use crate::model::scratch;
use crate::protocol::CLEAN;

const T: Duration = Duration::from_secs(120);

#[test]
fn template_bombs_are_diagnosed_and_the_server_survives() {
    let dir = scratch();
    let mut c = LspClient::start(&[]);
    c.initialize(dir.path(), Value::Null);
    let bombs = [
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}".to_string(),
        "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns }}".to_string(),
        format!("{{{{ 1{} }}}}", "+1".repeat(15_000)),
        "{{ ('a' * 100000).replace('', 'b' * 100000) }}".to_string(),
    ];
    for (i, bomb) in bombs.iter().enumerate() {
        let path = template_in(dir.path(), &format!("bomb{i}"));
        std::fs::write(&path, bomb).unwrap();
        let uri = file_uri(&path);
        let m = c.mark();
        c.open(&uri, "jinja", 1, bomb);
        let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
        assert!(
            msg.to_string().contains("rmlx::template::resources"),
            "bomb {i}: {msg}\n{}",
            c.stderr()
        );
        assert!(
            c.try_status().is_none(),
            "rmlx-lsp ended on bomb {i}\n{}",
            c.stderr()
        );
    }
    let path = template_in(dir.path(), "clean");
    std::fs::write(&path, CLEAN).unwrap();
    let uri = file_uri(&path);
    let m = c.mark();
    c.open(&uri, "jinja", 1, CLEAN);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    assert_eq!(msg["params"]["diagnostics"], serde_json::json!([]), "{msg}");
    let status = c.shutdown_and_exit();
    assert_eq!(status.code(), Some(0), "rmlx-lsp exit status {status}");
}

/// `<root>/<name>/chat_template.jinja` (the name the server lints without any configuration).
fn template_in(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("chat_template.jinja")
}
