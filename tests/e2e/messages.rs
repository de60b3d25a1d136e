//! Machine-readable output the cargo way: with `--message-format json` every subcommand
//! that has it prints only JSON objects on stdout, one per line, each with a `reason`; errors
//! become `diagnostic` messages. Also the global flags: `-q` with `-v` is a usage error, and
//! color follows `--color`, `NO_COLOR` and `CLICOLOR_FORCE` as in cargo.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{bin, converted, rmlx, run_command, scratch_dir, smollm2_gguf, Run, Variant};

/// The JSON messages of a run; fails unless every stdout line is an object with a string
/// `reason`.
fn messages(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{}", run.describe()));
            assert!(
                v["reason"].is_string(),
                "a message without `reason`: {line}\n{}",
                run.describe()
            );
            v
        })
        .collect()
}

fn reasons(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .filter_map(|m| m["reason"].as_str())
        .collect()
}

fn json_run(args: &[&std::ffi::OsStr]) -> (Run, Vec<Value>) {
    let run = rmlx(
        args.iter()
            .copied()
            .chain(["--message-format".as_ref(), "json".as_ref()]),
    );
    let msgs = messages(&run);
    (run, msgs)
}

#[test]
fn generate_probe_and_bench_print_reasoned_messages() {
    let dir = converted(Variant::Q4);
    let d = dir.as_os_str();
    let (run, msgs) = json_run(&[
        "generate".as_ref(),
        d,
        "-p".as_ref(),
        "Hi".as_ref(),
        "-n".as_ref(),
        "2".as_ref(),
    ]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(reasons(&msgs), ["generation"], "{}", run.describe());
    for key in ["prompt_ids", "generated_ids", "text", "steps"] {
        assert!(
            msgs[0].get(key).is_some(),
            "generation lacks `{key}`: {}",
            msgs[0]
        );
    }

    let (run, msgs) = json_run(&["probe".as_ref(), d]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(reasons(&msgs), ["probe-verdict"], "{}", run.describe());
    for key in [
        "model",
        "verdict",
        "answer",
        "prompt_ids",
        "steps",
        "evidence",
    ] {
        assert!(
            msgs[0].get(key).is_some(),
            "probe-verdict lacks `{key}`: {}",
            msgs[0]
        );
    }

    let (run, msgs) = json_run(&[
        "bench".as_ref(),
        d,
        "--prompt-tokens".as_ref(),
        "4".as_ref(),
        "--decode-tokens".as_ref(),
        "2".as_ref(),
        "--repeat".as_ref(),
        "1".as_ref(),
    ]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(
        reasons(&msgs),
        ["bench-throughput", "bench-probe"],
        "{}",
        run.describe()
    );
    assert_eq!(msgs[0]["kind"], "throughput");
}

#[test]
fn convert_build_and_lint_print_reasoned_messages() {
    let scratch = scratch_dir();
    let gguf = smollm2_gguf();
    let out = scratch.path().join("converted");
    let (run, msgs) = json_run(&[
        "convert".as_ref(),
        gguf.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--keep-quantized".as_ref(),
    ]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(reasons(&msgs), ["convert-finished"], "{}", run.describe());
    assert_eq!(msgs[0]["success"], true);
    assert!(
        !run.stderr.contains("Converting"),
        "no status lines in JSON mode: {}",
        run.describe()
    );

    let manifest = scratch.path().join("rmlx.toml");
    std::fs::write(
        &manifest,
        format!(
            "[models.small]\nsource = {:?}\n",
            gguf.display().to_string()
        ),
    )
    .expect("write rmlx.toml");
    let build = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "build".as_ref(),
            "--manifest-path".as_ref(),
            manifest.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        json_run(&args)
    };
    let (run, msgs) = build(&[]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(
        reasons(&msgs),
        ["model-built", "build-finished"],
        "{}",
        run.describe()
    );
    assert_eq!(msgs[0]["name"], "small");
    assert_eq!(msgs[0]["fresh"], false);
    assert_eq!(msgs[1]["success"], true);
    let (run, msgs) = build(&[]);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(msgs[0]["fresh"], true, "{}", run.describe());

    // A failing build: a diagnostic message and an unsuccessful build-finished.
    let (run, msgs) = build(&["no-such-model"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert_eq!(
        reasons(&msgs),
        ["diagnostic", "build-finished"],
        "{}",
        run.describe()
    );
    assert_eq!(msgs[0]["severity"], "error");
    assert!(
        msgs[0]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("rmlx::")),
        "{}",
        msgs[0]
    );
    assert_eq!(msgs[1]["success"], false);

    let template = scratch.path().join("chat_template.jinja");
    std::fs::write(&template, "{% for m in messages %}{{ m.content }}{% endfor").expect("write");
    let (run, msgs) = json_run(&["lint".as_ref(), template.as_os_str()]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let r = reasons(&msgs);
    assert_eq!(r.first(), Some(&"lint-diagnostic"), "{}", run.describe());
    assert_eq!(r.last(), Some(&"lint-finished"), "{}", run.describe());
    assert!(msgs[0]["line"].is_number(), "{}", msgs[0]);
}

#[test]
fn a_failing_command_reports_a_diagnostic_message() {
    let scratch = scratch_dir();
    let missing = scratch.path().join("no-model-here");
    for cmd in ["probe", "generate", "bench"] {
        let mut args: Vec<&std::ffi::OsStr> = vec![cmd.as_ref(), missing.as_os_str()];
        if cmd == "generate" {
            args.extend([std::ffi::OsStr::new("-p"), std::ffi::OsStr::new("x")]);
        }
        let (run, msgs) = json_run(&args);
        assert!(!run.success(), "{}", run.describe());
        assert_eq!(reasons(&msgs), ["diagnostic"], "{cmd}: {}", run.describe());
        assert_eq!(msgs[0]["severity"], "error", "{cmd}");
        assert!(
            msgs[0]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{cmd}"
        );
        assert!(
            run.stderr.contains("rmlx::"),
            "the report stays on stderr too: {}",
            run.describe()
        );
    }
}

#[test]
fn quiet_and_verbose_together_are_a_usage_error() {
    let run = rmlx(["-q", "-v", "lint", "nothing.jinja"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("--quiet") || run.stderr.contains("--verbose"),
        "{}",
        run.describe()
    );
    let run = rmlx(["lint", "-v", "--quiet", "nothing.jinja"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
}

/// stderr of a failing `generate`, with only the given color settings in the environment.
fn colored_stderr(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> bool {
    let mut cmd = Command::new(bin());
    cmd.arg("rmlx")
        .args(flags)
        .args(["generate", "-p", "x"])
        .arg(dir.join("missing"))
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env_remove("CARGO_TERM_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = run_command(cmd, Duration::from_secs(120));
    assert!(!run.success(), "{}", run.describe());
    run.stderr.contains('\u{1b}')
}

#[test]
fn color_follows_no_color_and_clicolor_force() {
    let scratch = scratch_dir();
    let d = scratch.path();
    assert!(
        !colored_stderr(d, &[], &[]),
        "stderr is not a terminal: no color"
    );
    assert!(colored_stderr(d, &[], &[("CLICOLOR_FORCE", "1")]));
    assert!(!colored_stderr(
        d,
        &[],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]
    ));
    assert!(colored_stderr(
        d,
        &["--color", "always"],
        &[("NO_COLOR", "1")]
    ));
    assert!(colored_stderr(d, &[], &[("CARGO_TERM_COLOR", "always")]));
    assert!(!colored_stderr(
        d,
        &["--color", "never"],
        &[("CLICOLOR_FORCE", "1")]
    ));
}
