//! Templates that exhaust memory or stack, saved as `chat_template.jinja` under
//! `serve --watch` (issue 12 item 3): the new version fails its probe with
//! `rmlx::template::resources`, the server stays up and keeps serving the old version.

use std::fs;
use std::time::Duration;

use crate::support::*;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn template_bombs_saved_under_watch_keep_the_old_version_serving() {
    let scratch = scratch_dir();
    let dir = copy_model(scratch.path());
    let tpl = dir.join("chat_template.jinja");
    let s = start_watching(&dir, scratch.path());
    let before = s.post("/v1/chat/completions", &chat_body("Hi", 4));
    assert_eq!(before.status, 200, "{}", before.text);

    let bombs = [
        // minijinja's own `~`: only the sandbox worker's memory limit stops it.
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}".to_string(),
        "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns }}".to_string(),
        format!("{{{{ 1{} }}}}", "+1".repeat(15_000)),
        "{{ 'x'.zfill(10**12) }}".to_string(),
    ];
    for (i, bomb) in bombs.iter().enumerate() {
        fs::write(&tpl, bomb).expect("save the template");
        wait_until("the failed reload", RELOAD_TIMEOUT, || {
            s.metric("rmlx_reloads_total", &["result=\"failed\""]) >= (i + 1) as f64
        });
        let m = s.get("/v1/models").json["data"][0].clone();
        assert_eq!(m["state"], "ready", "bomb {i}: {m}\n{}", s.log());
        let err = m["last_error"].to_string();
        assert!(
            err.contains("rmlx::template::resources") || err.contains("resource"),
            "bomb {i}: {m}"
        );
        let r = s.post("/v1/chat/completions", &chat_body("Hi", 4));
        assert_eq!(r.status, 200, "bomb {i}: {}\n{}", r.text, s.log());
        assert_eq!(s.get("/health").status, 200);
    }
}
