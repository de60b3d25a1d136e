//! The smoke probe: the seed question rendered through the model's own chat template — by
//! [`Session::user_prompt`], the same code path the server uses — a short greedy run with EOS
//! ignored, and a verdict with its evidence ([`classify`]); optionally compared against a
//! reference model or a golden file ([`fidelity`]). Base models without a template get the
//! bare seed prefixed with the BOS of the resolution chain; that fallback is logged and shown.

pub mod classify;
pub mod fidelity;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, Result};
use crate::engine::{generate, GenerateOptions};
use crate::session::{Prompt, Session};

pub use classify::{Classification, Verdict};
pub use fidelity::{Fidelity, Golden};

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

/// Builds the seed prompt: through the chat template (the serving path), or the bare seed.
pub fn seed_prompt(session: &Session, opts: &ProbeOptions<'_>) -> Result<(Prompt, SeedSource)> {
    let reason = if opts.no_template {
        Some("--no-template was given".to_string())
    } else if session.template.is_none() {
        Some("the model has no chat template (a base model)".to_string())
    } else {
        None
    };
    let Some(reason) = reason else {
        return Ok((session.user_prompt(&opts.seed)?, SeedSource::ChatTemplate));
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
    Ok((
        Prompt { text, ids },
        SeedSource::BareSeed {
            reason,
            bos: bos.map(|b| format!("{} (chosen by: {})", b.token, b.rule)),
        },
    ))
}

/// Probes a loaded model.
pub fn probe(session: &Session, opts: &ProbeOptions<'_>) -> Result<ProbeReport> {
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| session.dir.display().to_string());
    let (prompt, seed_source) = seed_prompt(session, opts)?;
    let eos = session.eos_ids();
    let gen = GenerateOptions {
        max_tokens: opts.steps,
        ignore_eos: true,
        eos_ids: eos.clone(),
        top: opts.top.max(1),
        ..Default::default()
    };
    let out = generate(&session.model, &prompt.ids, &gen, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let tok = &session.tokenizer;
    let steps: Vec<ProbeStep> = out
        .steps
        .iter()
        .map(|s| ProbeStep {
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
        })
        .collect();
    let answer_ids: Vec<u32> = steps.iter().take_while(|s| !s.eos).map(|s| s.id).collect();
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
    // The default seed has a known answer; hold instruct models to it. Base models continue
    // a bare seed in any direction, so they get no implicit expectation.
    let expect = opts.expect.clone().or_else(|| {
        (opts.seed == DEFAULT_SEED && matches!(seed_source, SeedSource::ChatTemplate))
            .then(|| DEFAULT_EXPECT.to_string())
    });
    let mut evidence = classify::classify(&views, &answer, expect.as_deref());
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
                    "rmlx::probe::golden-mismatch",
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
    })
}
