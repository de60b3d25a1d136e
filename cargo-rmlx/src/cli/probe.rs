//! `cargo rmlx probe [MODEL…]`: smoke-probe models and report verdicts (human or JSON).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use owo_colors::OwoColorize;

use super::generate::{resolve_model, DtypeArg};
use super::output::color;
use super::{exit, GlobalArgs, MessageFormat};
use crate::diagnostic::{Diagnostic, Result};
use crate::probe::{
    fidelity, probe, ProbeOptions, ProbeReport, ReferenceSide, SeedSource, Verdict, DEFAULT_SEED,
    DEFAULT_STEPS,
};
use crate::session::Session;

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Models: model directories.
    #[arg(required = true)]
    pub models: Vec<String>,
    /// The seed question.
    #[arg(long, default_value = DEFAULT_SEED)]
    pub seed: String,
    /// Greedy steps.
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    pub steps: usize,
    /// Substring the answer must contain (case-insensitive).
    #[arg(long)]
    pub expect: Option<String>,
    /// Feed the bare seed even when the model has a chat template.
    #[arg(long)]
    pub no_template: bool,
    /// Compare with a reference: a model directory, or `golden` for the blessed golden file.
    #[arg(long, value_name = "MODEL|golden")]
    pub reference: Option<String>,
    /// Record the model's own run as its golden file (compared with by `--reference golden`).
    #[arg(long)]
    pub bless: bool,
    /// Golden file location (default: `<model dir>.golden.json` beside the model).
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// `diverged` when the mean KL divergence (nats) exceeds this.
    #[arg(long, default_value_t = fidelity::DEFAULT_MAX_MEAN_KL)]
    pub max_mean_kl: f64,
    /// `diverged` when top-1 agreement falls below this (0..1).
    #[arg(long, default_value_t = fidelity::DEFAULT_MIN_AGREEMENT)]
    pub min_agreement: f64,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// The golden file of a model directory unless overridden.
pub fn default_golden_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.golden.json"))
}

/// Runs `probe`; the exit code is the worst verdict's.
pub fn run(_g: &GlobalArgs, a: ProbeArgs) -> Result<u8> {
    let reference_session = match a.reference.as_deref() {
        Some("golden") | None => None,
        Some(dir) => Some(Session::load(&resolve_model(dir)?, a.dtype.into())?),
    };
    let mut worst = exit::OK;
    let mut stdout = std::io::stdout().lock();
    for model in &a.models {
        let dir = resolve_model(model)?;
        let session = Session::load(&dir, a.dtype.into())?;
        let golden_path = a
            .golden
            .clone()
            .unwrap_or_else(|| default_golden_path(&dir));
        let reference = match (&reference_session, a.reference.as_deref()) {
            (Some(s), _) => Some(ReferenceSide::Model {
                session: s,
                name: a.reference.clone().unwrap_or_default(),
            }),
            (None, Some("golden")) => {
                Some(ReferenceSide::Golden(fidelity::read_golden(&golden_path)?))
            }
            _ => None,
        };
        let opts = ProbeOptions {
            name: Some(model.clone()),
            seed: a.seed.clone(),
            steps: a.steps,
            expect: a.expect.clone(),
            no_template: a.no_template,
            reference,
            max_mean_kl: a.max_mean_kl,
            min_agreement: a.min_agreement,
            ..Default::default()
        };
        let report = probe(&session, &opts)?;
        if a.bless {
            if !report.verdict.is_healthy() {
                return Err(Diagnostic::error(
                    "rmlx::probe::bless-unhealthy",
                    format!(
                        "refusing to bless {model}: its verdict is {}",
                        report.verdict
                    ),
                )
                .with_help("a golden file records a healthy run; fix the model first"));
            }
            let (golden, _) = fidelity::record(
                &session.model,
                model,
                &report.prompt_ids,
                opts.fidelity_steps,
            )?;
            fidelity::write_golden(&golden_path, &golden)?;
            tracing::info!("blessed {}", golden_path.display());
            if a.message_format == MessageFormat::Human {
                super::output::status("Blessed", &golden_path.display().to_string());
            }
        }
        match a.message_format {
            MessageFormat::Json => {
                let _ = writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string(&report).expect("serializes")
                );
            }
            MessageFormat::Human => {
                let _ = write!(stdout, "{}", render_human(&report, &session));
            }
        }
        worst = worst.max(report.verdict.exit_code());
    }
    Ok(worst)
}

/// The report for people: verdict, seed as rendered, steps table, evidence, hints.
pub fn render_human(r: &ProbeReport, session: &Session) -> String {
    let c = color();
    let verdict = if c {
        match r.verdict {
            Verdict::Ok => r.verdict.name().green().bold().to_string(),
            Verdict::Inconclusive => r.verdict.name().yellow().bold().to_string(),
            _ => r.verdict.name().red().bold().to_string(),
        }
    } else {
        r.verdict.name().to_string()
    };
    let mut out = format!("probe {}: {verdict}\n", r.model);
    out += &format!("  answer: {:?}\n", r.answer);
    out += &format!("  why: {} ({})\n", r.evidence.reason, r.evidence.rule);
    let how = match &r.seed_source {
        SeedSource::ChatTemplate => "rendered through the model's chat template".to_string(),
        SeedSource::BareSeed { reason, bos } => format!(
            "bare seed (BOS {}) because {reason}",
            bos.as_deref().unwrap_or("none")
        ),
    };
    out += &format!("  seed ({how}, {} tokens):\n", r.prompt_ids.len());
    for line in r.prompt.lines() {
        out += &format!("    │ {line}\n");
    }
    out += "  step  id      piece             logprob  max|logit|  top-2\n";
    for (i, s) in r.steps.iter().enumerate() {
        let second = s
            .top
            .get(1)
            .map(|(id, lp)| {
                format!(
                    "{:?} {lp:.2}",
                    session.tokenizer.id_to_piece(*id).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        out += &format!(
            "  {i:>4}  {:<6}  {:<16}  {:>7.2}  {:>10.2}  {second}{}\n",
            s.id,
            format!("{:?}", s.piece),
            s.logprob,
            s.max_abs_logit,
            if s.eos { "  (eos)" } else { "" }
        );
    }
    if let Some(f) = &r.fidelity {
        out += &format!(
            "  fidelity vs {}: top-1 agreement {:.0}%, mean KL {:.4} nats (thresholds: ≥{:.0}%, ≤{:.3})\n",
            f.reference,
            f.top1_agreement * 100.0,
            f.mean_kl,
            f.min_agreement * 100.0,
            f.max_mean_kl
        );
    }
    for h in &r.hints {
        out += &format!("  hint: {h}\n");
    }
    out
}
