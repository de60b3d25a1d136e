//! Broken and hostile inputs fail cleanly through the binary: a clear report, the
//! documented exit code, no panic, bounded time.

use std::time::Duration;

use serde_json::json;

use crate::support::{rmlx, scratch_dir, write, Run};

pub const EXIT_LINT_ERRORS: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

pub fn messages() -> serde_json::Value {
    json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": true,
        "bos_token": "<s>",
    })
}

fn render(template: &std::path::Path, context: &std::path::Path) -> Run {
    rmlx([
        "render".as_ref(),
        "--template".as_ref(),
        template.as_os_str(),
        "--context".as_ref(),
        context.as_os_str(),
    ])
}

pub fn lint(template: &std::path::Path) -> Run {
    rmlx(["lint".as_ref(), template.as_os_str()])
}

/// Clean failure: exit `code`, no panic, bounded time, each needle in stderr.
pub fn assert_fails(run: &Run, code: i32, needles: &[&str], limit: Duration, what: &str) {
    run.assert_sane(what);
    assert_eq!(
        run.code,
        Some(code),
        "{what}: exit code\n{}",
        run.describe()
    );
    assert!(
        run.elapsed < limit,
        "{what}: took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
    // miette wraps long messages; compare against the report with its line breaks and
    // gutters (`|`) folded into single spaces.
    let folded = run
        .stderr
        .lines()
        .map(|l| l.trim().trim_start_matches('|').trim())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    for n in needles {
        assert!(
            folded.contains(&n.to_lowercase()),
            "{what}: stderr should mention {n:?}\n{}",
            run.describe()
        );
    }
}

#[test]
fn template_not_utf8() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "latin1.jinja",
        b"{{ bos_token }}caf\xe9\n{{ x }}".as_slice(),
    );
    let c = write(dir.path(), "c.json", messages().to_string());
    let needles = [
        "rmlx::template::encoding",
        "not utf-8",
        "0xe9",
        "line 1, column 19",
        "latin1.jinja",
    ];
    assert_fails(
        &render(&t, &c),
        EXIT_USAGE,
        &needles,
        Duration::from_secs(30),
        "render",
    );
    assert_fails(
        &lint(&t),
        EXIT_LINT_ERRORS,
        &needles,
        Duration::from_secs(30),
        "lint",
    );
}

#[test]
fn endless_loop_range() {
    // jinja2's sandbox refuses ranges over 100000 items (OverflowError); so does rmlx.
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "loop.jinja",
        "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    );
    let c = write(dir.path(), "c.json", messages().to_string());
    let needles = ["range", "loop.jinja:1:"];
    assert_fails(
        &render(&t, &c),
        EXIT_USAGE,
        &needles,
        Duration::from_secs(30),
        "render",
    );
    assert_fails(
        &lint(&t),
        EXIT_LINT_ERRORS,
        &["range"],
        Duration::from_secs(60),
        "lint",
    );
}

#[test]
fn endless_nested_loops_run_out_of_fuel() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "nested.jinja",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    );
    let c = write(dir.path(), "c.json", messages().to_string());
    let needles = ["rmlx::template::fuel-exhausted", "nested.jinja:1:"];
    assert_fails(
        &render(&t, &c),
        EXIT_USAGE,
        &needles,
        Duration::from_secs(30),
        "render",
    );
    assert_fails(
        &lint(&t),
        EXIT_LINT_ERRORS,
        &["rmlx::template::fuel-exhausted"],
        Duration::from_secs(60),
        "lint",
    );
}

#[test]
fn recursion_without_end() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "recurse.jinja",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    );
    let c = write(dir.path(), "c.json", messages().to_string());
    let needles = ["recursion", "recurse.jinja:1:"];
    assert_fails(
        &render(&t, &c),
        EXIT_USAGE,
        &needles,
        Duration::from_secs(30),
        "render",
    );
    assert_fails(
        &lint(&t),
        EXIT_LINT_ERRORS,
        &["recursion"],
        Duration::from_secs(60),
        "lint",
    );
}

#[test]
fn ten_megabyte_template() {
    // 10 MB: a real template followed by lots of literal text and expressions.
    let dir = scratch_dir();
    let mut src = String::from(crate::lint_checks::GOOD);
    let chunk = "Lorem ipsum dolor sit amet {{ messages | length }} consectetur {# note #}\n";
    while src.len() < 10 * 1024 * 1024 {
        src.push_str(chunk);
    }
    let t = write(dir.path(), "big.jinja", &src);
    let c = write(dir.path(), "c.json", messages().to_string());
    let run = render(&t, &c);
    run.assert_sane("render 10 MB");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(60),
        "render took {:?}",
        run.elapsed
    );
    assert!(
        run.stdout.len() > 4 * 1024 * 1024,
        "output {} bytes",
        run.stdout.len()
    );
    let run = lint(&t);
    run.assert_sane("lint 10 MB");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(120),
        "lint took {:?}",
        run.elapsed
    );
    // And a 10 MB template with a syntax error at its very end is located there.
    let mut broken = src.clone();
    broken.push_str("{% endif %}");
    let t = write(dir.path(), "big-broken.jinja", &broken);
    let run = lint(&t);
    assert_fails(
        &run,
        EXIT_LINT_ERRORS,
        &["rmlx::template::syntax", "endif"],
        Duration::from_secs(120),
        "lint 10 MB broken",
    );
}

#[test]
fn context_not_an_object() {
    let dir = scratch_dir();
    let t = write(dir.path(), "t.jinja", "{{ messages }}");
    for (name, text, kind) in [
        ("array.json", "[{\"role\": \"user\"}]", "an array"),
        ("string.json", "\"hello\"", "a string"),
        ("null.json", "null", "null"),
    ] {
        let c = write(dir.path(), name, text);
        assert_fails(
            &render(&t, &c),
            EXIT_USAGE,
            &[
                "rmlx::template::context",
                "must be a json object",
                kind,
                name,
            ],
            Duration::from_secs(30),
            name,
        );
    }
    // Not JSON at all: located at the bad character.
    let c = write(dir.path(), "broken.json", "{\"messages\": [}\n");
    assert_fails(
        &render(&t, &c),
        EXIT_USAGE,
        &[
            "rmlx::template::context",
            "not valid json",
            "broken.json:1:",
        ],
        Duration::from_secs(30),
        "broken json",
    );
    // Missing files are reported, not panicked on.
    let missing = dir.path().join("missing.json");
    assert_fails(
        &render(&t, &missing),
        EXIT_USAGE,
        &["missing.json"],
        Duration::from_secs(30),
        "missing context",
    );
}
