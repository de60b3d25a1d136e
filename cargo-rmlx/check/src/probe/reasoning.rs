//! Reasoning ("thinking") models in the probe. Two tables hold all the knowledge, both
//! matched against the chat template's source:
//! - [`SWITCHES`]: template variables that turn thinking off (`enable_thinking = false` for
//!   Qwen3/Qwen3.5/Gemma 4, `reasoning_effort = "low"` for GPT-OSS harmony), applied when the
//!   template reads them (the lint scanner's variable reads);
//! - [`FAMILIES`]: the marker strings that delimit the reasoning section in a family's output
//!   (`<think>…</think>`, Gemma 4's `<|channel>…<channel|>`, harmony's `analysis` and `final`
//!   channels), shared with the server in [`crate::reasoning`].
//!
//! With a family known, each generated step is labelled ([`Channel`]) from the decoded text,
//! and the verdict ([`judge`]) is taken on the visible answer only: reasoning steps and
//! markers are skipped and reported, and a model that never leaves its reasoning within the
//! probe's bound is `inconclusive`, not broken.

use serde::Serialize;
use serde_json::{json, Value};

pub use crate::reasoning::{detect_family, Channel, Family, FAMILIES};

use super::classify::{self, Classification, StepView, Verdict};
use crate::diagnostic::Result;
use crate::lint::scan;
use crate::tokenize::Tokenizer;

/// Default bound on the extra greedy steps the probe spends waiting for the answer of a
/// reasoning model (on top of the answer's own steps).
pub const DEFAULT_MAX_REASONING_STEPS: usize = 512;

/// A template variable that turns a reasoning mode off.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    /// The variable (a `chat_template_kwargs` key).
    pub name: &'static str,
    /// Its "off" (or lowest) value, as JSON text.
    pub off: &'static str,
}

/// Known switches, in order of preference.
pub const SWITCHES: &[Switch] = &[
    // Qwen3, Qwen3.5, Gemma 4: `<think>\n\n</think>` or an empty thought channel.
    Switch {
        name: "enable_thinking",
        off: "false",
    },
    // GPT-OSS harmony: "Reasoning: low" in the system message (the analysis channel stays).
    Switch {
        name: "reasoning_effort",
        off: "\"low\"",
    },
];

impl Switch {
    /// The off value as JSON.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.off).unwrap_or(Value::Null)
    }
}

/// The switch a template reads, if any.
pub fn detect_switch(template_source: &str) -> Option<Switch> {
    let s = scan::scan(template_source);
    SWITCHES
        .iter()
        .find(|sw| !s.var_refs(sw.name).is_empty())
        .copied()
}

/// What the probe did about reasoning, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ReasoningReport {
    /// The template family whose markers delimit reasoning, when one was detected.
    pub family: Option<&'static str>,
    /// The switch applied to the seed's rendering (`{"name": …, "value": …}`), if any.
    pub switch: Option<Value>,
    /// Whether the switch changed the rendered prompt (it may already be the default).
    pub switch_changed_prompt: bool,
    /// The assistant's turn started inside a reasoning section (harmony, forced `<think>`).
    pub starts_in_reasoning: bool,
    /// Steps not judged: reasoning and markers.
    pub skipped_steps: usize,
    /// Of those, steps inside the reasoning section.
    pub reasoning_steps: usize,
    /// Markers seen in the generated text, in order.
    pub markers: Vec<String>,
    /// First step of the visible answer.
    pub answer_from_step: Option<usize>,
    /// The bound on extra steps spent waiting for the answer.
    pub max_reasoning_steps: usize,
}

impl ReasoningReport {
    /// The switch as reported.
    pub fn switch_json(sw: &Switch) -> Value {
        json!({"name": sw.name, "value": sw.value()})
    }
}

/// The steps that make up the judged answer: from the first answer step on, answer steps
/// only (a reasoning section reopened inside the window is skipped).
pub fn answer_indices(labels: &[Channel]) -> Vec<usize> {
    labels
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == Channel::Answer)
        .map(|(i, _)| i)
        .collect()
}

/// Whether generation may stop: `want` answer steps are in, or the turn ended (EOS) before
/// any answer.
pub fn done(labels: &[Channel], eos: &[bool], want: usize) -> bool {
    let answered = answer_indices(labels).len() >= want;
    let ended_unanswered = labels
        .iter()
        .zip(eos)
        .take_while(|(c, _)| **c != Channel::Answer)
        .any(|(_, e)| *e);
    answered || ended_unanswered
}

/// The answer steps up to (not including) the first EOS: what the answer text is decoded from.
pub fn answer_text_indices(labels: &[Channel], eos: &[bool]) -> Vec<usize> {
    answer_indices(labels)
        .into_iter()
        .take_while(|&i| !eos.get(i).copied().unwrap_or(false))
        .collect()
}

/// The verdict of a reasoning model: non-finite logits anywhere are broken; otherwise the
/// answer steps are classified by [`classify::classify`] (`answer` is their decoded text, up
/// to the first EOS). No answer: `broken-empty` when the turn ended inside the reasoning,
/// `inconclusive` when the bound ran out first.
pub fn judge(
    steps: &[StepView<'_>],
    labels: &[Channel],
    answer: &str,
    expect: Option<&str>,
) -> Classification {
    if let Some(nan) = classify::non_finite(steps) {
        return nan;
    }
    let idx = answer_indices(labels);
    let Some(&first) = idx.first() else {
        return no_answer(steps, labels);
    };
    let window: Vec<StepView<'_>> = idx.iter().map(|&i| steps[i].clone()).collect();
    let mut c = classify::classify(&window, answer, expect);
    c.reason = format!(
        "{} (the answer starts at step {first}; {} reasoning/marker step(s) skipped)",
        c.reason,
        steps.len() - idx.len()
    );
    c
}

fn no_answer(steps: &[StepView<'_>], labels: &[Channel]) -> Classification {
    let reasoning = labels.iter().filter(|c| **c == Channel::Reasoning).count();
    if let Some(i) = steps.iter().position(|s| s.is_eos) {
        return Classification {
            verdict: Verdict::BrokenEmpty,
            rule: "no-answer",
            reason: format!(
                "the turn ended (`{}` at step {i}) inside the reasoning section, before any \
                 answer",
                steps[i].piece
            ),
        };
    }
    Classification {
        verdict: Verdict::Inconclusive,
        rule: "reasoning-unfinished",
        reason: format!(
            "still reasoning after {} steps ({reasoning} inside the reasoning section): no \
             answer to judge within the bound (raise --max-reasoning-steps)",
            steps.len()
        ),
    }
}

/// The decoded text of each generated step (special tokens included), kept in step with the
/// ids: a step's text is what decoding all ids so far adds to the previous decode (a
/// multi-byte character split over steps is revised when its last byte arrives).
#[derive(Debug, Default)]
pub struct Transcript {
    ids: Vec<u32>,
    decoded: String,
    /// Text per step.
    pub texts: Vec<String>,
}

impl Transcript {
    /// Adds one generated id.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<()> {
        self.ids.push(id);
        let now = tok.decode(&self.ids, false)?;
        let keep = common_prefix(&self.decoded, &now);
        self.retract(self.decoded.len() - keep);
        self.texts.push(now[keep..].to_string());
        self.decoded = now;
        Ok(())
    }

    /// Removes `bytes` from the end of the recorded texts.
    fn retract(&mut self, mut bytes: usize) {
        for t in self.texts.iter_mut().rev() {
            while bytes > 0 {
                let Some(c) = t.pop() else { break };
                bytes = bytes.saturating_sub(c.len_utf8());
            }
            if bytes == 0 {
                break;
            }
        }
    }
}

/// Byte length of the longest common prefix of `a` and `b` (a character boundary of both).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(name: &str) -> Family {
        *FAMILIES
            .iter()
            .find(|f| f.name == name)
            .expect("a known family")
    }

    const EOS: &[&str] = &["<|im_end|>", "<eos>", "<turn|>", "<|return|>"];

    /// A step sequence as the probe sees it: pieces of one tokenizer family, their decoded
    /// text (`Ġ`/`▁` → space, `Ċ` → newline), and the verdict on the answer.
    struct Case<'a> {
        views: Vec<StepView<'a>>,
        texts: Vec<String>,
        labels: Vec<Channel>,
    }

    impl<'a> Case<'a> {
        fn new(f: &Family, prompt: &str, pieces: &'a [&'a str]) -> Self {
            let views: Vec<StepView<'a>> = pieces
                .iter()
                .enumerate()
                .map(|(i, &piece)| StepView {
                    id: i as u32 + 1000 * u32::from(piece.len() as u8),
                    piece,
                    non_finite: 0,
                    is_eos: EOS.contains(&piece),
                    is_special: piece.starts_with('<') && piece.ends_with('>'),
                })
                .collect();
            let texts: Vec<String> = pieces
                .iter()
                .map(|p| p.replace(['Ġ', '▁'], " ").replace('Ċ', "\n"))
                .collect();
            let labels = f.label(f.initial(prompt), &texts);
            Case {
                views,
                texts,
                labels,
            }
        }

        fn answer(&self) -> String {
            let eos: Vec<bool> = self.views.iter().map(|v| v.is_eos).collect();
            answer_text_indices(&self.labels, &eos)
                .into_iter()
                .filter(|&i| !self.views[i].is_special)
                .map(|i| self.texts[i].as_str())
                .collect::<String>()
                .trim()
                .to_string()
        }

        fn judge(&self, expect: Option<&str>) -> Classification {
            judge(&self.views, &self.labels, &self.answer(), expect)
        }

        fn answer_from(&self) -> Option<usize> {
            self.labels.iter().position(|c| *c == Channel::Answer)
        }
    }

    /// "The capital of France is Paris." in byte-level BPE pieces.
    const BPE_ANSWER: &str = "The Ġcapital Ġof ĠFrance Ġis ĠParis .";

    /// Pieces written one after another, separated by single spaces.
    fn split(pieces: &str) -> Vec<&str> {
        pieces.split(' ').collect()
    }

    const QWEN_PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
                               <|im_start|>assistant\n";

    #[test]
    fn a_thinking_section_then_a_healthy_answer_is_ok() {
        let pieces = &[
            "<think> Ċ Okay , Ġthe Ġuser Ġasks Ġabout ĠFrance . Ċ </think> ĊĊ",
            BPE_ANSWER,
            "<|im_end|> Ċ",
        ]
        .join(" ");
        let pieces = split(pieces);
        let case = Case::new(&family("think-tags"), QWEN_PROMPT, &pieces);
        assert_eq!(case.answer_from(), Some(13));
        assert_eq!(case.labels[0], Channel::Marker);
        assert_eq!(case.labels[5], Channel::Reasoning);
        assert_eq!(&case.labels[11..13], [Channel::Marker, Channel::Marker]);
        assert_eq!(case.answer(), "The capital of France is Paris.");
        let c = case.judge(Some("Paris"));
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        assert!(
            c.reason.contains("13 reasoning/marker step(s) skipped"),
            "{c:?}"
        );
        assert_eq!(
            family("think-tags").markers_in(&case.texts.concat()),
            ["<think>", "</think>"]
        );
    }

    #[test]
    fn a_healthy_thinking_section_then_a_punctuation_loop_is_broken() {
        // Gemma 4 (SentencePiece pieces), thinking on: a thought channel, then dots.
        let pieces = split("<|channel> thought \n ▁The ▁user ▁asks ▁for ▁a ▁capital . <channel|> . ▁. . ▁. . ▁. . ▁.");
        let case = Case::new(&family("gemma4-channel"), "<|turn>model\n", &pieces);
        assert_eq!(case.answer_from(), Some(11));
        let c = case.judge(None);
        assert_eq!(c.verdict, Verdict::BrokenLoop, "{c:?}");
        assert_eq!(c.rule, "single-symbol");
    }

    #[test]
    fn a_loop_inside_the_thinking_section_only_is_judged_on_the_answer() {
        // A template that forces `<think>` (Qwen3-Thinking-2507): the turn starts inside it.
        let prompt = format!("{QWEN_PROMPT}<think>\n");
        let pieces = split(
            "Hmm . . . . . . . . . . </think> ĊĊ Paris Ġis Ġthe Ġcapital Ġof ĠFrance . <|im_end|>",
        );
        let case = Case::new(&family("think-tags"), &prompt, &pieces);
        assert_eq!(case.labels[0], Channel::Reasoning);
        assert_eq!(case.answer_from(), Some(13));
        let c = case.judge(Some("Paris"));
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        // The same loop without the reasoning section is a loop.
        let window: Vec<StepView<'_>> = case.views[..11].to_vec();
        assert_eq!(
            classify::classify(&window, "Hmm..........", None).verdict,
            Verdict::BrokenLoop
        );
    }

    #[test]
    fn never_ending_reasoning_is_inconclusive_and_an_unanswered_turn_is_empty() {
        let prompt = format!("{QWEN_PROMPT}<think>\n");
        let pieces = split("Let Ġme Ġthink . ĠThe Ġuser Ġwants Ġa Ġcity");
        let case = Case::new(&family("think-tags"), &prompt, &pieces);
        assert!(case.labels.iter().all(|c| *c == Channel::Reasoning));
        assert!(!done(&case.labels, &[false; 9], 8));
        let c = case.judge(Some("Paris"));
        assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
        assert_eq!(c.rule, "reasoning-unfinished");

        let pieces = split("Let Ġme Ġthink . <|im_end|> Ċ");
        let case = Case::new(&family("think-tags"), &prompt, &pieces);
        let eos: Vec<bool> = case.views.iter().map(|v| v.is_eos).collect();
        assert!(done(&case.labels, &eos, 8), "the turn ended unanswered");
        let c = case.judge(Some("Paris"));
        assert_eq!(c.verdict, Verdict::BrokenEmpty, "{c:?}");
        assert_eq!(c.rule, "no-answer");
    }

    #[test]
    fn harmony_analysis_then_final_is_judged_on_the_final_channel() {
        let pieces = &["<|channel|> analysis <|message|> User Ġasks : Ġcapital Ġof ĠFrance . ĠAnswer : ĠParis . <|end|> <|start|> assistant <|channel|> final <|message|>", BPE_ANSWER, "<|return|>"].join(" ");
        let pieces = split(pieces);
        let f = family("harmony");
        let case = Case::new(
            &f,
            "<|start|>user<|message|>Hi<|end|><|start|>assistant",
            &pieces,
        );
        assert_eq!(case.labels[..2], [Channel::Marker; 2]);
        assert_eq!(case.labels[2], Channel::Reasoning, "the analysis message");
        assert_eq!(
            case.labels[16],
            Channel::Reasoning,
            "the header between messages"
        );
        assert_eq!(case.labels[17..20], [Channel::Marker; 3]);
        assert_eq!(case.answer_from(), Some(20));
        assert_eq!(case.answer(), "The capital of France is Paris.");
        let c = case.judge(Some("Paris"));
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        assert_eq!(
            f.markers_in(&case.texts.concat()),
            ["<|channel|>analysis", "<|channel|>final<|message|>"]
        );
        // A harmony model that loops in its final channel is broken.
        let looping = split("<|channel|> final <|message|> ! ! ! ! ! ! ! !");
        let case = Case::new(&f, "<|start|>assistant", &looping);
        assert_eq!(case.judge(None).verdict, Verdict::BrokenLoop);
    }

    #[test]
    fn generation_stops_once_the_answer_has_its_steps() {
        let pieces = split("</think> ĊĊ The Ġcapital Ġis ĠParis");
        let case = Case::new(&family("think-tags"), "<think>\n", &pieces);
        let eos = [false; 6];
        assert!(done(&case.labels, &eos, 4));
        assert!(!done(&case.labels, &eos, 5));
    }

    #[test]
    fn the_prompt_decides_where_the_turn_starts() {
        let f = family("think-tags");
        assert_eq!(f.initial(QWEN_PROMPT), Channel::Answer);
        assert_eq!(
            f.initial(&format!("{QWEN_PROMPT}<think>\n\n</think>\n\n")),
            Channel::Answer
        );
        assert_eq!(
            f.initial(&format!("{QWEN_PROMPT}<think>\n")),
            Channel::Reasoning
        );
        let g = family("gemma4-channel");
        assert_eq!(
            g.initial("<|turn>model\n<|channel>thought\n<channel|>"),
            Channel::Answer
        );
        assert_eq!(
            family("harmony").initial("<|start|>assistant"),
            Channel::Reasoning
        );
    }

    #[test]
    fn switches_and_families_are_read_from_the_template_source() {
        let qwen = "{%- if enable_thinking is defined and enable_thinking is false %}\
                    {{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}";
        assert_eq!(detect_switch(qwen).map(|s| s.name), Some("enable_thinking"));
        assert_eq!(detect_family(qwen).map(|f| f.name), Some("think-tags"));
        let harmony = "{{- 'Reasoning: ' + reasoning_effort }}<|channel|>final<|message|>";
        assert_eq!(
            detect_switch(harmony).map(|s| s.name),
            Some("reasoning_effort")
        );
        assert_eq!(
            detect_switch(harmony).map(|s| s.value()),
            Some(json!("low"))
        );
        assert_eq!(detect_family(harmony).map(|f| f.name), Some("harmony"));
        // A name only set by the template, or an attribute, is not a switch.
        let plain = "{% set x = message.enable_thinking %}{{ x }}";
        assert!(detect_switch(plain).is_none());
        assert!(detect_family(plain).is_none());
        // The string in a literal is not a read of the variable.
        assert!(detect_switch("{{ 'enable_thinking' }}").is_none());
    }
}
