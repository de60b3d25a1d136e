//! `cargo rmlx probe [MODEL…]`: smoke-probe models and report verdicts (human or JSON).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use owo_colors::OwoColorize;

use super::output::{color, load_session, message};
use super::{exit, GlobalArgs, MessageFormat};
use crate::build::{self, BuildOptions};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::DtypePolicy;
use crate::manifest::{Manifest, ModelDecl, Quantize};
use crate::probe::{
    fidelity, probe, Channel, ProbeOptions, ProbeReport, ReferenceSide, SeedSource, Verdict,
};
use crate::session::Session;

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Models: names declared in rmlx.toml (built first when stale) or model directories.
    /// Default: every declared model.
    pub models: Vec<String>,
    /// The seed question (default: the model's `[probe] prompt`, else "What is the capital
    /// of France?").
    #[arg(long)]
    pub seed: Option<String>,
    /// Greedy steps (default: the model's `[probe] max-tokens`, else 8).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Substring the answer must contain (case-insensitive).
    #[arg(long)]
    pub expect: Option<String>,
    /// Feed the bare seed even when the model has a chat template.
    #[arg(long)]
    pub no_template: bool,
    /// Reasoning models: most extra greedy steps spent waiting for the answer after the
    /// reasoning section (`inconclusive` when it does not come).
    #[arg(long, default_value_t = crate::probe::reasoning::DEFAULT_MAX_REASONING_STEPS)]
    pub max_reasoning_steps: usize,
    /// Compare with a reference: a model directory, or `golden` for the blessed golden file.
    #[arg(long, value_name = "MODEL|golden")]
    pub reference: Option<String>,
    /// Record the model's own run as its golden file (compared with by `--reference golden`).
    #[arg(long)]
    pub bless: bool,
    /// Golden file location (default: `rmlx-golden/<name>.json` beside rmlx.toml for a
    /// declared model, `<model dir>.golden.json` beside a model directory).
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// `diverged` when the mean KL divergence (nats) exceeds this.
    #[arg(long, default_value_t = fidelity::DEFAULT_MAX_MEAN_KL)]
    pub max_mean_kl: f64,
    /// `diverged` when top-1 agreement falls below this (0..1).
    #[arg(long, default_value_t = fidelity::DEFAULT_MIN_AGREEMENT)]
    pub min_agreement: f64,
    /// Compute dtype.
    #[arg(long, value_parser = super::generate::policy_parser(), default_value = "auto")]
    pub dtype: DtypePolicy,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
    /// Probe tensor-parallel over the hosts of this MLX hostfile (as `generate --hostfile`).
    #[arg(long)]
    pub hostfile: Option<std::path::PathBuf>,
}

/// The golden file of a model directory unless overridden.
pub fn default_golden_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.golden.json"))
}

/// One model to probe.
struct Target<'m> {
    /// Name shown in the report (declared name or the argument).
    label: String,
    /// Model directory.
    dir: PathBuf,
    /// The declaration, for declared models.
    decl: Option<&'m ModelDecl>,
}

/// Resolves the MODEL arguments against rmlx.toml (building declared models that are stale,
/// like `cargo test` builds) and the file system.
fn targets<'m>(
    g: &GlobalArgs,
    a: &ProbeArgs,
    manifest: Option<&'m Manifest>,
) -> Result<Vec<Target<'m>>> {
    let declared: Vec<&ModelDecl> = match manifest {
        Some(m) if a.models.is_empty() => m.models.iter().collect(),
        Some(m) => a.models.iter().filter_map(|n| m.model(n)).collect(),
        None => Vec::new(),
    };
    if a.models.is_empty() && declared.is_empty() {
        return Err(Diagnostic::error(
            code::Cli::NoModels,
            "no models to probe: pass model directories, or declare models in rmlx.toml",
        ));
    }
    if let (Some(m), false) = (manifest, declared.is_empty()) {
        let names: Vec<String> = declared.iter().map(|d| d.name.clone()).collect();
        let json = a.message_format == MessageFormat::Json;
        let opts = BuildOptions {
            progress: crate::progress::visible(),
            ..BuildOptions::default()
        };
        build::build(m, &names, &opts, &mut |e| {
            super::build::on_event(g.quiet, json, e)
        })?;
    }
    let mut out = Vec::new();
    if a.models.is_empty() {
        for d in declared {
            let m = manifest.expect("declared models come from a manifest");
            out.push(Target {
                label: d.name.clone(),
                dir: m.output_dir(&d.name),
                decl: Some(d),
            });
        }
        return Ok(out);
    }
    for arg in &a.models {
        match manifest.and_then(|m| m.model(arg).map(|d| (m, d))) {
            Some((m, d)) => out.push(Target {
                label: d.name.clone(),
                dir: m.output_dir(&d.name),
                decl: Some(d),
            }),
            None => out.push(Target {
                label: arg.clone(),
                dir: crate::manifest::resolve_model_in(arg, Ok(manifest))?,
                decl: None,
            }),
        }
    }
    Ok(out)
}

/// The reference a built model is compared with by default: its source directory when that
/// is dense (unquantized), the model was quantized from it, and it is small enough to load
/// next to the model. Why no reference is used is logged.
fn automatic_reference(decl: &ModelDecl) -> Option<PathBuf> {
    const MAX_REFERENCE_BYTES: u64 = 4 << 30;
    if !matches!(decl.quantize, Quantize::Quantize(_)) {
        tracing::debug!(
            "{}: not quantized by the build; no automatic reference",
            decl.name
        );
        return None;
    }
    if !decl.source.is_dir() {
        tracing::info!(
            "{}: source {} is not a model directory (a GGUF is quantized itself); no automatic \
             reference — use --reference or --bless a golden file",
            decl.name,
            decl.source.display()
        );
        return None;
    }
    let quantized_source = crate::snapshot::ModelConfig::from_dir(&decl.source)
        .map(|c| c.quantization.is_some())
        .unwrap_or(true);
    if quantized_source {
        tracing::info!(
            "{}: the source is quantized; no automatic reference",
            decl.name
        );
        return None;
    }
    let size = super::output::weight_bytes(&decl.source);
    if size > MAX_REFERENCE_BYTES {
        tracing::info!(
            "{}: source weights are {} MiB, above the {} MiB limit for an automatic reference",
            decl.name,
            size >> 20,
            MAX_REFERENCE_BYTES >> 20
        );
        return None;
    }
    Some(decl.source.clone())
}

/// Runs `probe`; the exit code is the worst verdict's.
pub fn run(g: &GlobalArgs, a: ProbeArgs) -> Result<u8> {
    let role = super::launch::join(a.hostfile.as_deref())?;
    super::launch::run_in(role, || probe_here(g, a))
}

fn probe_here(g: &GlobalArgs, a: ProbeArgs) -> Result<u8> {
    let manifest = Manifest::find(g.manifest_path.as_deref())?;
    let targets = targets(g, &a, manifest.as_ref())?;
    let explicit_reference = match a.reference.as_deref() {
        Some("golden") | None => None,
        Some(dir) => Some(load_session(
            &crate::manifest::resolve_model_in(dir, Ok(manifest.as_ref()))?,
            a.dtype,
        )?),
    };
    let mut worst = exit::OK;
    let last = targets.len().saturating_sub(1);
    for (i, t) in targets.iter().enumerate() {
        let loading = std::time::Instant::now();
        let session = load_session(&t.dir, a.dtype)?;
        let load_s = loading.elapsed().as_secs_f64();
        let golden_path = a
            .golden
            .clone()
            .unwrap_or_else(|| match (t.decl, &manifest) {
                (Some(d), Some(m)) => m.dir.join("rmlx-golden").join(format!("{}.json", d.name)),
                _ => default_golden_path(&t.dir),
            });
        let auto = match (&explicit_reference, a.reference.as_deref(), t.decl) {
            (None, None, Some(d)) => automatic_reference(d),
            _ => None,
        };
        let auto_session = match &auto {
            Some(dir) => Some(load_session(dir, a.dtype)?),
            None => None,
        };
        let reference = match (&explicit_reference, &auto_session, a.reference.as_deref()) {
            (Some(s), _, _) => Some(ReferenceSide::Model {
                session: s,
                name: a.reference.clone().unwrap_or_default(),
            }),
            (None, Some(s), _) => Some(ReferenceSide::Model {
                session: s,
                name: format!("{} (source)", auto.as_deref().unwrap_or(&t.dir).display()),
            }),
            (None, None, Some("golden")) => {
                Some(ReferenceSide::Golden(fidelity::read_golden(&golden_path)?))
            }
            _ => None,
        };
        let mut declared = ProbeOptions::from_decl(&t.label, t.decl.map(|d| &d.probe));
        if let Some(seed) = &a.seed {
            declared.seed = seed.clone();
        }
        if let Some(steps) = a.steps {
            declared.steps = steps;
        }
        if a.expect.is_some() {
            declared.expect = a.expect.clone();
        }
        let opts = ProbeOptions {
            no_template: a.no_template,
            max_reasoning_steps: a.max_reasoning_steps,
            reference,
            max_mean_kl: a.max_mean_kl,
            min_agreement: a.min_agreement,
            ..declared
        };
        let mut report = probe(&session, &opts)?;
        report.timing.load_s = Some(load_s);
        if a.bless {
            if !report.verdict.is_healthy() {
                return Err(Diagnostic::error(
                    code::Probe::BlessUnhealthy,
                    format!(
                        "refusing to bless {}: its verdict is {}",
                        t.label, report.verdict
                    ),
                )
                .with_help("a golden file records a healthy run; fix the model first"));
            }
            let (golden, _) = fidelity::record(
                &session.model,
                &t.label,
                &report.prompt_ids,
                opts.fidelity_steps,
            )?;
            fidelity::write_golden(&golden_path, &golden)?;
            if a.message_format == MessageFormat::Human && !g.quiet {
                super::output::status("Blessed", &golden_path.display().to_string());
            }
        }
        match a.message_format {
            MessageFormat::Json => message("probe-verdict", &report),
            MessageFormat::Human => {
                let _ = write!(std::io::stdout(), "{}", render_human(&report, &session));
            }
        }
        worst = worst.max(report.verdict.exit_code());
        if i == last {
            // The process ends next and its memory goes back to the system at once: freeing
            // the model's arrays one by one first only delays the exit (~10–20 ms for
            // SmolLM2, BENCHMARKS.md "Cold `cargo rmlx probe`").
            std::mem::forget(session);
        }
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
    if let Some(line) = reasoning_line(r) {
        out += &line;
    }
    out += "  step  id      piece             logprob  max|logit|  top-2\n";
    let shown = shown_steps(r);
    for (i, s) in r.steps.iter().enumerate() {
        if !shown[i] {
            if i == 0 || shown[i - 1] {
                let hidden = shown[i..].iter().take_while(|v| !**v).count();
                out += &format!("     …  {hidden} reasoning steps not shown (JSON has them)\n");
            }
            continue;
        }
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
            channel_note(s)
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
    let t = &r.timing;
    let mut parts = Vec::new();
    if let Some(l) = t.load_s {
        parts.push(format!("load {l:.2} s"));
    }
    parts.push(format!(
        "prefill {} tokens {:.2} s",
        r.prompt_ids.len(),
        t.prefill_s
    ));
    parts.push(format!(
        "{} steps {:.2} s",
        r.steps.len().saturating_sub(1),
        t.decode_s
    ));
    if let Some(f) = t.fidelity_s {
        parts.push(format!("fidelity {f:.2} s"));
    }
    out += &format!("  took {:.2} s ({})\n", t.total_s(), parts.join(", "));
    out
}

/// The step table's note: EOS, and the channel of a reasoning model's step.
fn channel_note(s: &crate::probe::ProbeStep) -> String {
    let mut note = String::new();
    if s.eos {
        note += "  (eos)";
    }
    match s.channel {
        Some(Channel::Reasoning) => note += "  (reasoning)",
        Some(Channel::Marker) => note += "  (marker)",
        _ => {}
    }
    note
}

/// What the probe did about reasoning, in one line (`None` for other models).
fn reasoning_line(r: &ProbeReport) -> Option<String> {
    let x = r.reasoning.as_ref()?;
    let switch = match &x.switch {
        Some(sw) => format!(
            "seed rendered with {}={}{}",
            sw["name"].as_str().unwrap_or_default(),
            sw["value"],
            if x.switch_changed_prompt {
                ""
            } else {
                " (already the template's default)"
            }
        ),
        None => "no switch to turn thinking off".to_string(),
    };
    let skipped = match x.family {
        Some(f) => format!(
            "; {f} markers: {} step(s) skipped ({} of reasoning), answer from step {}, markers \
             seen [{}]",
            x.skipped_steps,
            x.reasoning_steps,
            x.answer_from_step
                .map_or_else(|| "none".to_string(), |i| i.to_string()),
            x.markers.join(", ")
        ),
        None => String::new(),
    };
    Some(format!("  reasoning: {switch}{skipped}\n"))
}

/// Steps of the human table: all, except the middle of a long run of reasoning/marker steps
/// (its first and last [`SHOWN_AT_EDGES`] stay).
fn shown_steps(r: &ProbeReport) -> Vec<bool> {
    let skipped = |i: usize| r.steps[i].channel.is_some_and(|c| c != Channel::Answer);
    let n = r.steps.len();
    let mut shown = vec![true; n];
    let mut i = 0;
    while i < n {
        let run = (i..n).take_while(|&j| skipped(j)).count();
        if run > 2 * SHOWN_AT_EDGES + 1 {
            shown[i + SHOWN_AT_EDGES..i + run - SHOWN_AT_EDGES].fill(false);
        }
        i += run.max(1);
    }
    shown
}

/// Reasoning steps shown at each end of a long run in the human table.
const SHOWN_AT_EDGES: usize = 3;
