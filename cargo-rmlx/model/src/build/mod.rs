//! `cargo rmlx build`: turns each model declared in rmlx.toml into an MLX-format model
//! directory `target/rmlx/<name>/` that cargo-rmlx and mlx-lm both load.
//!
//! - Sources: a Hugging Face-format directory (bf16/f16/f32 safetensors), an MLX-quantized
//!   directory, or a `.gguf` file (imported with [`crate::gguf::import`] into a temporary
//!   directory first).
//! - Quantization uses MLX's own quantizer ([`crate::mlx::quant`]), with mlx-lm's choice of modules and
//!   dtypes ([`plan`]), so packed weights, scales and biases are byte-identical to
//!   `mlx_lm convert`'s for the same input and settings. A module stored quantized in the
//!   source is copied as is when the declared settings match, and dequantized (then
//!   re-quantized) with a warning when they differ.
//! - Output: `config.json` (the source's, with mlx-lm's `quantization` block and its
//!   `quantization_config` copy, written like mlx-lm writes it), `model.safetensors` (shards
//!   past 5 GiB) and `model.safetensors.index.json`, the tokenizer files, `chat_template.jinja`
//!   (or the declared override) and `generation_config.json`.
//! - Incremental: a [`fingerprint`] (stat-only) makes an up-to-date model `Fresh` in
//!   milliseconds. The output is written into `target/rmlx/.<name>.tmp-<pid>/` and swapped
//!   into place atomically (`renameat2(RENAME_EXCHANGE)` on Linux), so an interrupted build
//!   leaves the previous output intact; leftovers are removed by the next build. A lock file
//!   (`target/rmlx/.<name>.lock`) serialises concurrent builds of one model.

pub mod fingerprint;
pub mod plan;
pub mod pyjson;
pub mod source;
pub mod writer;

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use mlx_rs::Array;
use serde_json::{json, Value};

use self::fingerprint::{FileStamp, Fingerprint};
use self::plan::{Action, Item, Plan};
use self::source::SourceModel;
use self::writer::Writer;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::manifest::{describe_params, Dtype, Manifest, ModelDecl, Quantize};
use crate::mlx::quant;
use crate::snapshot::publish::{OutputLock, ReplaceFile};
use crate::snapshot::Snapshot;

/// Files copied from a source directory when present (besides weights and config.json).
pub const AUX_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild even when fresh.
    pub force: bool,
    /// Largest shard (mlx-lm: 5 GiB). `RMLX_MAX_SHARD_BYTES` overrides the default.
    pub max_shard_bytes: u64,
    /// Show progress bars (default: when stderr is a terminal).
    pub progress: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        let max_shard_bytes = std::env::var("RMLX_MAX_SHARD_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(writer::DEFAULT_MAX_SHARD_BYTES);
        Self {
            force: false,
            max_shard_bytes,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// Progress of a build, for the front-end to print.
#[derive(Debug)]
pub enum Event<'a> {
    /// The model is up to date.
    Fresh {
        /// Model name.
        name: &'a str,
        /// Its output directory.
        dir: &'a Path,
    },
    /// Waiting for another build of the same model.
    Blocking {
        /// Model name.
        name: &'a str,
    },
    /// Starting to build (`what`: e.g. `affine 4-bit g32`).
    Building {
        /// Model name.
        name: &'a str,
        /// The settings, in words.
        what: String,
        /// Why it is built (e.g. `the build settings changed`).
        reason: String,
    },
    /// A warning or note (re-quantization, an override matching nothing, …).
    Diagnostic(Diagnostic),
    /// Done.
    Built(&'a BuildReport),
}

/// The result of building one model.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Model name.
    pub name: String,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Up to date: nothing was done.
    pub fresh: bool,
    /// Time taken.
    pub elapsed: Duration,
    /// Files written.
    pub files: Vec<String>,
    /// Modules quantized from dense.
    pub quantized: usize,
    /// Modules copied quantized.
    pub kept: usize,
    /// Modules dequantized and quantized again.
    pub requantized: usize,
    /// Modules dequantized to dense.
    pub dequantized: usize,
    /// Bytes of tensors written.
    pub bytes: u64,
}

/// Builds `names` (all declared models when empty) in declaration order, stopping at the
/// first failure.
pub fn build(
    manifest: &Manifest,
    names: &[String],
    opts: &BuildOptions,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<BuildReport>> {
    let mut out = Vec::new();
    for decl in manifest.select(names)? {
        out.push(build_model(manifest, decl, opts, on)?);
    }
    Ok(out)
}

/// The settings of `decl`, in words: `affine 4-bit g32`, `dense`, `as stored in the source`.
pub fn describe(decl: &ModelDecl) -> String {
    let mut s = match &decl.quantize {
        Quantize::AsSource => "as stored in the source".to_string(),
        Quantize::Dense => "dense".to_string(),
        Quantize::Quantize(spec) => {
            let mut s = describe_params(&spec.default);
            match spec.overrides.len() {
                0 => {}
                1 => s.push_str(", 1 override"),
                n => s.push_str(&format!(", {n} overrides")),
            }
            s
        }
    };
    if let Some((d, _)) = decl.dtype {
        s.push_str(&format!(", {}", d.as_str()));
    }
    s
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A model directory (dense or MLX-quantized).
    Dir,
    /// A GGUF file.
    Gguf,
}

/// Checks that the declared source (and chat-template override) exist; classifies it.
pub fn resolve_source(manifest: &Manifest, decl: &ModelDecl) -> Result<SourceKind> {
    let src = &decl.source;
    let kind = if src.is_dir() {
        SourceKind::Dir
    } else if src.is_file() {
        let gguf_ext = src
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let magic = || -> bool {
            let mut b = [0u8; 4];
            File::open(src)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
                .is_ok()
                && &b == b"GGUF"
        };
        if gguf_ext || magic() {
            SourceKind::Gguf
        } else {
            return Err(manifest
                .located(
                    true,
                    code::Manifest::BadSource,
                    format!(
                        "source of `{}` is a file but not a GGUF file: {}",
                        decl.name,
                        src.display()
                    ),
                    decl.source_span.clone(),
                    "not a model directory or .gguf file",
                )
                .with_help("point `source` at a model directory or a .gguf file"));
        }
    } else {
        return Err(manifest
            .located(
                true,
                code::Manifest::MissingSource,
                format!(
                    "source of `{}` does not exist: {}",
                    decl.name,
                    src.display()
                ),
                decl.source_span.clone(),
                "no such file or directory",
            )
            .with_help("paths in rmlx.toml are relative to the directory of rmlx.toml"));
    };
    if let Some((t, span)) = &decl.chat_template {
        if !t.is_file() {
            return Err(manifest.located(
                true,
                code::Manifest::MissingChatTemplate,
                format!(
                    "chat template of `{}` does not exist: {}",
                    decl.name,
                    t.display()
                ),
                span.clone(),
                "no such file",
            ));
        }
    }
    Ok(kind)
}

/// Stats every file the build of `decl` reads.
pub fn source_stamps(decl: &ModelDecl, kind: &SourceKind) -> Result<Vec<FileStamp>> {
    let mut stamps = Vec::new();
    match kind {
        SourceKind::Gguf => stamps.push(FileStamp::of(&decl.source)?),
        SourceKind::Dir => {
            let entries = std::fs::read_dir(&decl.source)
                .map_err(|e| Diagnostic::io(code::Build::Io, "cannot list", &decl.source, &e))?;
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|n| {
                        !n.starts_with('.')
                            && (n == "config.json"
                                || n == "model.safetensors.index.json"
                                || n.ends_with(".safetensors")
                                || AUX_FILES.contains(&n.as_str()))
                    }) && p.is_file()
                })
                .collect();
            files.sort();
            for f in files {
                stamps.push(FileStamp::of(&f)?);
            }
        }
    }
    if let Some((t, _)) = &decl.chat_template {
        stamps.push(FileStamp::of(t)?);
    }
    Ok(stamps)
}

fn quantize_json(q: &Quantize) -> Value {
    let p = |q: &crate::snapshot::QuantParams| json!({"mode": q.mode.as_str(), "bits": q.bits, "group_size": q.group_size});
    match q {
        Quantize::AsSource => json!("as-source"),
        Quantize::Dense => json!(false),
        Quantize::Quantize(spec) => json!({
            "default": p(&spec.default),
            "overrides": spec.overrides.iter().map(|o| json!([
                o.pattern,
                o.params.as_ref().map_or(json!(false), p),
            ])).collect::<Vec<_>>(),
        }),
    }
}

/// The settings part of the fingerprint.
pub fn settings(decl: &ModelDecl, kind: &SourceKind, opts: &BuildOptions) -> Value {
    json!({
        "format": fingerprint::FORMAT,
        "tool": concat!("cargo-rmlx ", env!("CARGO_PKG_VERSION")),
        "mlx": quant::mlx_version(),
        "source": decl.source,
        "kind": match kind { SourceKind::Dir => "dir", SourceKind::Gguf => "gguf" },
        "quantize": quantize_json(&decl.quantize),
        "dtype": decl.declared_dtype().map(Dtype::as_str),
        "chat_template": decl.chat_template.as_ref().map(|(p, _)| p),
        "max_shard_bytes": opts.max_shard_bytes,
    })
}

/// Whether `decl`'s output is up to date (stat-only; `Err` says why not).
pub fn is_fresh(
    manifest: &Manifest,
    decl: &ModelDecl,
    opts: &BuildOptions,
) -> Result<std::result::Result<(), fingerprint::Stale>> {
    let kind = resolve_source(manifest, decl)?;
    let fp = Fingerprint {
        settings: settings(decl, &kind, opts),
        sources: source_stamps(decl, &kind)?,
        outputs: Vec::new(),
    };
    Ok(fp.check(&manifest.output_dir(&decl.name)))
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Build::Io, what, path, e)
}

/// Builds one model.
pub fn build_model(
    manifest: &Manifest,
    decl: &ModelDecl,
    opts: &BuildOptions,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<BuildReport> {
    let started = Instant::now();
    let kind = resolve_source(manifest, decl)?;
    let mut fp = Fingerprint {
        settings: settings(decl, &kind, opts),
        sources: source_stamps(decl, &kind)?,
        outputs: Vec::new(),
    };
    let out_dir = manifest.output_dir(&decl.name);
    let fresh = |fp: &Fingerprint| {
        if opts.force {
            Err(fingerprint::Stale::NoOutput)
        } else {
            fp.check(&out_dir)
        }
    };
    let reason = match fresh(&fp) {
        Ok(()) => return Ok(fresh_report(decl, &out_dir, started, on)),
        Err(why) => why,
    };

    // A directory source is checked completely before anything is written.
    let mut early = match kind {
        SourceKind::Dir => {
            let src = SourceModel::open(&decl.source)?;
            let plan = plan::plan(&src, &decl.quantize, decl.declared_dtype())?;
            check_aux(&src.dir, decl)?;
            Some((src, plan))
        }
        SourceKind::Gguf => None,
    };

    let root = manifest.output_root();
    let lock = OutputLock::acquire(&root, &decl.name, &mut || {
        on(Event::Blocking { name: &decl.name })
    })?;
    // Another build may have finished while we waited.
    if fresh(&fp).is_ok() {
        return Ok(fresh_report(decl, &out_dir, started, on));
    }
    on(Event::Building {
        name: &decl.name,
        what: describe(decl),
        reason: if opts.force {
            "--force".to_string()
        } else {
            reason.to_string()
        },
    });

    let mut _import_dir = None;
    let (src, plan) = match early.take() {
        Some(x) => x,
        None => {
            let staged = lock.stage("gguf")?;
            import_gguf(manifest, decl, staged.path(), on)?;
            let src = SourceModel::open(staged.path())?;
            let plan = plan::plan(&src, &decl.quantize, decl.declared_dtype())?;
            check_aux(&src.dir, decl)?;
            _import_dir = Some(staged);
            (src, plan)
        }
    };
    report_plan(manifest, decl, &plan, on);

    let staged = lock.stage("tmp")?;
    let tmp = staged.path();
    let bytes = write_weights(&src, &plan, tmp, &decl.name, opts)?;
    let config = plan::config_json(&src, &plan, decl.declared_dtype())?;
    let cfg_path = tmp.join("config.json");
    std::fs::write(&cfg_path, config).map_err(|e| io("cannot write", &cfg_path, &e))?;
    copy_aux(&src.dir, decl, tmp)?;
    // The output must open as a model directory before it replaces anything (when this
    // build of cargo-rmlx runs the architecture).
    if crate::arch::lookup(&src.model_type).is_some() {
        Snapshot::open(tmp)?;
    } else {
        tracing::info!(
            "{}: converted `{}` without opening the output (no engine for it here)",
            decl.name,
            src.model_type
        );
    }
    // Stamps again: a source edited during the build makes the next build rebuild.
    let after = source_stamps(decl, &kind)?;
    if after != fp.sources {
        tracing::warn!(
            "a source file of `{}` changed during the build; the next build rebuilds it",
            decl.name
        );
        fp.sources = Vec::new();
    }
    fp.write(tmp)?;
    staged.commit(&out_dir, ReplaceFile::Refuse)?;

    let files = list_files(&out_dir);
    let report = BuildReport {
        name: decl.name.clone(),
        out_dir: out_dir.clone(),
        fresh: false,
        elapsed: started.elapsed(),
        files,
        quantized: plan.count(|a| matches!(a, Action::Quantize { from: None, .. })),
        kept: plan.count(|a| matches!(a, Action::Keep(_))),
        requantized: plan.count(|a| matches!(a, Action::Quantize { from: Some(_), .. })),
        dequantized: plan.count(|a| matches!(a, Action::Dequantize(_))),
        bytes,
    };
    on(Event::Built(&report));
    Ok(report)
}

fn fresh_report(
    decl: &ModelDecl,
    out_dir: &Path,
    started: Instant,
    on: &mut dyn FnMut(Event<'_>),
) -> BuildReport {
    on(Event::Fresh {
        name: &decl.name,
        dir: out_dir,
    });
    BuildReport {
        name: decl.name.clone(),
        out_dir: out_dir.to_path_buf(),
        fresh: true,
        elapsed: started.elapsed(),
        files: list_files(out_dir),
        quantized: 0,
        kept: 0,
        requantized: 0,
        dequantized: 0,
        bytes: 0,
    }
}

fn list_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn import_gguf(
    manifest: &Manifest,
    decl: &ModelDecl,
    dir: &Path,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    use crate::gguf::{import_into, ImportOptions};
    let keep_quantized = match &decl.quantize {
        Quantize::AsSource => true,
        Quantize::Dense => false,
        Quantize::Quantize(spec) => std::iter::once(Some(spec.default))
            .chain(spec.overrides.iter().map(|o| o.params))
            .flatten()
            .any(|q| {
                q.mode == crate::snapshot::QuantMode::Affine
                    && q.group_size == 32
                    && matches!(q.bits, 4 | 8)
            }),
    };
    let dtype = decl.declared_dtype().unwrap_or_default();
    let report = import_into(
        &decl.source,
        dir,
        &ImportOptions {
            keep_quantized,
            dtype,
        },
    )?;
    if !report.dequantized.is_empty() && matches!(decl.quantize, Quantize::Quantize(_)) {
        let mut types: Vec<String> = Vec::new();
        for t in &report.tensors {
            let name = t.ggml_type.to_string();
            if t.action == crate::gguf::TensorAction::Dequantized && !types.contains(&name) {
                types.push(name);
            }
        }
        let n = report.dequantized.len();
        on(Event::Diagnostic(
            manifest
                .located(
                    false,
                    code::Build::Requantize,
                    format!(
                        "{n} tensor{} of {} {} stored as {} in the GGUF file and {}                          dequantized on import; quantizing {} again loses quality",
                        plural(n),
                        decl.source.display(),
                        if n == 1 { "is" } else { "are" },
                        types.join("/"),
                        if n == 1 { "was" } else { "were" },
                        if n == 1 { "it" } else { "them" },
                    ),
                    decl.quantize_span.clone(),
                    "quantized again to these settings",
                )
                .with_help(
                    "Q4_0/Q4_1/Q8_0 tensors are kept exactly with `mode = \"affine\"`, \
                     `group-size = 32` and their own bits (4 or 8); otherwise prefer a dense \
                     (bf16/f16) source when quantizing",
                ),
        ));
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn check_aux(dir: &Path, decl: &ModelDecl) -> Result<()> {
    let tok = dir.join("tokenizer.json");
    if !tok.is_file() {
        return Err(Diagnostic::error(
            code::Build::MissingTokenizer,
            format!("the source of `{}` has no tokenizer.json", decl.name),
        )
        .with_file(&tok)
        .with_help("a model directory needs tokenizer.json (Hugging Face `tokenizers` format)"));
    }
    Ok(())
}

fn copy_aux(src: &Path, decl: &ModelDecl, dst: &Path) -> Result<()> {
    for name in AUX_FILES {
        let override_template = decl.chat_template.is_some()
            && matches!(*name, "chat_template.jinja" | "chat_template.json");
        if override_template {
            continue;
        }
        let from = src.join(name);
        if from.is_file() {
            let to = dst.join(name);
            std::fs::copy(&from, &to).map_err(|e| io("cannot copy", &from, &e))?;
        }
    }
    if let Some((t, _)) = &decl.chat_template {
        let to = dst.join("chat_template.jinja");
        std::fs::copy(t, &to).map_err(|e| io("cannot copy", t, &e))?;
    }
    Ok(())
}

fn report_plan(manifest: &Manifest, decl: &ModelDecl, plan: &Plan, on: &mut dyn FnMut(Event<'_>)) {
    for o in &plan.unmatched_overrides {
        on(Event::Diagnostic(
            manifest
                .located(
                    false,
                    code::Build::UnusedOverride,
                    format!(
                        "override `{}` matches no module of `{}`",
                        o.pattern, decl.name
                    ),
                    o.span.clone(),
                    "matches nothing",
                )
                .with_help(
                    "overrides name module paths such as `lm_head`, `model.embed_tokens` or \
                     `model.layers.*.mlp.down_proj`",
                ),
        ));
    }
    for (from, to, modules) in plan.requantized() {
        let example = modules.first().cloned().unwrap_or_default();
        let n = modules.len();
        let (is, are) = if n == 1 {
            ("is", "it is")
        } else {
            ("are", "they are")
        };
        let (code, msg, help) = match to {
            Some(to) => (
                code::Build::Requantize,
                format!(
                    "{n} module{} of `{}` (e.g. `{example}`) {is} stored as {} in the source; \
                     {are} dequantized and re-quantized to {}, which loses quality",
                    plural(n),
                    decl.name,
                    describe_params(&from),
                    describe_params(&to)
                ),
                "declare the source's own settings (or leave `quantize` out) to keep them \
                 exactly, or start from a dense source",
            ),
            None => (
                code::Build::Dequantize,
                format!(
                    "{n} module{} of `{}` (e.g. `{example}`) {is} stored as {} in the source; \
                     {are} written dense",
                    plural(n),
                    decl.name,
                    describe_params(&from),
                ),
                "the dense weights carry the quantization error of the source",
            ),
        };
        on(Event::Diagnostic(
            manifest
                .located(
                    false,
                    code,
                    msg,
                    decl.quantize_span.clone(),
                    "declared here",
                )
                .with_help(help),
        ));
    }
    if !plan.not_divisible.is_empty() {
        tracing::info!(
            "{}: {} modules stay dense (input features not a multiple of the group size): {}",
            decl.name,
            plan.not_divisible.len(),
            plan.not_divisible.join(", ")
        );
    }
    for (name, why) in &plan.dropped {
        tracing::info!("{}: not writing `{name}` ({why})", decl.name);
    }
}

/// Loads, converts and writes every tensor; returns the bytes written.
fn write_weights(
    src: &SourceModel,
    plan: &Plan,
    dir: &Path,
    name: &str,
    opts: &BuildOptions,
) -> Result<u64> {
    let specs = plan.specs();
    let total: u64 = specs.iter().map(|s| s.nbytes()).sum();
    let mut w = Writer::create(dir, specs, opts.max_shard_bytes)?;
    let pb = if opts.progress {
        crate::progress::bar(
            plan.items.len() as u64,
            format!("building {name}"),
            "tensors",
        )
    } else {
        ProgressBar::hidden()
    };
    for item in &plan.items {
        let arrays = produce(src, item)?;
        for (spec, a) in item.outputs.iter().zip(&arrays) {
            let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
            if a.dtype() != spec.dtype || shape != spec.shape {
                return Err(Diagnostic::error(
                    code::Build::Internal,
                    format!(
                        "`{}` came out as {:?} {shape:?}, planned {:?} {:?}",
                        spec.name,
                        a.dtype(),
                        spec.dtype,
                        spec.shape
                    ),
                ));
            }
            quant::with_bytes(a, |b| w.write(&spec.name, b))??;
        }
        drop(arrays);
        // MLX keeps freed buffers for reuse; one module's worth is all a build needs, so
        // hand them back (otherwise the cache grows to several times the model's size).
        crate::mlx::clear_cache();
        pb.inc(1);
    }
    w.finish()?;
    pb.finish_and_clear();
    Ok(total)
}

fn load(src: &SourceModel, name: &str) -> Result<Array> {
    src.array(name)
}

fn cast(a: Array, to: Option<mlx_rs::Dtype>) -> Result<Array> {
    match to {
        Some(d) if quant::is_float(a.dtype()) && a.dtype() != d => Ok(a.as_dtype(d)?),
        _ => Ok(a),
    }
}

/// A quantized source module, dequantized (in float32, block by block) to `dtype`.
fn dequantized(
    src: &SourceModel,
    path: &str,
    q: crate::snapshot::QuantParams,
    dtype: Option<mlx_rs::Dtype>,
) -> Result<Array> {
    let w = load(src, &format!("{path}.weight"))?;
    let s = load(src, &format!("{path}.scales"))?;
    let b = if q.mode.has_biases() {
        Some(load(src, &format!("{path}.biases"))?)
    } else {
        None
    };
    let dtype = dtype.unwrap_or(mlx_rs::Dtype::Float32);
    quant::dequantize_rows(&w, &s, b.as_ref(), q, dtype)
}

/// The output arrays of one item, in `item.outputs` order.
fn produce(src: &SourceModel, item: &Item) -> Result<Vec<Array>> {
    let path = item.name.as_str();
    Ok(match item.action {
        Action::Dense if !item.module => vec![cast(load(src, path)?, item.float_dtype)?],
        Action::Dense => vec![cast(
            load(src, &format!("{path}.weight"))?,
            item.float_dtype,
        )?],
        Action::Keep(q) => {
            let mut v = vec![load(src, &format!("{path}.weight"))?];
            let want = item.outputs[1].dtype;
            v.push(cast(load(src, &format!("{path}.scales"))?, Some(want))?);
            if q.mode.has_biases() {
                v.push(cast(load(src, &format!("{path}.biases"))?, Some(want))?);
            }
            v
        }
        Action::Quantize { from, to } => {
            let w = match from {
                None => load(src, &format!("{path}.weight"))?,
                Some(f) => dequantized(src, path, f, item.float_dtype)?,
            };
            let w = cast(w, item.float_dtype)?;
            let (wq, s, b) = quant::quantize_rows(&w, to)?;
            let mut v = vec![wq, s];
            v.extend(b);
            v
        }
        Action::Dequantize(f) => vec![dequantized(src, path, f, item.float_dtype)?],
    })
}
