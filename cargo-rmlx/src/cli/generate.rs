//! `cargo rmlx generate <MODEL> --prompt <TEXT> [--chat] …`: run a model on a prompt.

use std::io::Write;
use std::ops::ControlFlow;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use serde_json::json;

use super::{exit, GlobalArgs, MessageFormat};
use crate::constrain::ConstraintSpec;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::{generate, DtypePolicy, GenerateOptions, Penalties, SamplerConfig, StopReason};
use crate::manifest::Dtype;

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model: a model directory (or, with rmlx.toml, a declared model name).
    pub model: String,
    /// The prompt text.
    #[arg(long, short)]
    pub prompt: String,
    /// Render the prompt as one user turn through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens seen in the last `--repetition-context-size` tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// How many of the latest tokens the repetition penalty looks at.
    #[arg(long, default_value_t = crate::engine::penalty::DEFAULT_REPETITION_CONTEXT)]
    pub repetition_context_size: usize,
    /// Subtract this from the logit of every token already generated (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Subtract this per earlier occurrence of a generated token (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Structured output: a JSON schema file the output must match.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Structured output: a regular expression the whole output must match.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
    /// Structured output: a grammar file (llguidance's Lark syntax) the output must match.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<std::path::PathBuf>,
    /// Top logits recorded per step in JSON output.
    #[arg(long, default_value_t = 5)]
    pub top_logits: usize,
    /// Compute dtype (auto: float32 on CPU, the model's dtype on a GPU).
    #[arg(long, value_parser = policy_parser(), default_value = "auto")]
    pub dtype: DtypePolicy,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
    /// Run tensor-parallel over the hosts of this MLX hostfile (ring or mlx.launch format):
    /// the other ranks are started, this process is rank 0 and prints.
    #[arg(long)]
    pub hostfile: Option<std::path::PathBuf>,
}

/// The `--dtype` value of a float dtype.
fn dtype_arg(d: Dtype) -> &'static str {
    match d {
        Dtype::Bfloat16 => "bf16",
        Dtype::Float16 => "f16",
        Dtype::Float32 => "f32",
    }
}

/// `dtypes` as `--dtype` values, with their full names as help.
fn dtype_values(dtypes: [Dtype; 3]) -> [PossibleValue; 3] {
    dtypes.map(|d| PossibleValue::new(dtype_arg(d)).help(d.as_str()))
}

/// `--dtype` of `convert`: one of the float dtypes (`bf16`, `f16`, `f32`).
pub fn dtype_parser() -> impl TypedValueParser<Value = Dtype> {
    let values = dtype_values([Dtype::Bfloat16, Dtype::Float16, Dtype::Float32]);
    PossibleValuesParser::new(values)
        .try_map(|s| Dtype::parse(&s).ok_or_else(|| format!("unknown dtype `{s}`")))
}

/// `--dtype` of the commands that run a model: `auto` or one of the float dtypes (`f32`,
/// `bf16`, `f16`).
pub fn policy_parser() -> impl TypedValueParser<Value = DtypePolicy> {
    let auto = PossibleValue::new("auto").help("float32 on CPU, the model's dtype on a GPU");
    let fixed = dtype_values([Dtype::Float32, Dtype::Bfloat16, Dtype::Float16]);
    PossibleValuesParser::new(std::iter::once(auto).chain(fixed)).try_map(|s| match s.as_str() {
        "auto" => Ok(DtypePolicy::Auto),
        other => Dtype::parse(other)
            .map(DtypePolicy::Fixed)
            .ok_or_else(|| format!("unknown dtype `{other}`")),
    })
}

/// The `--dtype` value that selects `policy` (the bench hands it to the probe it times).
pub fn policy_arg(policy: DtypePolicy) -> &'static str {
    match policy {
        DtypePolicy::Auto => "auto",
        DtypePolicy::Fixed(d) => dtype_arg(d),
    }
}

/// Runs `generate` (with `--hostfile`: as rank 0 of a tensor-parallel run, or as the rank
/// this process was started as).
pub fn run(g: &GlobalArgs, a: GenerateArgs) -> Result<u8> {
    let role = super::launch::join(a.hostfile.as_deref())?;
    super::launch::run_in(role, || generate_here(g, a))
}

fn generate_here(g: &GlobalArgs, a: GenerateArgs) -> Result<u8> {
    if !(a.repetition_penalty.is_finite() && a.repetition_penalty > 0.0) {
        return Err(crate::diagnostic::Diagnostic::error(
            code::Cli::BadArgument,
            format!(
                "--repetition-penalty must be a positive number, got {}",
                a.repetition_penalty
            ),
        ));
    }
    let dir = crate::manifest::resolve_model(&a.model, g.manifest_path.as_deref())?;
    let session = super::output::load_session(&dir, a.dtype)?;
    let prompt = if a.chat {
        session.user_prompt(&a.prompt)?
    } else {
        session.raw_prompt(&a.prompt)?
    };
    let constraint = constraint(&a)?
        .map(|spec| session.compile_constraint(&spec))
        .transpose()?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            min_p: a.min_p,
            seed: a.seed,
        },
        ignore_eos: a.ignore_eos,
        eos_ids: session.eos_ids(),
        top: a.top_logits.max(1),
        penalties: Penalties {
            repetition: a.repetition_penalty,
            repetition_context: a.repetition_context_size,
            presence: a.presence_penalty,
            frequency: a.frequency_penalty,
            logit_bias: Vec::new(),
        },
        constraint,
        evidence: true, // printed with every step
    };
    let human = a.message_format == MessageFormat::Human;
    let mut decoder = session.tokenizer.stream_decoder(true);
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generate(&session.model, &prompt.ids, &opts, |step| {
        if human {
            match decoder.push(&session.tokenizer, step.id) {
                Ok(Some(text)) => {
                    if let Err(e) = stdout
                        .write_all(text.as_bytes())
                        .and_then(|_| stdout.flush())
                    {
                        write_err = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("detokenizing failed: {e}"),
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_err {
        // stdout closed (e.g. piped into `head`): nothing more to say.
        tracing::debug!("stdout closed: {e}");
        return Ok(exit::OK);
    }
    let ids = out.ids();
    let text = session.tokenizer.decode(&ids, true)?;
    if human {
        if let Ok(Some(rest)) = decoder.flush(&session.tokenizer) {
            let _ = stdout.write_all(rest.as_bytes());
        }
        let _ = writeln!(stdout);
        if !g.quiet && crate::engine::dist::Shard::current().rank == 0 {
            let n_prompt = out.prompt_ids.len();
            let n_gen = ids.len();
            let secs = |d: std::time::Duration| d.as_secs_f64().max(1e-9);
            eprintln!(
                "Prompt: {n_prompt} tokens, {:.1} tokens-per-sec\nGeneration: {n_gen} tokens, {:.1} tokens-per-sec",
                n_prompt as f64 / secs(out.prefill),
                n_gen.saturating_sub(1) as f64 / secs(out.decode),
            );
            if opts.constraint.is_some() {
                eprintln!(
                    "Constraint: {:.1} µs per token computing masks",
                    out.mask_time.as_secs_f64() * 1e6 / n_gen.max(1) as f64
                );
            }
        }
    } else {
        let steps: Vec<_> = out
            .steps
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "piece": session.tokenizer.id_to_piece(s.id),
                    "logprob": s.logprob,
                    "top": s.top.iter().map(|(id, l)| json!([id, l])).collect::<Vec<_>>(),
                    "max_abs_logit": s.max_abs_logit,
                    "non_finite": s.non_finite,
                })
            })
            .collect();
        let obj = json!({
            "model": dir,
            "prompt": prompt.text,
            "prompt_ids": out.prompt_ids,
            "generated_ids": ids,
            "text": text,
            "finish_reason": match out.stop {
                StopReason::Eos => "stop",
                StopReason::Length => "length",
                StopReason::Stopped => "stop",
            },
            "steps": steps,
            "timing": {
                "prefill_s": out.prefill.as_secs_f64(),
                "decode_s": out.decode.as_secs_f64(),
                "mask_s": out.mask_time.as_secs_f64(),
            },
        });
        drop(stdout);
        super::output::message("generation", &obj);
    }
    Ok(exit::OK)
}

/// The constraint the flags ask for (files read here; compiled by the session).
fn constraint(a: &GenerateArgs) -> Result<Option<ConstraintSpec>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::io(code::Cli::Io, "reading", path, &e))
    };
    if let Some(path) = &a.json_schema {
        let text = read(path)?;
        let schema = serde_json::from_str(&text).map_err(|e| {
            Diagnostic::error(
                code::Constrain::Invalid,
                format!("{} is not valid JSON: {e}", path.display()),
            )
            .with_file(path)
        })?;
        return Ok(Some(ConstraintSpec::JsonSchema(schema)));
    }
    if let Some(path) = &a.grammar {
        return Ok(Some(ConstraintSpec::Lark(read(path)?)));
    }
    Ok(a.regex.clone().map(ConstraintSpec::Regex))
}
