use std::path::PathBuf;

use super::*;
use crate::lint::{lint_source, LintOptions};
use crate::template::TemplateOrigin;

fn doc_parts(text: &str) -> (Uri, PathBuf, LineIndex) {
    let path = PathBuf::from("/tmp/rmlx-editor-test/chat_template.jinja");
    (
        Uri::from_file_path(&path).unwrap(),
        path,
        LineIndex::new(text),
    )
}

#[test]
fn syntax_error_range_is_utf16() {
    // The error sits after an emoji and CJK text on the same line.
    let text = "{# 😀 中文 ▁ #}\n{{ '😀' }} {% if %}";
    let (uri, path, index) = doc_parts(text);
    let report = lint_source(
        text,
        TemplateOrigin::File { path: path.clone() },
        None,
        &LintOptions::default(),
    );
    let d = &report.diagnostics[0];
    assert_eq!(d.code, "rmlx::template::syntax");
    let doc = Document {
        uri: &uri,
        path: Some(&path),
        text,
        index: &index,
    };
    let l = to_lsp(d, &doc, Vec::new());
    let span = d.span.clone().unwrap();
    // Line 1; the column counts UTF-16 units: "{{ '😀' }} {% if " has the emoji as 2 units.
    let line_start = text.find('\n').unwrap() + 1;
    let before = &text[line_start..span.start];
    assert_eq!(l.range.start.line, 1);
    assert_eq!(
        l.range.start.character as usize,
        before.encode_utf16().count()
    );
    assert_eq!(l.source.as_deref(), Some("rmlx"));
    assert_eq!(
        l.code,
        Some(NumberOrString::String("rmlx::template::syntax".into()))
    );
    assert_eq!(l.severity, Some(DiagnosticSeverity::ERROR));
    assert!(l.message.contains("\nhelp: "), "{}", l.message);
}

#[test]
fn duplicate_bos_has_a_quick_fix() {
    let text = "{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let (uri, path, index) = doc_parts(text);
    let report = lint_source(
        text,
        TemplateOrigin::File { path: path.clone() },
        None,
        &LintOptions::default(),
    );
    let d = report
        .diagnostics
        .iter()
        .find(|d| d.code == lint::CODE_DUPLICATE_BOS)
        .expect("duplicate-bos diagnostic");
    let span = d.span.clone().unwrap();
    assert_eq!(&text[span.clone()], "{{ bos_token }}");
    let fix = quick_fix(d.code, text, &span).expect("a quick fix");
    let mut fixed = text.to_string();
    fixed.replace_range(fix.span.clone(), &fix.new_text);
    let again = lint_source(
        &fixed,
        TemplateOrigin::File { path: path.clone() },
        None,
        &LintOptions::default(),
    );
    assert!(again
        .diagnostics
        .iter()
        .all(|d| d.code != lint::CODE_DUPLICATE_BOS));
    let doc = Document {
        uri: &uri,
        path: Some(&path),
        text,
        index: &index,
    };
    let l = to_lsp(d, &doc, Vec::new());
    let related = l
        .related_information
        .expect("the other BOS as related information");
    assert_eq!(related[0].location.uri, uri);
}

#[test]
fn other_files_go_to_the_first_line() {
    let text = "héllo\nworld";
    let (uri, path, index) = doc_parts(text);
    let d = Diagnostic::error(crate::diagnostic::code::Snapshot::Config, "bad")
        .with_file("/elsewhere/tokenizer.json")
        .with_source("{\"a\": 1}")
        .with_span(1..4, "this key");
    let doc = Document {
        uri: &uri,
        path: Some(&path),
        text,
        index: &index,
    };
    let l = to_lsp(&d, &doc, Vec::new());
    assert_eq!(
        l.range,
        ls_types::Range::new(ls_types::Position::new(0, 0), ls_types::Position::new(0, 5))
    );
    let r = &l.related_information.unwrap()[0];
    assert_eq!(r.location.uri.path(), "/elsewhere/tokenizer.json");
    assert_eq!(r.location.range.start.character, 1);
}

#[test]
fn json_keys() {
    let j = "{\"bos_token_id\": 1, \"x\": \"bos_token\", \"bos_token\" : \"<s>\"}";
    let s = json_key_span(j, "bos_token").unwrap();
    assert_eq!(&j[s.clone()], "\"bos_token\"");
    assert!(s.start > 30);
    assert_eq!(json_key_span(j, "nope"), None);
}

#[test]
fn quick_fix_only_for_bare_expressions() {
    let t = "{{- bos_token -}}x{{ bos_token + 'a' }}";
    assert!(quick_fix(lint::CODE_DUPLICATE_BOS, t, &(0..17)).is_some());
    assert!(quick_fix(lint::CODE_DUPLICATE_BOS, t, &(18..39)).is_none());
    assert!(quick_fix(lint::CODE_DOUBLE_BOS, t, &(0..17)).is_none());
}
