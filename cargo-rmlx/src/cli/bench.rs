//! `cargo rmlx bench <MODEL> [--compare-mlx-lm] [--compare-llama-cpp [GGUF]]`:
//! prefill/decode throughput, time to first token and peak memory, side by side with mlx-lm
//! and llama.cpp in the same invocation, and the wall time of a cold `probe` process.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::output::{load_session, message};
use super::{exit, GlobalArgs, MessageFormat};
use crate::bench::{
    measure_batch, measure_llama_cpp, measure_mlx_lm, measure_rmlx, median, rows, synthetic_prompt,
    this_program, time_probe, Measurement, ProbeTiming, Reference, Row, Scripts, LLAMA_CPP_SCRIPT,
    MLX_LM_SCRIPT, RMLX,
};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::DtypePolicy;
use crate::manifest::{resolve_model, Manifest};
use crate::snapshot::ModelConfig;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory (or the name of a model declared in rmlx.toml).
    pub model: String,
    /// Prompt lengths to measure prefill at.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Compute dtype of our engine.
    #[arg(long, value_parser = super::generate::policy_parser(), default_value = "auto")]
    pub dtype: DtypePolicy,
    /// Also run mlx-lm (model dtype and float32-cast) on the same prompts, interleaved.
    #[arg(long)]
    pub compare_mlx_lm: bool,
    /// Which mlx-lm modes to run (mlx-lm's bf16 CPU kernels are ~10× slower than its
    /// float32 ones: `float32` alone keeps long CPU comparisons short).
    #[arg(long, value_delimiter = ',', default_value = "model,float32")]
    pub mlx_lm_modes: Vec<MlxLmMode>,
    /// Python of the mlx-lm venv (default: target/oracle-venv/bin/python).
    #[arg(long, env = "RMLX_ORACLE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Also run llama.cpp (llama-cpp-python) on this GGUF with the same prompt ids,
    /// interleaved; without a value, the model's `.gguf` source declared in rmlx.toml.
    #[arg(long, value_name = "GGUF", num_args = 0..=1)]
    pub compare_llama_cpp: Option<Option<PathBuf>>,
    /// Threads of llama.cpp (default: every CPU this process may use). Its threads spin at
    /// barriers, so on a machine busy with other work fewer threads can be much faster.
    #[arg(long, value_name = "N")]
    pub llama_threads: Option<usize>,
    /// Python of the llama.cpp venv (default: target/llama-venv/bin/python).
    #[arg(long, env = "RMLX_LLAMA_PYTHON")]
    pub llama_python: Option<PathBuf>,
    /// Instead of the throughput table: the time of one batched decode step at each of these
    /// batch sizes (sequences decoded together, as `serve --max-batch` does), engine only.
    #[arg(long, value_delimiter = ',', value_name = "B,...")]
    pub batch: Vec<usize>,
    /// Skip timing a cold `probe` process of the model.
    #[arg(long)]
    pub no_probe_timing: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub message_format: MessageFormat,
}

/// Runs `bench`.
pub fn run(g: &GlobalArgs, a: BenchArgs) -> Result<u8> {
    if a.prompt_tokens.contains(&0) {
        return Err(Diagnostic::error(
            code::Cli::BadArgument,
            "--prompt-tokens: every length must be at least 1",
        ));
    }
    let dir = resolve_model(&a.model, g.manifest_path.as_deref())?;
    let policy: DtypePolicy = a.dtype;
    if !a.batch.is_empty() {
        return run_batch(&dir, policy, &a);
    }
    let dtype = dtype_name(policy.resolve(ModelConfig::from_dir(&dir)?.torch_dtype.as_deref()));
    let scripts = match (a.compare_mlx_lm, &a.compare_llama_cpp) {
        (false, None) => None,
        _ => Some(Scripts::write()?),
    };
    let mlx_lm = match &scripts {
        Some(s) if a.compare_mlx_lm => Some(reference(
            a.python.clone(),
            "target/oracle-venv/bin/python",
            s.path(MLX_LM_SCRIPT),
            "scripts/oracle-venv.sh",
        )?),
        _ => None,
    };
    let llama = match (&a.compare_llama_cpp, &scripts) {
        (Some(gguf), Some(s)) => {
            let gguf = match gguf {
                Some(path) => path.clone(),
                None => declared_gguf(g, &a.model, &dir)?,
            };
            if !gguf.is_file() {
                return Err(Diagnostic::error(
                    code::Bench::Gguf,
                    format!("--compare-llama-cpp: no GGUF file at {}", gguf.display()),
                ));
            }
            let r = reference(
                a.llama_python.clone(),
                "target/llama-venv/bin/python",
                s.path(LLAMA_CPP_SCRIPT),
                "scripts/llama-venv.sh",
            )?;
            Some((r, gguf))
        }
        _ => None,
    };
    let repeat = a.repeat.max(1);

    // The cold probe first: a failure here costs no throughput runs.
    let probe = if a.no_probe_timing {
        None
    } else {
        let (program, shown) = this_program()?;
        let dtype_arg = super::generate::policy_arg(a.dtype);
        Some(time_probe(&program, &shown, &dir, dtype_arg, repeat)?)
    };

    let session = load_session(&dir, policy)?;
    let mut medians: Vec<Measurement> = Vec::new();
    for &n in &a.prompt_tokens {
        let prompt = synthetic_prompt(&session, n)?;
        let mut ours = Vec::new();
        let mut theirs: Vec<Vec<Measurement>> = vec![Vec::new(); 3];
        // Warm-up on the full prompt, as the reference scripts do: the first run of a
        // prompt length pays for kernel setup.
        measure_rmlx(&session, &prompt, 2, &dtype)?;
        for _ in 0..repeat {
            ours.push(measure_rmlx(&session, &prompt, a.decode_tokens, &dtype)?);
            if let Some(r) = &mlx_lm {
                for (runs, mode) in theirs.iter_mut().zip(["model", "float32"]) {
                    let wanted = match mode {
                        "model" => MlxLmMode::Model,
                        _ => MlxLmMode::Float32,
                    };
                    if a.mlx_lm_modes.contains(&wanted) {
                        runs.push(measure_mlx_lm(r, &dir, &prompt, a.decode_tokens, mode)?);
                    }
                }
            }
            if let Some((r, gguf)) = &llama {
                theirs[2].push(measure_llama_cpp(
                    r,
                    gguf,
                    &prompt,
                    a.decode_tokens,
                    a.llama_threads,
                )?);
            }
        }
        medians.extend(median(&ours));
        for runs in &theirs {
            medians.extend(median(runs));
        }
    }
    let rows = rows(medians, repeat);

    if a.message_format == MessageFormat::Json {
        for r in &rows {
            message("bench-throughput", r);
        }
        if let Some(p) = &probe {
            message("bench-probe", p);
        }
        return Ok(exit::OK);
    }
    print_table(&mut std::io::stdout().lock(), &rows, probe.as_ref());
    Ok(exit::OK)
}

/// `bench --batch`: one batched decode step per batch size, after a prompt of the first
/// `--prompt-tokens` length; `--decode-tokens` steps timed per size.
fn run_batch(dir: &Path, policy: DtypePolicy, a: &BenchArgs) -> Result<u8> {
    if a.batch.contains(&0) {
        return Err(Diagnostic::error(
            code::Cli::BadArgument,
            "--batch: every batch size must be at least 1",
        ));
    }
    let session = load_session(dir, policy)?;
    let prompt = synthetic_prompt(&session, a.prompt_tokens.first().copied().unwrap_or(128))?;
    let steps = a
        .batch
        .iter()
        .map(|&b| measure_batch(&session, &prompt, b, a.decode_tokens))
        .collect::<Result<Vec<_>>>()?;
    if a.message_format == MessageFormat::Json {
        steps.iter().for_each(|s| message("bench-batch", s));
        return Ok(exit::OK);
    }
    let base = steps.iter().find(|s| s.batch == 1).map(|s| s.ms_per_step);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>14} {:>12} {:>13} {:>13}",
        "batch", "ms/step", "aggregate t/s", "step / B=1", "first step ms", "re-formed ms"
    );
    for s in &steps {
        let ratio = base.map_or_else(|| "-".to_string(), |b| format!("{:.2}", s.ms_per_step / b));
        let _ = writeln!(
            out,
            "{:>5} {:>10.2} {:>14.1} {:>12} {:>13.1} {:>13.1}",
            s.batch, s.ms_per_step, s.aggregate_tps, ratio, s.first_ms, s.reformed_ms
        );
    }
    Ok(exit::OK)
}

fn print_table(out: &mut impl Write, rows: &[Row], probe: Option<&ProbeTiming>) {
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>7} {:>12} {:>9} {:>11} {:>9} {:>10} {:>9}",
        "runner",
        "dtype",
        "prompt",
        "prefill t/s",
        "ttft s",
        "decode t/s",
        "peak MiB",
        "prefill ×",
        "decode ×"
    );
    let ratio = |r: Option<f64>, ours: bool| match r {
        Some(x) => format!("{x:.2}"),
        None if ours => "-".to_string(),
        None => "n/a".to_string(),
    };
    for r in rows {
        let m = &r.measurement;
        let ours = m.runner == RMLX;
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:>7} {:>12.1} {:>9.3} {:>11.1} {:>9.0} {:>10} {:>9}",
            m.runner,
            m.dtype,
            m.prompt_tokens,
            m.prefill_tps,
            m.ttft_s,
            m.decode_tps,
            m.peak_rss_mib,
            ratio(r.prefill_ratio, ours),
            ratio(r.decode_ratio, ours),
        );
    }
    if rows.iter().any(|r| r.measurement.runner != RMLX) {
        let _ = writeln!(
            out,
            "(× = rmlx throughput / that runner's throughput; >1 means rmlx is faster; \
             median of {} runs)",
            rows.first().map_or(1, |r| r.repeat)
        );
    }
    if let Some(p) = probe {
        let verdict = match p.exit_code {
            0 => "ok",
            1 => "broken",
            4 => "inconclusive",
            _ => "?",
        };
        let _ = writeln!(
            out,
            "cold probe: {:.2} s wall (median of {}, verdict {verdict}): {}",
            p.wall_s, p.repeat, p.command
        );
    }
}

/// The compute dtype's name, as mlx-lm and config.json spell it.
fn dtype_name(d: mlx_rs::Dtype) -> String {
    match d {
        mlx_rs::Dtype::Float32 => "float32".into(),
        mlx_rs::Dtype::Bfloat16 => "bfloat16".into(),
        mlx_rs::Dtype::Float16 => "float16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The `.gguf` source of the model declared in rmlx.toml as `name`, or whose build output is
/// `dir`.
fn declared_gguf(g: &GlobalArgs, name: &str, dir: &Path) -> Result<PathBuf> {
    let no_source = || {
        Diagnostic::error(
            code::Bench::Gguf,
            format!(
                "--compare-llama-cpp without a file: `{name}` is not a model declared in \
                 rmlx.toml with a .gguf source"
            ),
        )
        .with_help("pass the GGUF file: --compare-llama-cpp <FILE.gguf>")
    };
    let Some(manifest) = Manifest::find(g.manifest_path.as_deref())? else {
        return Err(no_source());
    };
    let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    manifest
        .models
        .iter()
        .find(|m| m.name == name || same_dir(&manifest.output_dir(&m.name), dir))
        .filter(|m| {
            m.source
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .map(|m| m.source.clone())
        .ok_or_else(no_source)
}

/// `--mlx-lm-modes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MlxLmMode {
    /// The model's own dtype (bf16 for most checkpoints).
    Model,
    /// Every float parameter cast to float32 (mlx-lm's fastest CPU setting).
    Float32,
}

/// A reference: `python` or the venv's default, and its bench script (written from the
/// binary by [`Scripts`]).
fn reference(
    python: Option<PathBuf>,
    default_python: &str,
    script: PathBuf,
    venv_script: &'static str,
) -> Result<Reference> {
    // Without --python, the venv of the source checkout: `RMLX_SOURCE_DIR` for a binary run
    // away from where it was built (e.g. copied to a GPU machine), else the build checkout.
    let root = match std::env::var_os("RMLX_SOURCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let python = python.unwrap_or_else(|| root.join(default_python));
    if !python.exists() {
        return Err(Diagnostic::error(
            code::Bench::Reference,
            format!("no reference python at {}", python.display()),
        )
        .with_help(format!(
            "run {venv_script} in a cargo-rmlx checkout and pass its python (see --help)"
        )));
    }
    Ok(Reference {
        python,
        script,
        venv_script,
    })
}
