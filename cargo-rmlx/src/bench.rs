//! Throughput measurements of the engine — prefill tok/s at given prompt lengths, decode
//! tok/s, time to first token, peak RSS — the side-by-side comparison with the references,
//! which run on the same prompt ids in the same invocation, interleaved with our runs:
//! mlx-lm on the same model directory (`scripts/bench_mlx_lm.py`) and llama.cpp on a GGUF
//! of the same weights (`scripts/bench_llama_cpp.py`) — and the wall time of a cold
//! `probe` process. Only ratios are meaningful on a shared machine. The reference scripts
//! are compiled into the binary ([`Scripts`]), so an installed `cargo-rmlx` needs no checkout.

mod batch;

pub use batch::{measure_batch, BatchStep};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::{generate, GenerateOptions};
use crate::session::Session;

/// Runner name of our engine.
pub const RMLX: &str = "rmlx";
/// Runner name of mlx-lm.
pub const MLX_LM: &str = "mlx-lm";
/// Runner name of llama.cpp (llama-cpp-python).
pub const LLAMA_CPP: &str = "llama.cpp";

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Who ran it: [`RMLX`], [`MLX_LM`] or [`LLAMA_CPP`].
    pub runner: String,
    /// How it computes: our compute dtype (`float32`, …); mlx-lm's `model` (the weights'
    /// own dtype) or `float32` (every float parameter cast); llama.cpp's `gguf` (the file's
    /// own quantization types).
    pub dtype: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prefill throughput (prompt tokens / time to first token).
    #[serde(rename = "prefill_tok_s")]
    pub prefill_tps: f64,
    /// Time to first token, seconds.
    pub ttft_s: f64,
    /// Tokens generated.
    pub decode_tokens: usize,
    /// Decode throughput (tokens after the first / their time).
    #[serde(rename = "decode_tok_s")]
    pub decode_tps: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Prompt ids of exactly `n` tokens, made by repeating a fixed English passage.
pub fn synthetic_prompt(session: &Session, n: usize) -> Result<Vec<u32>> {
    const PASSAGE: &str = "The river winds through the valley, past fields of wheat and old \
        stone farmhouses. In the spring the water rises and the children of the village gather \
        on the bridge to watch the boats go by, counting them one by one until the sun sets. ";
    let ids = session.tokenizer.encode(PASSAGE, false)?;
    if ids.is_empty() {
        return Err(Diagnostic::error(
            code::Bench::Prompt,
            "the tokenizer encodes the benchmark passage to nothing",
        ));
    }
    Ok(ids.iter().copied().cycle().take(n).collect())
}

/// Peak resident set size of this process in MiB (VmHWM), where the OS reports it.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs our engine: prefill `prompt`, then `decode` greedy tokens ignoring EOS. `dtype`
/// names the compute dtype in the result.
pub fn measure_rmlx(
    session: &Session,
    prompt: &[u32],
    decode: usize,
    dtype: &str,
) -> Result<Measurement> {
    let opts = GenerateOptions {
        max_tokens: decode.max(1),
        ignore_eos: true,
        eos_ids: session.eos_ids(),
        top: 1,
        evidence: false,
        ..GenerateOptions::default()
    };
    let out = generate(&session.model, prompt, &opts, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let ttft = out.prefill.as_secs_f64();
    let n = out.steps.len();
    Ok(Measurement {
        runner: RMLX.into(),
        dtype: dtype.into(),
        prompt_tokens: prompt.len(),
        prefill_tps: prompt.len() as f64 / ttft.max(1e-9),
        ttft_s: ttft,
        decode_tokens: n,
        decode_tps: n.saturating_sub(1) as f64 / out.decode.as_secs_f64().max(1e-9),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The reference side of `--compare-mlx-lm`.
pub const MLX_LM_SCRIPT: &str = "bench_mlx_lm.py";
/// The reference side of `--compare-llama-cpp`.
pub const LLAMA_CPP_SCRIPT: &str = "bench_llama_cpp.py";

/// The reference scripts and the module they share, as compiled in.
const EMBEDDED_SCRIPTS: [(&str, &str); 3] = [
    (
        "bench_common.py",
        include_str!("../../scripts/bench_common.py"),
    ),
    (MLX_LM_SCRIPT, include_str!("../../scripts/bench_mlx_lm.py")),
    (
        LLAMA_CPP_SCRIPT,
        include_str!("../../scripts/bench_llama_cpp.py"),
    ),
];

/// The embedded reference scripts, written to a fresh private temporary directory that is
/// removed when this is dropped.
#[derive(Debug)]
pub struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    /// Writes the scripts under the system's temporary directory (`TMPDIR`).
    pub fn write() -> Result<Self> {
        Self::write_in(&std::env::temp_dir())
    }

    /// Writes the scripts into a new directory under `parent`.
    pub fn write_in(parent: &Path) -> Result<Self> {
        let dir = fresh_dir(parent, "rmlx-bench-scripts")?;
        let scripts = Scripts { dir };
        for (name, text) in EMBEDDED_SCRIPTS {
            let path = scripts.dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| Diagnostic::io(code::Bench::Scripts, "cannot write", &path, &e))?;
        }
        Ok(scripts)
    }

    /// The path of the script `name` (e.g. [`MLX_LM_SCRIPT`]).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Creates a directory `<parent>/<prefix>-<pid>-<n>` that did not exist before.
fn fresh_dir(parent: &Path, prefix: &str) -> Result<PathBuf> {
    let pid = std::process::id();
    let mut last = None;
    for n in 0..100u32 {
        let dir = parent.join(format!("{prefix}-{pid}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(dir),
            Err(e) => {
                return Err(Diagnostic::io(
                    code::Bench::Scripts,
                    "cannot create",
                    &dir,
                    &e,
                ))
            }
        }
    }
    Err(Diagnostic::error(
        code::Bench::Scripts,
        format!(
            "cannot create a fresh directory for the reference scripts (last tried {})",
            last.unwrap_or_default().display()
        ),
    ))
}

/// How to reach a Python reference: a venv's python and the bench script it runs.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The venv's python.
    pub python: PathBuf,
    /// The bench script: [`MLX_LM_SCRIPT`] or [`LLAMA_CPP_SCRIPT`] of a [`Scripts`].
    pub script: PathBuf,
    /// The script that creates the venv, for help texts (`scripts/oracle-venv.sh`, …).
    pub venv_script: &'static str,
}

/// Runs mlx-lm on the same model and prompt ids, in a child process (its own peak RSS).
/// `dtype` is `model` (the weights' own dtype) or `float32` (all float parameters cast).
pub fn measure_mlx_lm(
    reference: &Reference,
    model_dir: &Path,
    prompt: &[u32],
    decode: usize,
    dtype: &str,
) -> Result<Measurement> {
    let mut m = run_reference(
        reference,
        MLX_LM,
        model_dir,
        prompt,
        decode,
        &["--dtype", dtype],
    )?;
    m.dtype = dtype.into();
    Ok(m)
}

/// Runs llama.cpp (llama-cpp-python) on `gguf` with the same prompt ids, in a child process
/// with `threads` threads (`None`: every CPU this process may use).
pub fn measure_llama_cpp(
    reference: &Reference,
    gguf: &Path,
    prompt: &[u32],
    decode: usize,
    threads: Option<usize>,
) -> Result<Measurement> {
    let threads = threads.unwrap_or(0).to_string();
    let mut m = run_reference(
        reference,
        LLAMA_CPP,
        gguf,
        prompt,
        decode,
        &["--threads", &threads],
    )?;
    m.dtype = "gguf".into();
    Ok(m)
}

/// Runs a reference bench script on `model` (a directory or a file) and parses the JSON
/// line it prints last.
fn run_reference(
    reference: &Reference,
    runner: &str,
    model: &Path,
    prompt: &[u32],
    decode: usize,
    extra: &[&str],
) -> Result<Measurement> {
    let ids = serde_json::to_string(prompt)
        .map_err(|e| Diagnostic::error(code::Bench::Reference, format!("prompt ids: {e}")))?;
    let out = Command::new(&reference.python)
        .arg(&reference.script)
        .arg(model)
        .args(["--prompt-ids", &ids, "--max-tokens", &decode.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Diagnostic::error(
                code::Bench::Reference,
                format!(
                    "cannot run {} for {runner}: {e}",
                    reference.python.display()
                ),
            )
            .with_help(format!(
                "create the reference venv with {}",
                reference.venv_script
            ))
        })?;
    if !out.status.success() {
        return Err(Diagnostic::error(
            code::Bench::Reference,
            format!(
                "{runner} failed on {} ({}): {}",
                model.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .with_help(format!(
            "run it by hand in a cargo-rmlx checkout: {} scripts/{} {} --prompt-ids '[1, 2, 3]' \
             --max-tokens 4",
            reference.python.display(),
            reference
                .script
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            model.display()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let result: ReferenceResult = serde_json::from_str(line).map_err(|e| {
        Diagnostic::error(
            code::Bench::Reference,
            format!(
                "unexpected output from {}: {e}: {line}",
                reference.script.display()
            ),
        )
    })?;
    let mut m = Measurement::from(result);
    m.runner = runner.into();
    Ok(m)
}

/// What the reference bench scripts print (one JSON line).
#[derive(serde::Deserialize)]
struct ReferenceResult {
    prompt_tokens: usize,
    ttft_s: f64,
    decode_tokens: usize,
    decode_s: f64,
    peak_rss_mib: f64,
}

impl From<ReferenceResult> for Measurement {
    fn from(r: ReferenceResult) -> Self {
        Measurement {
            runner: String::new(),
            dtype: String::new(),
            prompt_tokens: r.prompt_tokens,
            prefill_tps: r.prompt_tokens as f64 / r.ttft_s.max(1e-9),
            ttft_s: r.ttft_s,
            decode_tokens: r.decode_tokens,
            decode_tps: r.decode_tokens.saturating_sub(1) as f64 / r.decode_s.max(1e-9),
            peak_rss_mib: r.peak_rss_mib,
        }
    }
}

/// Medians over repeated runs of one runner and prompt length: prefill throughput and time to
/// first token from the same run (the median one by prefill throughput), decode throughput
/// on its own, peak RSS the maximum.
pub fn median(runs: &[Measurement]) -> Option<Measurement> {
    let mut by_prefill: Vec<&Measurement> = runs.iter().collect();
    by_prefill.sort_by(|a, b| a.prefill_tps.total_cmp(&b.prefill_tps));
    let mid = (*by_prefill.get(by_prefill.len() / 2)?).clone();
    Some(Measurement {
        decode_tps: median_of(runs.iter().map(|m| m.decode_tps))?,
        peak_rss_mib: runs.iter().map(|m| m.peak_rss_mib).fold(0.0, f64::max),
        ..mid
    })
}

/// The median (the upper one of an even count); `None` for no values.
pub fn median_of(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// One row of the report: a measurement and, for a reference, our throughput over its.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Always `throughput`.
    pub kind: &'static str,
    /// The median measurement.
    #[serde(flatten)]
    pub measurement: Measurement,
    /// Runs the median is over.
    pub repeat: usize,
    /// Our prefill tok/s / this runner's (`null` on our own rows).
    pub prefill_ratio: Option<f64>,
    /// Our decode tok/s / this runner's (`null` on our own rows).
    pub decode_ratio: Option<f64>,
}

/// Rows for `medians`, with each reference's ratios against our row of the same prompt
/// length.
pub fn rows(medians: Vec<Measurement>, repeat: usize) -> Vec<Row> {
    let ratio = |ours: f64, theirs: f64| (theirs > 0.0).then(|| ours / theirs);
    medians
        .iter()
        .map(|m| {
            let ours = medians
                .iter()
                .find(|o| o.runner == RMLX && o.prompt_tokens == m.prompt_tokens)
                .filter(|_| m.runner != RMLX);
            Row {
                kind: "throughput",
                measurement: m.clone(),
                repeat,
                prefill_ratio: ours.and_then(|o| ratio(o.prefill_tps, m.prefill_tps)),
                decode_ratio: ours.and_then(|o| ratio(o.decode_tps, m.decode_tps)),
            }
        })
        .collect()
}

/// Wall times of cold `probe` processes.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeTiming {
    /// Always `probe`.
    pub kind: &'static str,
    /// Always [`RMLX`].
    pub runner: &'static str,
    /// The `--dtype` the probe ran with (`auto`, …).
    pub dtype: String,
    /// The command line timed (program name first).
    pub command: String,
    /// Median wall time, seconds.
    pub wall_s: f64,
    /// Every run's wall time, seconds, in order.
    pub runs_s: Vec<f64>,
    /// Runs the median is over.
    pub repeat: usize,
    /// The probe's exit code in the last run (0 ok, 1 broken, 4 inconclusive).
    pub exit_code: i32,
}

/// The program to run this binary again: on Linux `/proc/self/exe`, which still runs this
/// very build when the file has since been replaced (a rebuild during a long bench), and the
/// path to show for it.
pub fn this_program() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe().map_err(|e| {
        Diagnostic::error(
            code::Bench::Probe,
            format!("cannot find this program's path to time a probe: {e}"),
        )
        .with_help("skip the timing with --no-probe-timing")
    })?;
    let shown = exe.display().to_string();
    let shown = shown.trim_end_matches(" (deleted)").to_string();
    let proc_self = Path::new("/proc/self/exe");
    let program = if cfg!(target_os = "linux") && proc_self.exists() {
        proc_self.to_path_buf()
    } else {
        exe
    };
    Ok((program, shown))
}

/// Times `repeat` cold runs of `<program> rmlx probe <model_dir> --dtype <dtype>` (stdout
/// discarded; `shown` names the program in the report). A verdict of any kind counts as a
/// completed probe (exit codes 0, 1, 4); any other exit is an error with the probe's stderr.
pub fn time_probe(
    program: &Path,
    shown: &str,
    model_dir: &Path,
    dtype: &str,
    repeat: usize,
) -> Result<ProbeTiming> {
    let args: Vec<&std::ffi::OsStr> = vec![
        "rmlx".as_ref(),
        "probe".as_ref(),
        model_dir.as_os_str(),
        "--dtype".as_ref(),
        dtype.as_ref(),
    ];
    let command = std::iter::once(shown.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut runs_s = Vec::new();
    let mut exit_code = 0;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let out = Command::new(program)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                Diagnostic::error(code::Bench::Probe, format!("cannot run `{command}`: {e}"))
            })?;
        runs_s.push(start.elapsed().as_secs_f64());
        exit_code = out.status.code().unwrap_or(-1);
        if !matches!(exit_code, 0 | 1 | 4) {
            return Err(Diagnostic::error(
                code::Bench::Probe,
                format!(
                    "the probe timing run failed ({}): {command}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
            .with_help("run the command by hand, or skip the timing with --no-probe-timing"));
        }
    }
    Ok(ProbeTiming {
        kind: "probe",
        runner: RMLX,
        dtype: dtype.into(),
        command,
        wall_s: median_of(runs_s.iter().copied()).unwrap_or_default(),
        repeat: runs_s.len(),
        runs_s,
        exit_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(runner: &str, dtype: &str, prompt: usize, prefill: f64, decode: f64) -> Measurement {
        Measurement {
            runner: runner.into(),
            dtype: dtype.into(),
            prompt_tokens: prompt,
            prefill_tps: prefill,
            ttft_s: prompt as f64 / prefill,
            decode_tokens: 8,
            decode_tps: decode,
            peak_rss_mib: 100.0,
        }
    }

    /// The scripts come from the binary: written into a fresh directory, identical to the
    /// checkout's, removed afterwards.
    #[test]
    fn embedded_scripts_are_written_and_removed() {
        let parent = std::env::temp_dir();
        let scripts = Scripts::write_in(&parent).expect("write the scripts");
        let other = Scripts::write_in(&parent).expect("a second set");
        assert_ne!(scripts.path(MLX_LM_SCRIPT), other.path(MLX_LM_SCRIPT));
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
        for name in ["bench_common.py", MLX_LM_SCRIPT, LLAMA_CPP_SCRIPT] {
            let written = std::fs::read_to_string(scripts.path(name)).expect("written");
            let original = std::fs::read_to_string(checkout.join(name)).expect("in the checkout");
            assert_eq!(written, original, "{name}");
        }
        let dir = scripts.path("");
        drop(scripts);
        assert!(!dir.exists(), "{} was not removed", dir.display());
        let missing = Scripts::write_in(Path::new("/nonexistent/rmlx-parent"))
            .expect_err("no parent directory");
        assert_eq!(missing.code, "rmlx::bench::scripts");
    }

    #[test]
    fn median_takes_the_middle_and_the_peak_maximum() {
        let mut runs = vec![
            m(RMLX, "float32", 16, 10.0, 1.0),
            m(RMLX, "float32", 16, 30.0, 3.0),
            m(RMLX, "float32", 16, 20.0, 2.0),
        ];
        runs[1].peak_rss_mib = 300.0;
        let med = median(&runs).expect("three runs");
        assert_eq!(med.prefill_tps, 20.0);
        assert_eq!(med.ttft_s, 16.0 / 20.0, "ttft from the same run as prefill");
        assert_eq!(med.decode_tps, 2.0);
        assert_eq!(med.peak_rss_mib, 300.0);
        assert!(median(&[]).is_none());
        assert_eq!(median_of([]), None);
    }

    #[test]
    fn rows_carry_ratios_against_our_row_of_the_same_length() {
        let rows = rows(
            vec![
                m(RMLX, "float32", 16, 40.0, 4.0),
                m(MLX_LM, "model", 16, 10.0, 2.0),
                m(RMLX, "float32", 32, 80.0, 4.0),
                m(LLAMA_CPP, "gguf", 32, 160.0, 0.0),
            ],
            1,
        );
        assert_eq!(rows[0].prefill_ratio, None);
        assert_eq!(rows[1].prefill_ratio, Some(4.0));
        assert_eq!(rows[1].decode_ratio, Some(2.0));
        assert_eq!(rows[3].prefill_ratio, Some(0.5));
        assert_eq!(rows[3].decode_ratio, None, "a zero throughput has no ratio");
        let json = serde_json::to_value(&rows[1]).expect("serializable");
        for key in [
            "kind",
            "runner",
            "dtype",
            "prompt_tokens",
            "prefill_tok_s",
            "decode_tok_s",
            "ttft_s",
            "peak_rss_mib",
            "prefill_ratio",
            "decode_ratio",
            "repeat",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["kind"], "throughput");
    }
}
