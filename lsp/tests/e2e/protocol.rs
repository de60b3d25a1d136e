//! The protocol: diagnostics with exact UTF-16 ranges, versions and staleness, rmlx.toml,
//! configuration, hover, code lens, commands, quick fix, the probe on save, shutdown/exit.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{file_uri, is_diagnostics, LspClient};
use crate::model::{copy_model, scratch};

const T: Duration = Duration::from_secs(60);
/// Probes load a model (a debug build of the engine on 2 cores): generous.
const PROBE_T: Duration = Duration::from_secs(600);

/// A template with no findings at all (content parts handled, generation prompt).
pub const CLEAN: &str = "{%- for message in messages %}
{%- if message['content'] is string %}{% set content = message['content'] %}{% else %}{% set content = message['content'] | map(attribute='text') | join('') %}{% endif %}
{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
";

/// [`CLEAN`] with an unclosed `{{` on line 2.
pub const BROKEN: &str = "{%- for message in messages %}
{%- if message['content'] is string %}{% set content = message['content'] %}{% else %}{% set content = message['content'] | map(attribute='text') | join('') %}{% endif %}
{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
";

fn diags(msg: &Value) -> Vec<Value> {
    msg["params"]["diagnostics"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn codes(msg: &Value) -> Vec<String> {
    diags(msg)
        .iter()
        .map(|d| d["code"].as_str().unwrap_or("").to_string())
        .collect()
}

fn range(d: &Value) -> [u64; 4] {
    let r = &d["range"];
    [
        r["start"]["line"].as_u64().unwrap(),
        r["start"]["character"].as_u64().unwrap(),
        r["end"]["line"].as_u64().unwrap(),
        r["end"]["character"].as_u64().unwrap(),
    ]
}

fn start(dir: &Path, init: Value) -> LspClient {
    let mut c = LspClient::start(&[]);
    c.initialize(dir, init);
    c
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    file_uri(&p)
}

/// The probe diagnostic of the first publish for `uri` since `mark` that carries one.
fn probe_verdict(c: &LspClient, mark: usize, uri: &str) -> Value {
    let msg = c
        .wait_for(mark, PROBE_T, |v| {
            is_diagnostics(v, uri, None) && codes(v).iter().any(|c| c.starts_with("rmlx::probe::"))
        })
        .value;
    diags(&msg)
        .into_iter()
        .find(|d| d["code"].as_str().unwrap().starts_with("rmlx::probe::"))
        .unwrap()
}

fn assert_clean_exit(c: LspClient) {
    let status = c.shutdown_and_exit();
    assert_eq!(status.code(), Some(0), "rmlx-lsp exit status {status}");
}

#[test]
fn initialize_advertises_capabilities_and_exits_cleanly() {
    let dir = scratch();
    let mut c = LspClient::start(&[]);
    let init = c.initialize(dir.path(), Value::Null);
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16", "{init}");
    assert_eq!(caps["textDocumentSync"]["change"], 1, "full sync: {init}");
    assert_eq!(caps["hoverProvider"], true);
    assert_eq!(
        caps["executeCommandProvider"]["commands"],
        json!(["rmlx.previewRender", "rmlx.probe"])
    );
    assert_eq!(init["serverInfo"]["name"], "rmlx-lsp");
    assert_clean_exit(c);
}

#[test]
fn exit_without_shutdown_is_exit_code_1() {
    let dir = scratch();
    let mut c = LspClient::start(&[]);
    c.initialize(dir.path(), Value::Null);
    c.notify("exit", Value::Null);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.try_status() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
}

#[test]
fn broken_template_then_fixed() {
    let dir = scratch();
    let uri = write(dir.path(), "chat_template.jinja", BROKEN);
    let c = start(dir.path(), Value::Null);
    let m = c.mark();
    c.open(&uri, "jinja", 1, BROKEN);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    let d = diags(&msg);
    assert_eq!(d.len(), 1, "{msg}");
    let d = &d[0];
    assert_eq!(d["code"], "rmlx::template::syntax", "{d}");
    assert_eq!(d["source"], "rmlx");
    assert_eq!(d["severity"], 1);
    // The unclosed `{{-` expression on line 2: the lone `}` that should have been `}}`.
    let line2 = BROKEN.lines().nth(2).unwrap();
    let col = line2.rfind('}').unwrap() as u64;
    assert_eq!(range(d), [2, col, 2, col + 1], "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .starts_with("syntax error in chat template"),
        "{d}"
    );

    let m = c.mark();
    c.change(&uri, 2, CLEAN);
    let msg = c.wait_diagnostics(m, &uri, Some(2), T).value;
    assert_eq!(diags(&msg), Vec::<Value>::new(), "{msg}");

    // Closing the document clears whatever was published for it.
    let m = c.mark();
    c.change(&uri, 3, BROKEN);
    c.wait_diagnostics(m, &uri, Some(3), T);
    let m = c.mark();
    c.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": uri}}),
    );
    let msg = c.wait_diagnostics(m, &uri, None, T).value;
    assert_eq!(diags(&msg), Vec::<Value>::new(), "{msg}");
    assert_clean_exit(c);
}

#[test]
fn cargo_rmlx_lsp_starts_the_server() {
    // `cargo test --workspace` builds cargo-rmlx next to rmlx-lsp.
    let bin = crate::client::lsp_bin()
        .parent()
        .unwrap()
        .join(format!("cargo-rmlx{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it (`cargo build -p cargo-rmlx`, or run `cargo test --workspace`)",
        bin.display()
    );
    let dir = scratch();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["rmlx", "lsp", "--stdio"]);
    let mut c = LspClient::start_command(cmd);
    let init = c.initialize(dir.path(), Value::Null);
    assert_eq!(
        init["serverInfo"]["name"],
        "rmlx-lsp",
        "{init}\n{}",
        c.stderr()
    );
    assert_clean_exit(c);
}

#[test]
fn non_ascii_templates_get_utf16_columns() {
    let dir = scratch();
    // Emoji (2 UTF-16 units, 4 bytes), CJK (1 unit, 3 bytes) and `▁` (1 unit, 3 bytes) in
    // front of an unknown filter on the same line.
    let text = "{#- 日本語のテンプレート -#}\n{%- for message in messages %}{{ '😀中▁' + message['content'] | frobnicate }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let uri = write(dir.path(), "chat_template.jinja", text);
    let c = start(dir.path(), Value::Null);
    let m = c.mark();
    c.open(&uri, "jinja", 1, text);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    let d = diags(&msg)
        .into_iter()
        .find(|d| d["code"] == "rmlx::template::unknown-filter")
        .unwrap_or_else(|| panic!("no unknown-filter diagnostic: {msg}"));
    let line = text.lines().nth(1).unwrap();
    let byte = line.find("frobnicate").unwrap();
    let utf16 = line[..byte].encode_utf16().count() as u64;
    // 69 bytes but 63 UTF-16 units (and 62 chars) before the name.
    assert_eq!((byte, utf16), (69, 63));
    assert_eq!(range(&d), [1, 63, 1, 73], "{d}");
    assert_clean_exit(c);
}

#[test]
fn burst_of_changes_publishes_only_the_last_version() {
    let dir = scratch();
    let uri = write(dir.path(), "chat_template.jinja", CLEAN);
    let c = start(dir.path(), json!({"debounceMs": 100}));
    let m = c.mark();
    c.open(&uri, "jinja", 1, CLEAN);
    c.wait_diagnostics(m, &uri, Some(1), T);

    // 50 edits in one write, alternating clean and broken; the last one is broken.
    let mut burst = Vec::new();
    for v in 2..=51 {
        let text = if v % 2 == 1 { BROKEN } else { CLEAN };
        burst.extend(LspClient::change_bytes(&uri, v, text));
    }
    let m = c.mark();
    c.write_raw(&burst);
    let last = c.wait_diagnostics(m, &uri, Some(51), T).value;
    assert_eq!(codes(&last), vec!["rmlx::template::syntax"], "{last}");
    // A stale change (an older version) is ignored.
    c.change(&uri, 10, CLEAN);
    std::thread::sleep(Duration::from_millis(1500));
    let published: Vec<Value> = c
        .since(m)
        .into_iter()
        .map(|r| r.value)
        .filter(|v| is_diagnostics(v, &uri, None))
        .collect();
    assert_eq!(
        published.len(),
        1,
        "only version 51 may be published: {published:#?}"
    );
    assert_clean_exit(c);
}

#[test]
fn manifest_diagnostics_point_into_rmlx_toml() {
    let dir = scratch();
    let text = "[models.tiny]\nsource = \"models/missing.gguf\"\nquantise = true\n";
    let uri = write(dir.path(), "rmlx.toml", text);
    let c = start(dir.path(), Value::Null);
    let m = c.mark();
    c.open(&uri, "toml", 1, text);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    let d = diags(&msg);
    assert_eq!(codes(&msg), vec!["rmlx::manifest::unknown-key"], "{msg}");
    assert_eq!(range(&d[0]), [2, 0, 2, 8], "{msg}");
    assert!(
        d[0]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `quantize`"),
        "{msg}"
    );

    let fixed = text.replace("quantise", "quantize");
    let m = c.mark();
    c.change(&uri, 2, &fixed);
    let msg = c.wait_diagnostics(m, &uri, Some(2), T).value;
    assert_eq!(codes(&msg), vec!["rmlx::manifest::missing-source"], "{msg}");
    // The `source` value, quotes included.
    assert_eq!(range(&diags(&msg)[0]), [1, 9, 1, 30], "{msg}");
    assert_clean_exit(c);
}

#[test]
fn configuration_turns_advice_off() {
    let dir = scratch();
    let text =
        format!("{{% if system_hint is defined %}}{{{{ system_hint }}}}{{% endif %}}{CLEAN}");
    let uri = write(dir.path(), "chat_template.jinja", &text);
    let c = start(dir.path(), json!({"rmlx": {"debounceMs": 0}}));
    let m = c.mark();
    c.open(&uri, "jinja", 1, &text);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    let d = diags(&msg);
    assert_eq!(
        codes(&msg),
        vec!["rmlx::lint::undeclared-variable"],
        "{msg}"
    );
    assert_eq!(d[0]["severity"], 3, "advice is information: {msg}");

    let m = c.mark();
    c.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"rmlx": {"advice": false}}}),
    );
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    assert_eq!(diags(&msg), Vec::<Value>::new(), "{msg}");
    assert_clean_exit(c);
}

#[test]
fn preview_command_and_code_lens() {
    let dir = scratch();
    let uri = write(dir.path(), "chat_template.jinja", CLEAN);
    let mut c = start(
        dir.path(),
        json!({"samples": [{"name": "greeting", "messages": [{"role": "user", "content": "Bonjour ✨"}]}]}),
    );
    let m = c.mark();
    c.open(&uri, "jinja", 1, CLEAN);
    c.wait_diagnostics(m, &uri, Some(1), T);
    let lenses = c
        .request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": uri}}),
        )
        .unwrap();
    assert_eq!(lenses[0]["command"]["title"], "Preview render", "{lenses}");
    assert_eq!(lenses[0]["command"]["command"], "rmlx.previewRender");
    let args = lenses[0]["command"]["arguments"].clone();
    let out = c
        .request(
            "workspace/executeCommand",
            json!({"command": "rmlx.previewRender", "arguments": args}),
        )
        .unwrap();
    let samples = out["samples"].as_array().unwrap();
    let names: Vec<&str> = samples
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "single-turn",
            "system",
            "multi-turn",
            "tool-call",
            "content-parts",
            "assistant-last",
            "greeting"
        ]
    );
    assert_eq!(
        samples[0]["text"],
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        samples[6]["text"],
        "<|im_start|>user\nBonjour ✨<|im_end|>\n<|im_start|>assistant\n"
    );
    // No model: no token counts.
    assert!(samples[0].get("tokens").is_none(), "{out}");
    assert_clean_exit(c);
}

#[test]
fn probe_on_save_hover_and_quick_fix_with_the_model() {
    let dir = scratch();
    let model = copy_model(&dir.path().join("smollm2-q4"));
    let path = model.join("chat_template.jinja");
    let original = std::fs::read_to_string(&path).unwrap();
    let uri = file_uri(&path);
    let mut c = start(dir.path(), json!({"probeOnOpen": false, "debounceMs": 0}));

    // Lint with the model's tokenizer: a duplicated BOS, with its quick fix.
    let dup = format!("{{{{ bos_token }}}}{original}");
    let m = c.mark();
    c.open(&uri, "jinja", 1, &dup);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    let d = diags(&msg)
        .into_iter()
        .find(|d| d["code"] == "rmlx::lint::duplicate-bos")
        .unwrap_or_else(|| panic!("no duplicate-bos: {msg}"));
    assert_eq!(range(&d), [0, 0, 0, 15], "{d}");
    assert_eq!(d["severity"], 2);
    let related = d["relatedInformation"]
        .as_array()
        .expect("related information");
    assert!(
        related.iter().any(|r| r["location"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("/smollm2-q4/tokenizer_config.json")),
        "{d}"
    );
    let actions = c
        .request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": d["range"], "context": {"diagnostics": [d]}}),
        )
        .unwrap();
    assert_eq!(actions.as_array().unwrap().len(), 1, "{actions}");
    let a = &actions[0];
    assert_eq!(a["kind"], "quickfix");
    assert_eq!(a["title"], "Remove the duplicated `{{ bos_token }}`");
    let change = &a["edit"]["documentChanges"][0];
    assert_eq!(change["textDocument"]["version"], 1);
    assert_eq!(
        change["edits"][0],
        json!({"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 15}}, "newText": ""})
    );

    // Applying it (the text is back to the original) clears the finding.
    let m = c.mark();
    c.change(&uri, 2, &original);
    let msg = c.wait_diagnostics(m, &uri, Some(2), T).value;
    assert!(
        !codes(&msg).iter().any(|c| c == "rmlx::lint::duplicate-bos"),
        "{msg}"
    );

    // Hover: the seed conversation rendered, its token count under the model's tokenizer.
    let hover = c
        .request(
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": 0, "character": 3}}),
        )
        .unwrap();
    let md = hover["contents"]["value"].as_str().unwrap_or_default();
    assert!(md.contains("<|im_start|>user↵"), "{md}");
    assert!(
        md.contains("What is the capital of France?<|im_end|>↵"),
        "{md}"
    );
    assert!(md.contains("tokens** with smollm2-q4's tokenizer"), "{md}");
    assert!(md.contains("`<|im_start|>` (id 1) ×3"), "{md}");

    // Save: the probe runs on the editor's text, in the background, with progress.
    let m = c.mark();
    c.save(&uri);
    let p = probe_verdict(&c, m, &uri);
    assert_eq!(p["code"], "rmlx::probe::ok", "{p}");
    assert_eq!(p["severity"], 3, "{p}");
    assert_eq!(range(&p)[0], 0, "{p}");
    assert!(p["message"].as_str().unwrap().contains("Paris"), "{p}");
    let since: Vec<Value> = c.since(m).into_iter().map(|r| r.value).collect();
    assert!(
        since
            .iter()
            .any(|v| v["method"] == "window/workDoneProgress/create"),
        "no progress token requested"
    );
    let kinds: Vec<&str> = since
        .iter()
        .filter(|v| v["method"] == "$/progress")
        .filter_map(|v| v["params"]["value"]["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"begin"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");

    // An edited (unsaved to disk) template that drops the user's message: the probe uses
    // the editor's text, and the model no longer answers the seed question.
    let broken = original.replace("message['content']", "'Hello'");
    assert_ne!(broken, original);
    let m = c.mark();
    c.change(&uri, 3, &broken);
    // Its lint still carries the last verdict (of the last save); wait for it first.
    c.wait_diagnostics(m, &uri, Some(3), T);
    let m = c.mark();
    c.save(&uri);
    let p = probe_verdict(&c, m, &uri);
    assert_eq!(p["code"], "rmlx::probe::unexpected-answer", "{p}");
    assert_eq!(p["severity"], 1, "{p}");
    let (verdict, help) = p["message"]
        .as_str()
        .unwrap()
        .split_once("\nhelp: ")
        .unwrap();
    assert!(!verdict.contains("Paris"), "{p}");
    assert!(
        help.contains("does not contain \"Paris\""),
        "the evidence: {p}"
    );
    assert_clean_exit(c);
}

#[test]
fn a_template_broken_on_disk_is_probed_with_the_editors_fixed_text() {
    let dir = scratch();
    let model = copy_model(&dir.path().join("smollm2-q4"));
    let path = model.join("chat_template.jinja");
    let original = std::fs::read_to_string(&path).unwrap();
    // Saved broken: an expression left open at the end.
    let broken = format!("{original}{{{{ message['content'] ");
    std::fs::write(&path, &broken).unwrap();
    let uri = file_uri(&path);
    // Default settings: the probe runs on open.
    let mut c = start(dir.path(), json!({"debounceMs": 0}));
    let m = c.mark();
    c.open(&uri, "jinja", 1, &broken);
    // The probe on open loads the model (the template on disk plays no part) and does not
    // probe a buffer that does not compile.
    let log = c
        .wait_for(m, PROBE_T, |v| {
            v["method"] == "window/logMessage"
                && v["params"]["message"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("rmlx probe of"))
        })
        .value;
    let log = log["params"]["message"].as_str().unwrap();
    assert!(
        log.ends_with("not run: the template does not compile"),
        "{log}"
    );
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    assert!(
        codes(&msg).contains(&"rmlx::template::syntax".to_string()),
        "{msg}"
    );

    // Fixed in the editor, not saved: the error clears, and no probe failure is left behind.
    let m = c.mark();
    c.change(&uri, 2, &original);
    let msg = c.wait_diagnostics(m, &uri, Some(2), T).value;
    let left: Vec<String> = codes(&msg)
        .into_iter()
        .filter(|c| c == "rmlx::template::syntax" || c.starts_with("rmlx::probe::"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "{msg}");

    // "Probe again" (the code lens's command) probes the unsaved text: the verdict.
    let lenses = c
        .request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": uri}}),
        )
        .unwrap();
    let again = lenses
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["command"]["command"] == "rmlx.probe")
        .unwrap_or_else(|| panic!("no Probe again lens: {lenses}"))
        .clone();
    assert!(
        again["command"]["title"]
            .as_str()
            .unwrap()
            .starts_with("Probe again"),
        "{again}"
    );
    let m = c.mark();
    let queued = c
        .request(
            "workspace/executeCommand",
            json!({"command": "rmlx.probe", "arguments": again["command"]["arguments"]}),
        )
        .unwrap();
    assert_eq!(queued, json!({"queued": true}));
    let p = probe_verdict(&c, m, &uri);
    assert_eq!(p["code"], "rmlx::probe::ok", "{p}");
    assert!(p["message"].as_str().unwrap().contains("Paris"), "{p}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        broken,
        "never saved"
    );
    assert_clean_exit(c);
}

#[test]
fn probe_on_open_and_newer_saves_supersede_older_probes() {
    let dir = scratch();
    let model = copy_model(&dir.path().join("smollm2-q4"));
    let path = model.join("chat_template.jinja");
    let text = std::fs::read_to_string(&path).unwrap();
    let uri = file_uri(&path);
    // Default settings: probe on open and on save.
    let c = start(dir.path(), Value::Null);
    let m = c.mark();
    c.open(&uri, "jinja", 1, &text);
    // Two saves while the first probe is still loading the model.
    c.save(&uri);
    c.save(&uri);
    let is_probe = |v: &Value| {
        is_diagnostics(v, &uri, None) && codes(v).iter().any(|c| c.starts_with("rmlx::probe::"))
    };
    let first = c.wait_for(m, PROBE_T, is_probe).value;
    assert!(
        codes(&first).contains(&"rmlx::probe::ok".to_string()),
        "{first}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let since = c.since(m);
    let verdicts = since.iter().filter(|r| is_probe(&r.value)).count();
    // Whether an older probe was skipped in the queue or stopped after its model load
    // depends on timing; either way only the newest one publishes a verdict.
    assert_eq!(verdicts, 1, "superseded probes must not publish");
    assert_clean_exit(c);
}

#[test]
fn templates_named_in_rmlx_toml_are_served_with_their_model() {
    let dir = scratch();
    copy_model(&dir.path().join("models/smollm2"));
    let manifest =
        "[models.smol]\nsource = \"models/smollm2\"\nchat-template = \"templates/mine.jinja\"\n";
    write(dir.path(), "rmlx.toml", manifest);
    // `{{ bos_token }}` once, in front of ChatML: a duplicated BOS only with SmolLM2's
    // tokenizer (its BOS is `<|im_start|>`), so the finding proves the model link.
    let text = format!("{{{{ bos_token }}}}{CLEAN}");
    let mine = write(dir.path(), "templates/mine.jinja", &text);
    let other = write(dir.path(), "templates/other.jinja", &text);
    let c = start(dir.path(), json!({"probe": false}));
    let m = c.mark();
    c.open(&mine, "jinja", 1, &text);
    c.open(&other, "jinja", 1, &text);
    let msg = c.wait_diagnostics(m, &mine, Some(1), T).value;
    assert_eq!(codes(&msg), vec!["rmlx::lint::duplicate-bos"], "{msg}");
    let related = diags(&msg)[0]["relatedInformation"].to_string();
    assert!(
        related.contains("/models/smollm2/tokenizer_config.json"),
        "{msg}"
    );
    // A `*.jinja` that nothing names is not a chat template.
    let msg = c.wait_diagnostics(m, &other, Some(1), T).value;
    assert_eq!(diags(&msg), Vec::<Value>::new(), "{msg}");
    assert_clean_exit(c);
}

#[test]
fn bad_settings_warn_and_keep_the_defaults() {
    let dir = scratch();
    let mut c = LspClient::start(&[]);
    let m = c.mark();
    let init = c.initialize(dir.path(), json!({"debounceMs": "soon"}));
    assert_eq!(init["serverInfo"]["name"], "rmlx-lsp");
    let msg = c
        .wait_for(m, T, |v| v["method"] == "window/showMessage")
        .value;
    assert_eq!(msg["params"]["type"], 2, "a warning: {msg}");
    assert!(
        msg["params"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid rmlx-lsp settings"),
        "{msg}"
    );
    // The server works with its defaults.
    let uri = write(dir.path(), "chat_template.jinja", BROKEN);
    let m = c.mark();
    c.open(&uri, "jinja", 1, BROKEN);
    let msg = c.wait_diagnostics(m, &uri, Some(1), T).value;
    assert_eq!(codes(&msg), vec!["rmlx::template::syntax"], "{msg}");
    assert_clean_exit(c);
}
