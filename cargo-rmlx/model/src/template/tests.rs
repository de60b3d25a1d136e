//! Unit tests of the template module (templates here are written for these tests).

use super::*;
use serde_json::json;

fn inline(src: &str) -> ChatTemplate {
    match ChatTemplate::new(
        src,
        TemplateOrigin::Inline {
            name: "test".into(),
        },
    ) {
        Ok(t) => t,
        Err(e) => panic!("compile failed: {e:?}"),
    }
}

fn render(src: &str, vars: serde_json::Value) -> String {
    match inline(src).render_json(&vars) {
        Ok(s) => s,
        Err(e) => panic!("render failed: {e:?}"),
    }
}

fn render_err(src: &str, vars: serde_json::Value) -> Diagnostic {
    match ChatTemplate::new(src, TemplateOrigin::Inline { name: "t".into() }) {
        Ok(t) => t.render_json(&vars).expect_err("render should fail"),
        Err(e) => e,
    }
}

fn user(text: &str) -> serde_json::Value {
    json!({"role": "user", "content": text})
}

#[test]
fn chatml_default_system_and_parts() {
    let t = ChatTemplate::chatml().unwrap();
    let mut ctx = RenderContext::new(vec![user("Hi")]);
    ctx.add_generation_prompt = true;
    assert_eq!(
        t.render(&ctx).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ctx = RenderContext {
        messages: vec![
            json!({"role": "system", "content": "S"}),
            json!({"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "image"}, {"type": "text", "text": "b"}]}),
        ],
        ..RenderContext::default()
    };
    assert_eq!(
        t.render(&ctx).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nab<|im_end|>\n"
    );
    let mut ctx = RenderContext::new(vec![user("x")]);
    ctx.kwargs
        .insert("default_system_prompt".into(), json!(false));
    assert_eq!(t.render(&ctx).unwrap(), "<|im_start|>user\nx<|im_end|>\n");
}

#[test]
fn whitespace_like_transformers() {
    // trim_blocks + lstrip_blocks, no trailing newline kept.
    let src = "A\n  {% if true %}\n  B\n  {% endif %}\nC\n";
    assert_eq!(render(src, json!({})), "A\n  B\nC");
}

#[test]
fn python_printing() {
    let src = "{{ none }}|{{ true }}|{{ x }}|{{ y }}|{{ 1.0 }}|{{ [1, 'a'] }}|{{ missing }}|{{ none|string }}";
    assert_eq!(
        render(src, json!({"x": {"a": [1, null]}, "y": 2.5})),
        "None|True|{'a': [1, None]}|2.5|1.0|[1, 'a']||None"
    );
}

#[test]
fn tojson_python_compatible() {
    let vars = json!({"t": {"name": "f", "d": "é<b>", "p": {"x": 1.0}}});
    assert_eq!(
        render("{{ t|tojson }}", vars.clone()),
        r#"{"name": "f", "d": "é<b>", "p": {"x": 1.0}}"#
    );
    assert_eq!(
        render("{{ t|tojson(indent=2) }}", vars.clone()),
        "{\n  \"name\": \"f\",\n  \"d\": \"é<b>\",\n  \"p\": {\n    \"x\": 1.0\n  }\n}"
    );
    assert_eq!(
        render(
            "{{ t|tojson(separators=(',', ':'), sort_keys=true, ensure_ascii=true) }}",
            vars
        ),
        r#"{"d":"\u00e9<b>","name":"f","p":{"x":1.0}}"#
    );
}

#[test]
fn generation_tag_passes_body_through() {
    let src =
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}";
    let t = inline(src);
    assert!(t.uses_generation_tags());
    assert_eq!(
        t.render_json(&json!({"messages": [user("a"), user("b")]}))
            .unwrap(),
        "[a][b]"
    );
}

#[test]
fn slicing_and_loop_controls() {
    assert_eq!(
        render("{{ 'abc'[::-1] }}{{ [1,2,3][::-1] }}", json!({})),
        "cba[3, 2, 1]"
    );
    assert_eq!(
        render("{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}", json!({})),
        "02"
    );
}

#[test]
fn python_methods() {
    let src = "{{ ' a b '.strip() }}|{{ 'a,b,c'.split(',') }}|{{ 'a,b,c'.rsplit(',', 1) }}|\
               {{ 'xxa'.lstrip('x') }}|{{ 'Hi'.startswith(('H', 'Z')) }}|{{ d.get('k', 'z') }}|\
               {% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}|{{ 'abc'.index('c') }}|\
               {{ ['a', 'b'].index('b') }}|{{ '</think>x'.split('</think>')[-1] }}|{{ 'ab'.upper() }}";
    assert_eq!(
        render(src, json!({"d": {"k1": 1, "k2": 2}})),
        "a b|['a', 'b', 'c']|['a,b', 'c']|a|True|z|k1=1k2=2|2|1|x|AB"
    );
}

#[test]
fn lenient_undefined_like_jinja2() {
    let src = "{% for m in messages %}[{{ m.missing }}]{% if m.missing %}no{% endif %}\
               {% if m.missing is defined %}no{% endif %}{% endfor %}\
               {{ tools is none }}{{ tools is defined }}{{ documents is none }}";
    let t = inline(src);
    let out = t.render(&RenderContext::new(vec![user("a")])).unwrap();
    assert_eq!(out, "[]TrueTrueTrue");
}

#[test]
fn special_tokens_and_kwargs_override() {
    let t = inline("{{ bos_token }}{{ eos_token }}{{ enable_thinking }}");
    let mut ctx = RenderContext::new(vec![]);
    ctx.special_tokens.insert("bos_token".into(), "<s>".into());
    ctx.special_tokens.insert("eos_token".into(), "</s>".into());
    ctx.kwargs.insert("eos_token".into(), json!("<E>"));
    ctx.kwargs.insert("enable_thinking".into(), json!(false));
    assert_eq!(t.render(&ctx).unwrap(), "<s><E>False");
    let out = render_chat(&t, &ctx.special_tokens, &[], true, &ctx.kwargs).unwrap();
    assert_eq!(out, "<s><E>False");
}

#[test]
fn raise_exception_is_located() {
    let src =
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}";
    let d = render_err(
        src,
        json!({"messages": [{"role": "system", "content": "x"}]}),
    );
    assert_eq!(d.code, CODE_RAISED);
    assert!(d.message.contains("no system role"), "{}", d.message);
    let span = d.span.clone().expect("span");
    assert!(src[span].contains("raise_exception"), "{d:?}");
}

#[test]
fn syntax_error_span_in_original_text() {
    // After a generation tag (rewritten internally) the offsets still match the original.
    let src = "{% generation %}x{% endgeneration %}\n{{ foo( }}";
    let d = ChatTemplate::new(src, TemplateOrigin::Inline { name: "t".into() }).unwrap_err();
    assert_eq!(d.code, CODE_SYNTAX);
    let span = d.span.clone().expect("span");
    assert!(span.start >= src.find("{{").unwrap(), "{span:?}");
    assert_eq!(d.line_col(span.start).map(|x| x.0), Some(2));
    assert_eq!(d.source.as_deref(), Some(src));
}

#[test]
fn unknown_filter_and_method_codes() {
    let d = render_err("{{ 'a'|no_such_filter }}", json!({}));
    assert_eq!(d.code, CODE_UNKNOWN_FILTER, "{d:?}");
    let d = render_err("{{ 'a'.no_such_method() }}", json!({}));
    assert_eq!(d.code, CODE_UNKNOWN_METHOD, "{d:?}");
    let d = render_err("{{ nothing.strip() }}", json!({}));
    assert_eq!(d.code, CODE_RENDER, "{d:?}");
    let d = render_err("{{ no_such_function() }}", json!({}));
    assert_eq!(d.code, CODE_UNKNOWN_FUNCTION, "{d:?}");
}

#[test]
fn fuel_stops_runaway_templates() {
    let src = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
    let opts = TemplateOptions {
        fuel: Some(100_000),
        now: None,
    };
    let t = ChatTemplate::with_options(src, TemplateOrigin::Inline { name: "t".into() }, &opts)
        .unwrap();
    let d = t.render_json(&json!({})).unwrap_err();
    assert_eq!(d.code, CODE_FUEL);
    assert!(d.span.is_some());
}

#[test]
fn strftime_now_with_fixed_clock() {
    let opts = TemplateOptions {
        now: Some(1_709_211_909),
        ..TemplateOptions::default()
    };
    let t = ChatTemplate::with_options(
        "{{ strftime_now('%d %b %Y') }}",
        TemplateOrigin::Inline { name: "t".into() },
        &opts,
    )
    .unwrap();
    // Local time: 13:05 UTC is 28 Feb to 1 Mar in the time zones of the world.
    let out = t.render_json(&json!({})).unwrap();
    assert!(
        ["28 Feb 2024", "29 Feb 2024", "01 Mar 2024"].contains(&out.as_str()),
        "{out}"
    );
}

/// The size checks of methods and filters: a located `rmlx::template::resources` error
/// pointing at the call, before anything is allocated (in-process, no sandbox).
#[test]
fn resource_limits_are_located() {
    for (src, call) in [
        ("x{{ 'x'.zfill(10**12) }}", "'x'.zfill(10**12)"),
        ("x{{ 'x'.center(10**12) }}", "'x'.center(10**12)"),
        (
            "x{{ '{:>1000000000000}'.format(1) }}",
            "'{:>1000000000000}'.format(1)",
        ),
        ("x{{ [1]|batch(10**12, 0) }}", "[1]|batch(10**12, 0)"),
        (
            "x{{ {'a': 1}|tojson(indent=10**9) }}",
            "{'a': 1}|tojson(indent=10**9)",
        ),
        ("x{{ ('a' * 100000).replace('', 'b' * 100000) }}", "replace"),
        ("x{{ ('b' * 100000).join('a' * 100000) }}", "join"),
        ("x{{ 'a\nb'|indent(10**12) }}", "indent"),
    ] {
        let d = render_err(src, json!({}));
        assert_eq!(d.code, CODE_RESOURCES, "{src}: {d:?}");
        let span = d.span.clone().unwrap_or_else(|| panic!("{src}: no span"));
        assert!(
            src[span.clone()].contains(call) || call.contains(&src[span.clone()]),
            "{src}: span {span:?} = {:?}",
            &src[span.clone()]
        );
    }
}

#[test]
fn namespace_cannot_contain_itself() {
    let src = "{% set ns = namespace(a=1) %}{% set ns.a = [1, {'k': ns}] %}{{ ns }}";
    let d = render_err(src, json!({}));
    assert_eq!(d.code, CODE_RESOURCES, "{d:?}");
    assert!(d.message.contains("contain itself"), "{d:?}");
    // Storing another namespace, or a value read from this one, is fine.
    let ok = "{% set ns = namespace(a=[1]) %}{% set o = namespace(b=2) %}{% set ns.a = ns.a + [o.b, o] %}{{ ns.a[1] }}";
    assert_eq!(render(ok, json!({})), "2");
}

/// The operator limit leaves room: a tag at the limit compiles and renders on a thread
/// with half the stack of tokio's and the LSP's threads; one over it is refused.
#[test]
fn operator_chain_limit_fits_small_stacks() {
    let at_limit = format!(
        "{{{{ 1{} }}}}",
        "+1".repeat(preprocess::MAX_OPERATORS_PER_TAG)
    );
    let out = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || render(&at_limit, json!({})))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(out, (preprocess::MAX_OPERATORS_PER_TAG + 1).to_string());
    let over = format!("ab\n{{{{ 1{} }}}}", "+1".repeat(15_000));
    let d = ChatTemplate::new(over.clone(), TemplateOrigin::Inline { name: "t".into() })
        .expect_err("refused");
    assert_eq!(d.code, CODE_RESOURCES);
    assert_eq!(d.span.as_ref().map(|s| s.start), Some(3));
}

#[test]
fn render_json_requires_object() {
    let d = inline("x").render_json(&json!([1])).unwrap_err();
    assert_eq!(d.code, CODE_CONTEXT);
}

#[test]
fn discovery_order_and_named_templates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(discover(p).unwrap().is_none());
    assert_eq!(discover_required(p).unwrap_err().code, CODE_MISSING);

    std::fs::write(
        p.join("tokenizer_config.json"),
        json!({"chat_template": [
            {"name": "default", "template": "D{{ messages|length }}"},
            {"name": "tool_use", "template": "T"}
        ]})
        .to_string(),
    )
    .unwrap();
    let t = discover(p).unwrap().unwrap();
    assert_eq!(t.render_json(&json!({"messages": [1, 2]})).unwrap(), "D2");
    assert!(
        matches!(t.origin(), TemplateOrigin::ConfigKey { name: Some(n), .. } if n == "default")
    );
    let all = discover_sources(p).unwrap();
    assert_eq!(all.names(), ["tool_use"]);
    assert_eq!(
        all.get("tool_use")
            .unwrap()
            .compile()
            .unwrap()
            .render_json(&json!({}))
            .unwrap(),
        "T"
    );

    std::fs::write(p.join("chat_template.jinja"), "J").unwrap();
    let t = discover(p).unwrap().unwrap();
    assert_eq!(t.render_json(&json!({})).unwrap(), "J");
    assert!(matches!(t.origin(), TemplateOrigin::File { .. }));

    // A broken template is a loud, located error, not a fallback.
    std::fs::write(p.join("chat_template.jinja"), "{% if %}").unwrap();
    let d = discover(p).unwrap_err();
    assert_eq!(d.code, CODE_SYNTAX);
    assert!(d
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("chat_template.jinja")));

    std::fs::remove_file(p.join("chat_template.jinja")).unwrap();
    std::fs::write(p.join("tokenizer_config.json"), r#"{"chat_template": "S"}"#).unwrap();
    assert_eq!(
        discover(p)
            .unwrap()
            .unwrap()
            .render_json(&json!({}))
            .unwrap(),
        "S"
    );
    std::fs::write(p.join("tokenizer_config.json"), r#"{"chat_template": 3}"#).unwrap();
    assert_eq!(discover(p).unwrap_err().code, CODE_CONFIG);
}

#[test]
fn undeclared_variables_lists_inputs() {
    let t =
        inline("{% set x = 1 %}{{ bos_token }}{% for m in messages %}{{ m }}{% endfor %}{{ x }}");
    let vars = t.undeclared_variables();
    assert!(
        vars.contains("bos_token") && vars.contains("messages"),
        "{vars:?}"
    );
    assert!(!vars.contains("x"));
}

#[test]
fn jinja2_quirks() {
    // raw keeps the newline after `{% raw %}` (jinja2 applies no trim_blocks there).
    assert_eq!(render("a{% raw %}\nb{% endraw %}\nc", json!({})), "a\nbc");
    // indent keeps a trailing newline and indents following lines like jinja2.
    assert_eq!(
        render("[{{ '{\\n'|indent(4, first=true) }}]", json!({})),
        "[    {\n]"
    );
    assert_eq!(
        render("[{{ 'a\\n\\nb'|indent(2) }}]", json!({})),
        "[a\n\n  b]"
    );
    // tests and length on none / undefined / strings
    assert_eq!(
        render(
            "{{ none is iterable }}{{ nothing is iterable }}{{ 'x' is sequence }}{{ {} is sequence }}{{ 1 is sequence }}{{ nothing|length }}",
            json!({})
        ),
        "FalseTrueTrueTrueFalse0"
    );
}

#[test]
fn python_dict_global() {
    assert_eq!(
        render(
            "{{ dict([('a', 1), ['b', 2]]) }}{{ dict(x=1) }}{{ dict.fromkeys(['k'], 0) }}{{ dict.from_keys([('q', 3)]) }}",
            json!({})
        ),
        "{'a': 1, 'b': 2}{'x': 1}{'k': 0}{'q': 3}"
    );
}

#[test]
fn string_filters_use_python_str() {
    assert_eq!(
        render("{{ x|trim }}|{{ x|upper }}|{{ none|lower }}|{{ 'a-b'|replace('-', '+') }}|{{ ' xy '|trim }}", json!({"x": [{"type": "text"}]})),
        "[{'type': 'text'}]|[{'TYPE': 'TEXT'}]|none|a+b|xy"
    );
}
