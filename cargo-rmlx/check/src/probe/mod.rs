//! The smoke probe: the seed question rendered through the model's own chat template — by
//! [`Session::user_prompt`], the same code path the server uses — a short greedy run with EOS
//! ignored, and a verdict with its evidence ([`classify`]); optionally compared against a
//! reference model or a golden file ([`fidelity`]). Base models without a template get the
//! bare seed prefixed with the BOS of the resolution chain; that fallback is logged and shown.
//! Reasoning models ([`reasoning`]): the seed is rendered with thinking switched off where the
//! template has a switch, and the verdict is taken on the visible answer, after the reasoning
//! section, with extra steps (bounded) to reach it.

pub mod classify;
pub mod fidelity;
pub mod reasoning;

use std::ops::ControlFlow;

use serde::Serialize;

use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::{generate, GenerateOptions, GenerateOutput};
use crate::manifest::ProbeDecl;
use crate::session::{Prompt, Session};

pub use classify::{Classification, Verdict};
pub use fidelity::{Fidelity, Golden};
pub use reasoning::{Channel, ReasoningReport};
use reasoning::{Family, Switch, Transcript};

/// The default seed question.
pub const DEFAULT_SEED: &str = "What is the capital of France?";
/// The answer expected for [`DEFAULT_SEED`] from an instruct model (a chat template is used),
/// unless the caller declares another expectation.
pub const DEFAULT_EXPECT: &str = "Paris";
/// Default number of greedy steps.
pub const DEFAULT_STEPS: usize = 8;

/// What to compare a model against.
#[derive(Debug, Clone)]
pub enum ReferenceSide<'a> {
    /// A live reference model (e.g. the unquantized source).
    Model {
        /// The reference.
        session: &'a Session,
        /// Its name for reports.
        name: String,
    },
    /// A recorded golden file.
    Golden(Golden),
}

/// Probe settings.
#[derive(Debug, Clone)]
pub struct ProbeOptions<'a> {
    /// Name shown in the report (default: the model directory).
    pub name: Option<String>,
    /// The seed question.
    pub seed: String,
    /// Greedy steps.
    pub steps: usize,
    /// A substring the answer must contain.
    pub expect: Option<String>,
    /// Feed the bare seed even when the model has a chat template (`--no-template`).
    pub no_template: bool,
    /// Top entries recorded per step.
    pub top: usize,
    /// Reference to compare with.
    pub reference: Option<ReferenceSide<'a>>,
    /// Fidelity thresholds.
    pub max_mean_kl: f64,
    /// Fidelity thresholds.
    pub min_agreement: f64,
    /// Steps of the fidelity comparison (teacher-forced continuation length).
    pub fidelity_steps: usize,
    /// Reasoning models: most extra steps spent reaching the answer ([`reasoning`]).
    pub max_reasoning_steps: usize,
}

impl ProbeOptions<'static> {
    /// The options a model's `[models.<name>.probe]` declaration asks for (seed, expectation,
    /// steps; the probe's defaults where it says nothing or there is none). The one mapping:
    /// the CLI (which lays its flags over it), the server's probe gate and the editor use it.
    pub fn from_decl(name: &str, decl: Option<&ProbeDecl>) -> Self {
        Self {
            name: Some(name.to_string()),
            seed: decl
                .and_then(|p| p.prompt.clone())
                .unwrap_or_else(|| DEFAULT_SEED.to_string()),
            steps: decl.and_then(|p| p.max_tokens).unwrap_or(DEFAULT_STEPS),
            expect: decl.and_then(|p| p.expect.clone()),
            ..Self::default()
        }
    }
}

impl Default for ProbeOptions<'_> {
    fn default() -> Self {
        Self {
            name: None,
            seed: DEFAULT_SEED.to_string(),
            steps: DEFAULT_STEPS,
            expect: None,
            no_template: false,
            top: 5,
            reference: None,
            max_mean_kl: fidelity::DEFAULT_MAX_MEAN_KL,
            min_agreement: fidelity::DEFAULT_MIN_AGREEMENT,
            fidelity_steps: 16,
            max_reasoning_steps: reasoning::DEFAULT_MAX_REASONING_STEPS,
        }
    }
}

/// One probe step, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStep {
    /// Token id.
    pub id: u32,
    /// Raw vocabulary piece.
    pub piece: String,
    /// log-probability of the chosen token.
    pub logprob: f32,
    /// Largest finite |logit|.
    pub max_abs_logit: f32,
    /// NaN/Inf logit count.
    pub non_finite: usize,
    /// Top entries: `(id, logprob)`.
    pub top: Vec<(u32, f32)>,
    /// Whether it is an EOS token.
    pub eos: bool,
    /// Reasoning models: where the step belongs (reasoning, marker, answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
}

/// How the seed reached the model.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeedSource {
    /// Rendered through the model's chat template (production-shaped).
    ChatTemplate,
    /// The bare seed after the BOS token (base model, or `--no-template`).
    BareSeed {
        /// Why the template was not used.
        reason: String,
        /// The BOS token used and the rule that chose it, if any.
        bos: Option<String>,
    },
}

/// The result of probing one model.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Model name or directory.
    pub model: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The rule behind it and why.
    pub evidence: Classification,
    /// Decoded answer (up to the first EOS).
    pub answer: String,
    /// The prompt as the model saw it.
    pub prompt: String,
    /// Its token ids.
    pub prompt_ids: Vec<u32>,
    /// How the seed was fed.
    pub seed_source: SeedSource,
    /// The greedy steps.
    pub steps: Vec<ProbeStep>,
    /// Comparison with a reference, if one was given.
    pub fidelity: Option<Fidelity>,
    /// Hints for the reader.
    pub hints: Vec<String>,
    /// The substring the answer was held to (declared, or the default seed's).
    pub expect: Option<String>,
    /// Reasoning models: the switch applied to the seed, what was skipped.
    pub reasoning: Option<ReasoningReport>,
    /// Where the time went.
    pub timing: ProbeTiming,
}

/// Where a probe's time went, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeTiming {
    /// Loading the model, when the caller measured it ([`probe`] gets a loaded session).
    pub load_s: Option<f64>,
    /// The seed through the model, up to the first step's logits.
    pub prefill_s: f64,
    /// The remaining greedy steps.
    pub decode_s: f64,
    /// The comparison with a reference, when one ran.
    pub fidelity_s: Option<f64>,
}

impl ProbeTiming {
    /// All of it.
    pub fn total_s(&self) -> f64 {
        self.load_s.unwrap_or(0.0) + self.prefill_s + self.decode_s + self.fidelity_s.unwrap_or(0.0)
    }
}

/// Problems visible in the prompt itself, reported next to the verdict.
fn prompt_hints(session: &Session, prompt: &Prompt, source: &SeedSource) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(bos) = session.tokenizer.resolve_bos() {
        if prompt.ids.len() >= 2 && prompt.ids[0] == bos.id && prompt.ids[1] == bos.id {
            hints.push(format!(
                "the prompt starts with two BOS tokens `{}` (double BOS); run `cargo rmlx lint` \
                 on the template",
                bos.token
            ));
        }
    }
    if matches!(source, SeedSource::ChatTemplate) {
        if let Some(t) = &session.template {
            let ctx = |add| crate::template::RenderContext {
                messages: vec![serde_json::json!({"role": "user", "content": "x"})],
                add_generation_prompt: add,
                special_tokens: session.tokenizer.special_tokens().clone(),
                ..Default::default()
            };
            if let (Ok(with), Ok(without)) = (t.render(&ctx(true)), t.render(&ctx(false))) {
                if with == without {
                    hints.push(
                        "the chat template ignores add_generation_prompt: the model is not \
                         prompted to answer as the assistant"
                            .to_string(),
                    );
                }
            }
        }
    }
    hints
}

/// The seed as the model sees it, and what the template says about reasoning.
struct Seed {
    prompt: Prompt,
    source: SeedSource,
    /// The thinking switch applied, and whether it changed the rendered prompt.
    switch: Option<(Switch, bool)>,
    /// The template's reasoning family, when it has one.
    family: Option<Family>,
}

/// Builds the seed prompt: through the chat template (the serving path), or the bare seed.
pub fn seed_prompt(session: &Session, opts: &ProbeOptions<'_>) -> Result<(Prompt, SeedSource)> {
    let s = seed(session, opts)?;
    Ok((s.prompt, s.source))
}

fn seed(session: &Session, opts: &ProbeOptions<'_>) -> Result<Seed> {
    let reason = if opts.no_template {
        Some("--no-template was given".to_string())
    } else if session.template.is_none() {
        Some("the model has no chat template (a base model)".to_string())
    } else {
        None
    };
    let Some(reason) = reason else {
        return templated_seed(session, &opts.seed);
    };
    let bos = session.tokenizer.resolve_bos();
    tracing::info!(
        "probe: feeding the bare seed because {reason}; BOS: {}",
        bos.as_ref().map_or_else(
            || "none found".to_string(),
            |b| format!("{} ({})", b.token, b.rule)
        )
    );
    let mut ids = Vec::new();
    let mut text = String::new();
    if let Some(b) = &bos {
        ids.push(b.id);
        text.push_str(&b.token);
    }
    ids.extend(session.tokenizer.encode(&opts.seed, false)?);
    text.push_str(&opts.seed);
    Ok(Seed {
        prompt: Prompt { text, ids },
        source: SeedSource::BareSeed {
            reason,
            bos: bos.map(|b| format!("{} (chosen by: {})", b.token, b.rule)),
        },
        switch: None,
        family: None,
    })
}

/// The seed through the chat template, with thinking switched off when the template reads a
/// known switch ([`reasoning::SWITCHES`]), passed like a request's `chat_template_kwargs`.
fn templated_seed(session: &Session, seed: &str) -> Result<Seed> {
    let source = session.template.as_ref().map_or("", |t| t.source());
    let family = reasoning::detect_family(source);
    let Some(sw) = reasoning::detect_switch(source) else {
        return Ok(Seed {
            prompt: session.user_prompt(seed)?,
            source: SeedSource::ChatTemplate,
            switch: None,
            family,
        });
    };
    let mut kwargs = serde_json::Map::new();
    kwargs.insert(sw.name.to_string(), sw.value());
    let prompt = session.user_prompt_with(seed, &kwargs)?;
    let changed = session
        .user_prompt(seed)
        .map_or(true, |plain| plain.text != prompt.text);
    tracing::info!(
        "probe: the chat template reads `{}`; the seed is rendered with {}={} ({})",
        sw.name,
        sw.name,
        sw.off,
        if changed {
            "this changes the prompt"
        } else {
            "the template's default is already off"
        }
    );
    Ok(Seed {
        prompt,
        source: SeedSource::ChatTemplate,
        switch: Some((sw, changed)),
        family,
    })
}

/// The greedy steps, with the text and channel of each when the template has a reasoning
/// family.
struct Run {
    out: GenerateOutput,
    texts: Vec<String>,
    labels: Option<Vec<Channel>>,
    start: Option<Channel>,
}

/// Runs the seed: `opts.steps` greedy steps (EOS ignored); for a reasoning family, until
/// `opts.steps` answer steps are in, the turn ends before any answer, or
/// `opts.max_reasoning_steps` extra steps are spent.
fn run(session: &Session, seed: &Seed, opts: &ProbeOptions<'_>) -> Result<Run> {
    let eos = session.eos_ids();
    let family = seed.family;
    let start = family.map(|f| f.initial(&seed.prompt.text));
    let gen = GenerateOptions {
        max_tokens: opts.steps + family.map_or(0, |_| opts.max_reasoning_steps),
        ignore_eos: true,
        eos_ids: eos.clone(),
        top: opts.top.max(1),
        ..Default::default()
    };
    let mut transcript = Transcript::default();
    let mut eos_seen = Vec::new();
    let mut failure = None;
    let out = generate(&session.model, &seed.prompt.ids, &gen, |step| {
        let (Some(f), Some(start)) = (family, start) else {
            return ControlFlow::Continue(());
        };
        if let Err(e) = transcript.push(&session.tokenizer, step.id) {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        eos_seen.push(eos.contains(&step.id));
        let labels = f.label(start, &transcript.texts);
        match reasoning::done(&labels, &eos_seen, opts.steps) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let labels = family
        .zip(start)
        .map(|(f, s)| f.label(s, &transcript.texts));
    Ok(Run {
        out,
        texts: transcript.texts,
        labels,
        start,
    })
}

/// What the probe reports about reasoning: the switch, and what the verdict skipped.
fn reasoning_report(seed: &Seed, run: &Run, opts: &ProbeOptions<'_>) -> Option<ReasoningReport> {
    if seed.switch.is_none() && seed.family.is_none() {
        return None;
    }
    let labels = run.labels.as_deref().unwrap_or_default();
    let count = |c| labels.iter().filter(|l| **l == c).count();
    let answer_from_step = labels.iter().position(|l| *l == Channel::Answer);
    let markers = seed
        .family
        .map(|f| f.markers_in(&run.texts.concat()))
        .unwrap_or_default();
    Some(ReasoningReport {
        family: seed.family.map(|f| f.name),
        switch: seed.switch.map(|(sw, _)| ReasoningReport::switch_json(&sw)),
        switch_changed_prompt: seed.switch.is_some_and(|(_, changed)| changed),
        starts_in_reasoning: run.start == Some(Channel::Reasoning),
        skipped_steps: labels.len() - count(Channel::Answer),
        reasoning_steps: count(Channel::Reasoning),
        markers,
        answer_from_step,
        max_reasoning_steps: opts.max_reasoning_steps,
    })
}

/// Probes a loaded model.
pub fn probe(session: &Session, opts: &ProbeOptions<'_>) -> Result<ProbeReport> {
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| session.dir.display().to_string());
    let seed = seed(session, opts)?;
    let run = run(session, &seed, opts)?;
    let eos = session.eos_ids();
    let tok = &session.tokenizer;
    let steps: Vec<ProbeStep> = run
        .out
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| ProbeStep {
            id: s.id,
            piece: tok.id_to_piece(s.id).unwrap_or_default(),
            logprob: s.logprob,
            max_abs_logit: s.max_abs_logit,
            non_finite: s.non_finite,
            top: s
                .top
                .iter()
                .zip(&s.top_logprobs)
                .map(|((id, _), lp)| (*id, *lp))
                .collect(),
            eos: eos.contains(&s.id),
            channel: run.labels.as_ref().and_then(|l| l.get(i).copied()),
        })
        .collect();
    let eos_flags: Vec<bool> = steps.iter().map(|s| s.eos).collect();
    let answer_ids: Vec<u32> = match &run.labels {
        Some(labels) => reasoning::answer_text_indices(labels, &eos_flags)
            .into_iter()
            .map(|i| steps[i].id)
            .collect(),
        None => steps.iter().take_while(|s| !s.eos).map(|s| s.id).collect(),
    };
    let answer = tok.decode(&answer_ids, true)?;
    let views: Vec<classify::StepView<'_>> = steps
        .iter()
        .map(|s| classify::StepView {
            id: s.id,
            piece: &s.piece,
            non_finite: s.non_finite,
            is_eos: s.eos,
            is_special: tok.is_special(s.id),
        })
        .collect();
    let reasoning = reasoning_report(&seed, &run, opts);
    let Seed {
        prompt,
        source: seed_source,
        ..
    } = seed;
    // The default seed has a known answer; hold instruct models to it. Base models continue
    // a bare seed in any direction, so they get no implicit expectation.
    let expect = opts.expect.clone().or_else(|| {
        (opts.seed == DEFAULT_SEED && matches!(seed_source, SeedSource::ChatTemplate))
            .then(|| DEFAULT_EXPECT.to_string())
    });
    let mut evidence = match &run.labels {
        Some(labels) => reasoning::judge(&views, labels, &answer, expect.as_deref()),
        None => classify::classify(&views, &answer, expect.as_deref()),
    };
    let out = run.out;
    let mut hints = prompt_hints(session, &prompt, &seed_source);
    if let SeedSource::BareSeed { reason, .. } = &seed_source {
        hints.push(format!("the chat template was not used because {reason}"));
    }

    let fidelity_started = std::time::Instant::now();
    let fidelity = match &opts.reference {
        None => None,
        Some(ReferenceSide::Model {
            session: reference,
            name,
        }) => {
            let (golden, full) =
                fidelity::record(&reference.model, name, &prompt.ids, opts.fidelity_steps)?;
            Some(fidelity::compare(
                &session.model,
                &golden,
                Some(&full),
                opts.max_mean_kl,
                opts.min_agreement,
            )?)
        }
        Some(ReferenceSide::Golden(golden)) => {
            if golden.prompt_ids != prompt.ids {
                return Err(Diagnostic::error(
                    code::Probe::GoldenMismatch,
                    "the golden file was recorded for a different prompt",
                )
                .with_help(
                    "the seed, the template or the tokenizer changed; re-record with `cargo rmlx probe --bless`",
                ));
            }
            Some(fidelity::compare(
                &session.model,
                golden,
                None,
                opts.max_mean_kl,
                opts.min_agreement,
            )?)
        }
    };
    let timing = ProbeTiming {
        load_s: None,
        prefill_s: out.prefill.as_secs_f64(),
        decode_s: out.decode.as_secs_f64(),
        fidelity_s: fidelity
            .is_some()
            .then(|| fidelity_started.elapsed().as_secs_f64()),
    };
    if let Some(f) = &fidelity {
        // A model that is not obviously broken can still have drifted from its reference.
        if f.diverged() && matches!(evidence.verdict, Verdict::Ok | Verdict::UnexpectedAnswer) {
            evidence = Classification {
                verdict: Verdict::Diverged,
                rule: "fidelity",
                reason: format!(
                    "against {}: top-1 agreement {:.0}% (min {:.0}%), mean KL {:.3} nats (max {:.3})",
                    f.reference,
                    f.top1_agreement * 100.0,
                    f.min_agreement * 100.0,
                    f.mean_kl,
                    f.max_mean_kl
                ),
            };
        }
    }
    Ok(ProbeReport {
        expect,
        model: name,
        verdict: evidence.verdict,
        evidence,
        answer,
        prompt: prompt.text,
        prompt_ids: prompt.ids,
        seed_source,
        steps,
        fidelity,
        hints,
        timing,
        reasoning,
    })
}
