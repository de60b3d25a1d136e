//! `cargo rmlx render` and `cargo rmlx lint` as a user runs them: byte-exact stdout, exit
//! codes, the miette report (rendered without colour) with its underline on the offending
//! token, JSON lines, the default template search, model directories.

use serde_json::json;

use crate::lint_checks::{write_test_model, GOOD};
use crate::support::{json_lines, rmlx, rmlx_in, scratch_dir, write};

const EXIT_LINT_ERRORS: i32 = 1;
const EXIT_USAGE: i32 = 2;

#[test]
fn render_prints_the_prompt_byte_exact() {
    let dir = scratch_dir();
    // Trailing spaces and the newline before the end are part of the output; jinja2 drops
    // only the template's single final newline (keep_trailing_newline=False).
    let t = write(
        dir.path(),
        "t.jinja",
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}  \n{% endfor %}{% if add_generation_prompt %}[assistant]\n{% endif %}\n",
    );
    let c = write(
        dir.path(),
        "c.json",
        json!({
            "messages": [{"role": "user", "content": "héllo \"x\" 日本"}],
            "add_generation_prompt": true,
            "bos_token": "<s>"
        })
        .to_string(),
    );
    let run = rmlx([
        "render".as_ref(),
        "--template".as_ref(),
        t.as_os_str(),
        "--context".as_ref(),
        c.as_os_str(),
    ]);
    run.assert_sane("render");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(
        run.stdout_bytes,
        "<s>[user] héllo \"x\" 日本  \n[assistant]\n".as_bytes(),
        "{}",
        run.describe()
    );
    assert!(run.stderr.is_empty(), "{}", run.describe());
}

#[test]
fn render_fixed_clock() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "t.jinja",
        "{{ strftime_now('%d %b %Y %H:%M') }}",
    );
    let c = write(dir.path(), "c.json", "{}");
    let run = rmlx([
        "render".as_ref(),
        "--template".as_ref(),
        t.as_os_str(),
        "--context".as_ref(),
        c.as_os_str(),
        "--now".as_ref(),
        "1721952000".as_ref(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout_text(), "26 Jul 2024 00:00");
}

#[test]
fn render_template_error_is_a_located_report() {
    let dir = scratch_dir();
    let t = write(
        dir.path(),
        "t.jinja",
        "{% for m in messages %}\n{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}",
    );
    let c = write(
        dir.path(),
        "c.json",
        json!({"messages": [{"role": "system", "content": "x"}]}).to_string(),
    );
    let run = rmlx([
        "render".as_ref(),
        "--template".as_ref(),
        t.as_os_str(),
        "--context".as_ref(),
        c.as_os_str(),
    ]);
    run.assert_sane("render raising");
    assert_eq!(run.code, Some(EXIT_USAGE), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    for needle in [
        "rmlx::template::raised",
        "System role not supported",
        "t.jinja:2:",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?}\n{}",
            run.describe()
        );
    }
}

#[test]
fn lint_syntax_error_underline_sits_on_the_token() {
    let dir = scratch_dir();
    let src = "{% for m in messages %}\n  {{ m.content }}\n  {% endif %}\n{% endfor %}\n";
    let t = write(dir.path(), "chat_template.jinja", src);
    let run = rmlx(["lint".as_ref(), t.as_os_str()]);
    run.assert_sane("lint syntax error");
    assert_eq!(run.code, Some(EXIT_LINT_ERRORS), "{}", run.describe());
    let text = &run.stderr;
    assert!(
        text.contains("rmlx::template::syntax"),
        "{}",
        run.describe()
    );
    assert!(!text.contains('\u{1b}'), "colour codes with --color never");
    // The snippet line with the error, then the underline line below it.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with("  {% endif %}"))
        .unwrap_or_else(|| panic!("no snippet line\n{text}"));
    let snippet = lines[at];
    let underline = lines[at + 1];
    let token_col = snippet.find("endif").expect("token in snippet");
    let marks: Vec<usize> = underline
        .char_indices()
        .filter(|(_, c)| matches!(c, '^' | '|'))
        .map(|(i, _)| i)
        .filter(|&i| i > 3)
        .collect();
    assert!(!marks.is_empty(), "no underline\n{text}");
    assert_eq!(
        (marks[0], *marks.last().unwrap_or(&0)),
        (token_col, token_col + "endif".len() - 1),
        "underline not under `endif`:\n{snippet}\n{underline}"
    );
    assert!(text.contains("chat_template.jinja:3:"), "{text}");
}

#[test]
fn lint_exit_codes() {
    let dir = scratch_dir();
    let good = write(dir.path(), "good.jinja", GOOD);
    let warn = write(
        dir.path(),
        "warn.jinja",
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let bad = write(dir.path(), "bad.jinja", "{% if %}");
    let run = rmlx(["lint".as_ref(), good.as_os_str()]);
    assert_eq!(run.code, Some(0), "clean: {}", run.describe());
    let run = rmlx(["lint".as_ref(), warn.as_os_str()]);
    assert_eq!(run.code, Some(0), "warnings only: {}", run.describe());
    assert!(
        run.stderr.contains("rmlx::lint::generation-prompt"),
        "{}",
        run.describe()
    );
    let run = rmlx(["lint".as_ref(), good.as_os_str(), bad.as_os_str()]);
    assert_eq!(
        run.code,
        Some(EXIT_LINT_ERRORS),
        "errors: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains("2 templates: 1 error"),
        "{}",
        run.describe()
    );
    let missing = dir.path().join("nope.jinja");
    let run = rmlx(["lint".as_ref(), missing.as_os_str()]);
    run.assert_sane("missing file");
    assert_eq!(run.code, Some(EXIT_USAGE), "usage: {}", run.describe());
    let run = rmlx(["lint", "--message-format", "yaml"]);
    assert_eq!(run.code, Some(EXIT_USAGE), "bad flag: {}", run.describe());
}

#[test]
fn lint_json_lines() {
    let dir = scratch_dir();
    let src = "{% for m in messages %}{{ m.content }}{% endfor %}{{ mystery }}";
    let t = write(dir.path(), "t.jinja", src);
    let run = rmlx([
        "lint".as_ref(),
        "--message-format".as_ref(),
        "json".as_ref(),
        t.as_os_str(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let lines = json_lines(&run.stdout_text());
    let diag = lines
        .iter()
        .find(|l| l["code"] == "rmlx::lint::undeclared-variable")
        .unwrap_or_else(|| panic!("no undeclared-variable line\n{}", run.describe()));
    assert_eq!(diag["reason"], "lint-diagnostic");
    assert_eq!(diag["severity"], "warning");
    let start = src.find("mystery").expect("in source");
    assert_eq!(
        diag["span"],
        json!({"start": start, "end": start + "mystery".len()})
    );
    assert_eq!(diag["line"], 1);
    assert_eq!(diag["column"], start + 1);
    assert!(diag["help"].is_string());
    assert!(diag["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("t.jinja")));
    let summary = lines
        .iter()
        .find(|l| l["reason"] == "lint-template")
        .expect("per-template summary");
    assert_eq!(summary["capabilities"]["system_role"], "yes");
    let last = lines.last().expect("lines");
    assert_eq!(last["reason"], "lint-finished");
    assert_eq!(last["errors"], 0);
    assert_eq!(last["success"], true);
}

#[test]
fn lint_default_finds_chat_templates_under_the_current_directory() {
    // Outside the repository, so that no rmlx.toml or cargo workspace above it applies.
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a/chat_template.jinja", GOOD);
    write(dir.path(), "b/c/chat_template.jinja", "{% if %}");
    write(dir.path(), "b/other.jinja", "{% if %}");
    write(dir.path(), "target/x/chat_template.jinja", "{% if %}");
    let run = rmlx_in(Some(dir.path()), ["lint", "--message-format", "json"]);
    run.assert_sane("default lint");
    let lines = json_lines(&run.stdout_text());
    let templates: Vec<String> = lines
        .iter()
        .filter(|l| l["reason"] == "lint-template")
        .map(|l| l["template"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(templates.len(), 2, "{templates:?}\n{}", run.describe());
    assert!(
        templates[0].ends_with("a/chat_template.jinja"),
        "{templates:?}"
    );
    assert!(
        templates[1].ends_with("b/c/chat_template.jinja"),
        "{templates:?}"
    );
    assert_eq!(run.code, Some(EXIT_LINT_ERRORS), "{}", run.describe());
}

#[test]
fn lint_model_directory_runs_tokenizer_checks() {
    let dir = scratch_dir();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    write_test_model(&model);
    write(
        &model,
        "chat_template.jinja",
        "{{ bos_token }}{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    );
    let codes = |run: &crate::support::Run| -> Vec<String> {
        json_lines(&run.stdout_text())
            .iter()
            .filter_map(|l| l["code"].as_str().map(str::to_string))
            .collect()
    };
    // The template file next to tokenizer.json, the model directory, and --model.
    for args in [
        vec![model.join("chat_template.jinja").into_os_string()],
        vec![model.clone().into_os_string()],
    ] {
        let mut all: Vec<std::ffi::OsString> =
            vec!["lint".into(), "--message-format".into(), "json".into()];
        all.extend(args);
        let run = rmlx(&all);
        run.assert_sane("lint model");
        let codes = codes(&run);
        assert!(
            codes.iter().any(|c| c == "rmlx::lint::double-bos"),
            "{}",
            run.describe()
        );
        assert!(
            codes.iter().any(|c| c == "rmlx::lint::seed-tokens"),
            "{}",
            run.describe()
        );
    }
    let elsewhere = write(
        dir.path(),
        "t.jinja",
        "{% for m in messages %}<|im_start|> {{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    );
    let run = rmlx([
        "lint".as_ref(),
        "--message-format".as_ref(),
        "json".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        elsewhere.as_os_str(),
    ]);
    let codes = codes(&run);
    assert!(
        codes.iter().any(|c| c == "rmlx::lint::split-special-token"),
        "{}",
        run.describe()
    );
    assert!(
        codes.iter().any(|c| c == "rmlx::lint::missing-bos"),
        "{}",
        run.describe()
    );
}

#[test]
fn lint_default_is_the_models_of_rmlx_toml() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    // `tiny`: a source directory with a tokenizer and a chat-template override.
    std::fs::create_dir_all(root.join("tiny")).expect("mkdir");
    write_test_model(&root.join("tiny"));
    write(
        root,
        "templates/tiny.jinja",
        "{{ bos_token }}{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    );
    // `other`: its own chat_template.jinja, broken.
    std::fs::create_dir_all(root.join("other")).expect("mkdir");
    write_test_model(&root.join("other"));
    write(root, "other/chat_template.jinja", "{% for m in messages %}");
    // A stray template that the manifest does not name: not linted.
    write(root, "stray/chat_template.jinja", "{% if %}");
    write(
        root,
        "rmlx.toml",
        "[models.tiny]\nsource = \"tiny\"\nchat-template = \"templates/tiny.jinja\"\n\n[models.other]\nsource = \"other\"\n",
    );
    let run = rmlx_in(Some(root), ["lint", "--message-format", "json"]);
    run.assert_sane("lint rmlx.toml models");
    let lines = json_lines(&run.stdout_text());
    let templates: Vec<&str> = lines
        .iter()
        .filter(|l| l["reason"] == "lint-template")
        .filter_map(|l| l["template"].as_str())
        .collect();
    assert_eq!(templates.len(), 2, "{templates:?}\n{}", run.describe());
    assert!(
        templates[0].ends_with("templates/tiny.jinja"),
        "{templates:?}"
    );
    assert!(
        templates[1].ends_with("other/chat_template.jinja"),
        "{templates:?}"
    );
    let tiny_codes: Vec<&str> = lines
        .iter()
        .filter(|l| {
            l["template"]
                .as_str()
                .is_some_and(|t| t.ends_with("tiny.jinja"))
        })
        .filter_map(|l| l["code"].as_str())
        .collect();
    assert!(
        tiny_codes.contains(&"rmlx::lint::double-bos"),
        "{tiny_codes:?}"
    );
    assert_eq!(run.code, Some(EXIT_LINT_ERRORS), "{}", run.describe());
}
