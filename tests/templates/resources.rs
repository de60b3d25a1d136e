//! Templates that try to exhaust memory, stack or time (issue 12 item 3): each reproducer
//! runs through the real `cargo rmlx render` — and `lint`, which the language server shares
//! — under a 2 GiB address-space limit (inherited by the template sandbox's workers) and a
//! time bound, and must end with a located `rmlx::template::*` error naming the file, not
//! a signal. Before the template limits, every one of them aborted, overflowed the stack
//! or ran for minutes.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::bad_inputs::{assert_fails, lint, messages, EXIT_LINT_ERRORS, EXIT_USAGE};
use crate::support::{bin, json_lines, run_cmd_with, scratch_dir, write, Confine, Run};

const TWO_GIB: u64 = 2 << 30;
const LIMIT: Duration = Duration::from_secs(30);
const RESOURCES: &str = "rmlx::template::resources";

/// `render` of `src` (saved as `name`) with a 2 GiB address-space limit.
fn render_confined(dir: &Path, name: &str, src: &str) -> Run {
    let t = write(dir, name, src);
    let c = write(dir, "c.json", messages().to_string());
    let args: [&std::ffi::OsStr; 7] = [
        "--color".as_ref(),
        "never".as_ref(),
        "render".as_ref(),
        "--template".as_ref(),
        t.as_os_str(),
        "--context".as_ref(),
        c.as_os_str(),
    ];
    run_cmd_with(
        bin(),
        &args,
        None,
        Duration::from_secs(120),
        &Confine {
            address_space: Some(TWO_GIB),
            ..Confine::default()
        },
    )
}

/// `src` fails to render with `code`, located at line 1 of its file (`name:1:`), and lint
/// reports the same code.
fn assert_limited(name: &str, src: &str, code: &str) {
    let dir = scratch_dir();
    let run = render_confined(dir.path(), name, src);
    let at = format!("{name}:1:");
    assert_fails(&run, EXIT_USAGE, &[code, &at], LIMIT, name);
    let run = lint(&dir.path().join(name));
    assert_fails(
        &run,
        EXIT_LINT_ERRORS,
        &[code],
        Duration::from_secs(60),
        name,
    );
}

#[test]
fn zfill_huge_width() {
    assert_limited("zfill.jinja", "{{ 'x'.zfill(10**12) }}", RESOURCES);
}

#[test]
fn padding_methods_huge_width() {
    assert_limited("ljust.jinja", "{{ 'x'.ljust(10**12) }}", RESOURCES);
    assert_limited("rjust.jinja", "{{ 'x'.rjust(10**12, '*') }}", RESOURCES);
    assert_limited("center.jinja", "{{ 'x'.center(10**12) }}", RESOURCES);
    assert_limited("tabs.jinja", "{{ 'a\\tb'.expandtabs(10**12) }}", RESOURCES);
    assert_limited("indent.jinja", "{{ 'a\\nb'|indent(10**12) }}", RESOURCES);
}

#[test]
fn format_huge_width() {
    assert_limited(
        "fmt.jinja",
        "{{ '{:>1000000000000}'.format(1) }}",
        RESOURCES,
    );
    assert_limited(
        "fmtp.jinja",
        "{{ '%.1000000000000f'|format(1.5) }}",
        RESOURCES,
    );
}

#[test]
fn batch_and_tojson_huge_counts() {
    assert_limited(
        "batch.jinja",
        "{{ [1, 2]|batch(10**12, 'x')|list }}",
        RESOURCES,
    );
    assert_limited("slice.jinja", "{{ [1, 2]|slice(10**12)|list }}", RESOURCES);
    assert_limited(
        "tojson.jinja",
        "{{ {'a': [1]}|tojson(indent=10**9) }}",
        RESOURCES,
    );
    // Without a fill value a huge batch size is harmless in jinja2 (one batch): same here.
    let dir = scratch_dir();
    let run = render_confined(dir.path(), "b.jinja", "{{ [1, 2]|batch(10**12)|list }}");
    run.assert_sane("batch without fill");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout_text(), "[[1, 2]]");
}

#[test]
fn replace_and_join_amplifiers() {
    assert_limited(
        "replace.jinja",
        "{{ ('a' * 100000).replace('', 'b' * 100000) }}",
        RESOURCES,
    );
    assert_limited(
        "replacef.jinja",
        "{{ ('a' * 100000)|replace('', 'b' * 100000) }}",
        RESOURCES,
    );
    assert_limited(
        "join.jinja",
        "{{ ('b' * 100000).join('a' * 100000) }}",
        RESOURCES,
    );
    assert_limited(
        "joinf.jinja",
        "{{ ('a' * 100000)|join('b' * 100000) }}",
        RESOURCES,
    );
}

#[test]
fn namespace_cycle() {
    assert_limited(
        "ns.jinja",
        "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns }}",
        RESOURCES,
    );
    assert_limited(
        "ns2.jinja",
        "{% set ns = namespace(a=[]) %}{% set ns.a = [{'x': ns}] %}{{ ns.a|tojson }}",
        RESOURCES,
    );
    // A namespace nested one level deeper on every iteration.
    assert_limited(
        "deep.jinja",
        "{% set ns = namespace(a=[]) %}{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}{{ ns.a }}",
        RESOURCES,
    );
}

#[test]
fn operator_chain_of_15000_terms() {
    let src = format!("{{{{ 1{} }}}}", "+1".repeat(15_000));
    assert_limited("sum.jinja", &src, RESOURCES);
    let src = format!("{{{{ 'a'{} }}}}", "|trim".repeat(15_000));
    assert_limited("filters.jinja", &src, RESOURCES);
}

#[test]
fn string_doubling_loop() {
    // minijinja's own `~` builds the string: only the sandbox's memory limit stops it.
    let dir = scratch_dir();
    let src = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let run = render_confined(dir.path(), "double.jinja", src);
    assert_fails(
        &run,
        EXIT_USAGE,
        &[RESOURCES, "double.jinja"],
        LIMIT,
        "doubling",
    );
    let src =
        "{% set s = 'x' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}";
    let run = render_confined(dir.path(), "double2.jinja", src);
    run.assert_sane("loop-scoped doubling");
    assert!(run.elapsed < LIMIT, "took {:?}", run.elapsed);
    assert!(
        run.code == Some(0) || run.stderr.contains(RESOURCES),
        "{}",
        run.describe()
    );
}

#[test]
fn output_over_the_limit() {
    // 100,000 × 1 MB of output: stopped at 64 MiB, located at the emitting tag.
    assert_limited(
        "out.jinja",
        "{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
        RESOURCES,
    );
}

/// One process renders a batch in which two cases end their sandbox worker; every other
/// case still renders (a fresh worker takes over), each failure is reported in its case.
#[test]
fn batch_survives_killed_workers() {
    let dir = scratch_dir();
    let good = write(dir.path(), "good.jinja", "{{ messages[0].content }}");
    let bomb = write(
        dir.path(),
        "bomb.jinja",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    );
    let ctx = messages();
    let mut text = String::new();
    for (i, t) in [&good, &bomb, &good, &bomb, &good].iter().enumerate() {
        text.push_str(&json!({"id": i, "template": t, "context": ctx}).to_string());
        text.push('\n');
    }
    let cases = write(dir.path(), "cases.jsonl", text);
    let args: [&std::ffi::OsStr; 5] = [
        "--color".as_ref(),
        "never".as_ref(),
        "render".as_ref(),
        "--batch".as_ref(),
        cases.as_os_str(),
    ];
    let confine = Confine {
        address_space: Some(TWO_GIB),
        ..Confine::default()
    };
    let run = run_cmd_with(bin(), &args, None, Duration::from_secs(120), &confine);
    run.assert_sane("batch");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let lines = json_lines(&run.stdout_text());
    assert_eq!(lines.len(), 5, "{}", run.describe());
    for (i, line) in lines.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(line["ok"], true, "case {i}: {line}");
            assert_eq!(line["output"], "What is the capital of France?");
        } else {
            assert_eq!(line["ok"], false, "case {i}: {line}");
            assert_eq!(line["code"], RESOURCES, "case {i}: {line}");
        }
    }
}
