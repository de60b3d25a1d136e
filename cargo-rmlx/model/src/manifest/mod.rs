//! `rmlx.toml`: the declaration of a workspace's models (source, quantization, chat-template
//! override, dtype, probe expectations) and of the server settings.
//!
//! - [`locate`](locate::locate) finds the file: `rmlx.toml` at the cargo workspace root (via
//!   `cargo metadata`, honouring `--manifest-path` and `$CARGO`), else the nearest `rmlx.toml`
//!   in the current directory or above it (a directory without a cargo workspace works too).
//! - [`Manifest::parse`] checks it strictly: unknown keys, wrong types and values MLX cannot
//!   quantize with are [`Diagnostic`]s (codes `rmlx::manifest::…`) whose span points into the
//!   file.
//! - [`resolve_model`] turns a MODEL argument of any subcommand into a model directory: a
//!   declared name becomes its build output `target/rmlx/<name>/`, anything else must be a
//!   directory.
//!
//! The schema (documented in the README):
//!
//! ```toml
//! [models.smollm2]
//! source = "models/SmolLM2-135M-Instruct.Q4_1.gguf"  # a model directory, an MLX-quantized
//!                                                    # directory or a .gguf file
//! quantize = { mode = "affine", bits = 4, group-size = 32 }
//! chat-template = "templates/chatml.jinja"            # optional override
//! dtype = "bfloat16"                                  # optional: bfloat16 | float16 | float32
//!
//! [models.smollm2.quantize.overrides]
//! "lm_head" = { bits = 8 }
//! "model.embed_tokens" = { bits = 8 }
//! "model.layers.*.mlp.down_proj" = false              # keep dense
//!
//! tool-format = "hermes"                             # optional: the tool-call format, when
//!                                                    # the chat template's is not detected
//!
//! [models.smollm2.probe]
//! prompt = "What is the capital of France?"
//! expect = "Paris"
//! max-tokens = 16
//!
//! [serve]
//! host = "127.0.0.1"
//! port = 8080
//! content-special-tokens = false   # true: special tokens typed in messages are control tokens
//! tool-format = "hermes"           # optional: tool-call format of models that set none
//! prompt-cache-mb = 1024           # prompt-cache budget per model, 0 = off
//! max-batch = 8                    # requests generated together per model (1: one at a time)
//! ```

mod locate;
mod parse;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use locate::{init_dir, locate, resolve_model, resolve_model_in, Location};

use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::snapshot::{QuantMode, QuantParams};
use crate::tools::ToolFormat;

/// The manifest's file name.
pub const FILE_NAME: &str = "rmlx.toml";

/// The scaffold `cargo rmlx init` writes (`templates/rmlx.toml`).
pub const TEMPLATE: &str = include_str!("../../../../templates/rmlx.toml");

/// Default host of `cargo rmlx serve`.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default port of `cargo rmlx serve`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default prompt-cache budget per served model, in MiB: about 20 states of a 1,000-token
/// conversation of a small model in float32 (SmolLM2-135M: 46 KiB per token), or 7,000
/// tokens of an 8B model's bfloat16 keys/values (144 KiB per token) — several conversations
/// kept warm, at a fraction of the weights' memory of any model worth serving.
pub const DEFAULT_PROMPT_CACHE_MB: u64 = 1024;

/// A parsed `rmlx.toml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file.
    pub path: PathBuf,
    /// Its directory (relative paths in the file are relative to it).
    pub dir: PathBuf,
    /// The target directory build products go to (`<target>/rmlx/<name>/`).
    pub target_dir: PathBuf,
    /// The file's text (diagnostics point into it).
    pub text: Arc<str>,
    /// Declared models, in declaration order.
    pub models: Vec<ModelDecl>,
    /// `[serve]`.
    pub serve: ServeDecl,
    /// `[distributed]`: `serve` runs tensor-parallel over these ranks.
    pub distributed: Option<DistributedDecl>,
}

/// `[distributed]`: the server's ranks (every served model is split over them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributedDecl {
    /// MLX's hostfile (`serve --hostfile`), made absolute against the manifest's directory.
    pub hostfile: PathBuf,
}

/// One `[models.<name>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDecl {
    /// The name (a directory name under `target/rmlx/`).
    pub name: String,
    /// Span of the name in rmlx.toml.
    pub name_span: Range<usize>,
    /// `source`, made absolute against the manifest's directory.
    pub source: PathBuf,
    /// Span of the `source` value.
    pub source_span: Range<usize>,
    /// `quantize`.
    pub quantize: Quantize,
    /// Span of the `quantize` value (or of the table when absent).
    pub quantize_span: Range<usize>,
    /// `chat-template`, absolute, with the span of its value.
    pub chat_template: Option<(PathBuf, Range<usize>)>,
    /// `dtype`, with the span of its value.
    pub dtype: Option<(Dtype, Range<usize>)>,
    /// `[models.<name>.probe]`.
    pub probe: ProbeDecl,
    /// `tool-format`: the tool-call format (else detected from the chat template).
    pub tool_format: Option<ToolFormat>,
}

impl ModelDecl {
    /// The declared `dtype`, if any.
    pub fn declared_dtype(&self) -> Option<Dtype> {
        self.dtype.as_ref().map(|d| d.0)
    }
}

/// What `quantize` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantize {
    /// `quantize` absent: keep the source's own storage (dense stays dense, MLX-quantized
    /// modules and GGUF Q4_0/Q4_1/Q8_0 tensors stay quantized exactly, other GGUF types are
    /// dequantized).
    AsSource,
    /// `quantize = false`: everything dense (quantized sources are dequantized).
    Dense,
    /// `quantize = true` or `quantize = { … }`.
    Quantize(QuantSpec),
}

/// Declared quantization settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSpec {
    /// Settings of every quantizable module without an override.
    pub default: QuantParams,
    /// Per-module overrides, in declaration order (the first match wins).
    pub overrides: Vec<ModuleOverride>,
}

/// One entry of `quantize.overrides`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleOverride {
    /// Module path (`lm_head`, `model.embed_tokens`), `*` matching any run of characters.
    pub pattern: String,
    /// Span of the key in rmlx.toml.
    pub span: Range<usize>,
    /// Settings; `None` keeps the module dense.
    pub params: Option<QuantParams>,
}

impl ModuleOverride {
    /// Whether the override applies to module `path`.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(&self.pattern, path)
    }
}

impl QuantSpec {
    /// The override that applies to `path`, if any.
    pub fn override_for(&self, path: &str) -> Option<&ModuleOverride> {
        self.overrides.iter().find(|o| o.matches(path))
    }

    /// Settings for module `path` (`None`: keep it dense).
    pub fn for_module(&self, path: &str) -> Option<QuantParams> {
        match self.override_for(path) {
            Some(o) => o.params,
            None => Some(self.default),
        }
    }
}

/// Element type of dense tensors (and affine scales/biases): the one float dtype of the
/// library (rmlx.toml, the build, GGUF import, the engine's policy, the CLI's `--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// bfloat16.
    #[default]
    Bfloat16,
    /// float16.
    Float16,
    /// float32.
    Float32,
}

impl Dtype {
    /// The name config.json (`torch_dtype`) and mlx-lm use.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float16 => "float16",
            Dtype::Float32 => "float32",
        }
    }

    /// Parses a dtype name (`bfloat16`/`bf16`, `float16`/`f16`, `float32`/`f32`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bfloat16" | "bf16" => Dtype::Bfloat16,
            "float16" | "f16" => Dtype::Float16,
            "float32" | "f32" => Dtype::Float32,
            _ => return None,
        })
    }

    /// The safetensors dtype of a tensor stored in it.
    pub fn safetensors(self) -> safetensors::Dtype {
        match self {
            Dtype::Bfloat16 => safetensors::Dtype::BF16,
            Dtype::Float16 => safetensors::Dtype::F16,
            Dtype::Float32 => safetensors::Dtype::F32,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bfloat16 | Dtype::Float16 => 2,
            Dtype::Float32 => 4,
        }
    }

    /// The MLX dtype.
    pub fn mlx(self) -> mlx_rs::Dtype {
        match self {
            Dtype::Bfloat16 => mlx_rs::Dtype::Bfloat16,
            Dtype::Float16 => mlx_rs::Dtype::Float16,
            Dtype::Float32 => mlx_rs::Dtype::Float32,
        }
    }
}

/// `[models.<name>.probe]`: what `cargo rmlx probe` expects of the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeDecl {
    /// The seed prompt (default: the probe's fixed seed question).
    pub prompt: Option<String>,
    /// A substring the answer must contain.
    pub expect: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// Span of the probe table, when declared.
    pub span: Option<Range<usize>>,
}

/// `[serve]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeDecl {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// Encode special-token strings in messages as control tokens (`serve
    /// --content-special-tokens`).
    pub content_special_tokens: bool,
    /// `tool-format` of models that set none.
    pub tool_format: Option<ToolFormat>,
    /// Prompt-cache budget per model in MiB, 0 = off (`serve --prompt-cache-mb`).
    pub prompt_cache_mb: u64,
    /// Requests a model generates together (`serve --max-batch`); `None`: the default.
    pub max_batch: Option<usize>,
}

impl Default for ServeDecl {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            content_special_tokens: false,
            tool_format: None,
            prompt_cache_mb: DEFAULT_PROMPT_CACHE_MB,
            max_batch: None,
        }
    }
}

/// MLX's defaults for a mode (what `mlx_lm convert --q-mode` uses): (group size, bits).
pub fn mode_defaults(mode: QuantMode) -> (i32, i32) {
    match mode {
        QuantMode::Affine => (64, 4),
        QuantMode::Mxfp4 => (32, 4),
        QuantMode::Nvfp4 => (16, 4),
        QuantMode::Mxfp8 => (32, 8),
    }
}

/// The (bits, group sizes) MLX 0.32 accepts for a mode.
pub fn supported(mode: QuantMode) -> (&'static [i32], &'static [i32]) {
    match mode {
        QuantMode::Affine => (&[2, 3, 4, 5, 6, 8], &[32, 64, 128]),
        QuantMode::Mxfp4 => (&[4], &[32]),
        QuantMode::Nvfp4 => (&[4], &[16]),
        QuantMode::Mxfp8 => (&[8], &[32]),
    }
}

/// `affine 4-bit g64`.
pub fn describe_params(q: &QuantParams) -> String {
    format!("{} {}-bit g{}", q.mode.as_str(), q.bits, q.group_size)
}

impl Manifest {
    /// Reads and parses the manifest at `path`; build products go under `target_dir`.
    pub fn load(path: &Path, target_dir: PathBuf) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::io(code::Manifest::Io, "cannot read", path, &e))?;
        Self::parse(path, &text, target_dir)
    }

    /// Parses manifest text (`path` names it in diagnostics and anchors relative paths).
    pub fn parse(path: &Path, text: &str, target_dir: PathBuf) -> Result<Self> {
        parse::parse(path, text, target_dir)
    }

    /// Finds and loads the manifest (see [`locate`]); `Ok(None)` when there is none.
    pub fn find(manifest_path: Option<&Path>) -> Result<Option<Self>> {
        match locate(manifest_path)? {
            Some(loc) => Self::load(&loc.manifest, loc.target_dir).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Manifest::find`], but a missing manifest is an error.
    pub fn find_required(manifest_path: Option<&Path>) -> Result<Self> {
        Self::find(manifest_path)?.ok_or_else(|| {
            Diagnostic::error(
                code::Manifest::NotFound,
                "no rmlx.toml at the cargo workspace root, in the current directory or above it",
            )
            .with_help("create one with `cargo rmlx init` (or pass --manifest-path)")
        })
    }

    /// The declared model `name`.
    pub fn model(&self, name: &str) -> Option<&ModelDecl> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Where the build output of model `name` lives: `<target>/rmlx/<name>/`.
    pub fn output_dir(&self, name: &str) -> PathBuf {
        self.output_root().join(name)
    }

    /// Where a declared model may be found: its build output, then its source.
    pub fn model_places(&self, decl: &ModelDecl) -> [PathBuf; 2] {
        [self.output_dir(&decl.name), decl.source.clone()]
    }

    /// The declared model's directory with a tokenizer (built output first, else a directory
    /// source), if there is one yet.
    pub fn tokenizer_dir(&self, decl: &ModelDecl) -> Option<PathBuf> {
        self.model_places(decl)
            .into_iter()
            .find(|d| d.join("tokenizer.json").is_file())
    }

    /// `<target>/rmlx/`.
    pub fn output_root(&self) -> PathBuf {
        self.target_dir.join("rmlx")
    }

    /// A diagnostic pointing at `span` of rmlx.toml.
    pub fn located(
        &self,
        severity_error: bool,
        code: impl Into<Code>,
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Diagnostic {
        let d = if severity_error {
            Diagnostic::error(code, message)
        } else {
            Diagnostic::warning(code, message)
        };
        d.with_file(&self.path)
            .with_source(self.text.clone())
            .with_span(span, label)
    }

    /// The models named in `names` (all of them when empty), or an error naming an
    /// undeclared one.
    pub fn select(&self, names: &[String]) -> Result<Vec<&ModelDecl>> {
        if names.is_empty() {
            return Ok(self.models.iter().collect());
        }
        let mut out: Vec<&ModelDecl> = Vec::new();
        for n in names {
            match self.model(n) {
                Some(m) => {
                    if !out.iter().any(|o| o.name == m.name) {
                        out.push(m);
                    }
                }
                None => {
                    let declared: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                    let mut d = Diagnostic::error(
                        code::Manifest::UnknownModel,
                        format!("no model `{n}` in {}", self.path.display()),
                    )
                    .with_file(&self.path);
                    d = match parse::did_you_mean(n, &declared) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None if declared.is_empty() => {
                            d.with_help("rmlx.toml declares no models; add a [models.<name>] table")
                        }
                        None => d.with_help(format!("declared models: {}", declared.join(", "))),
                    };
                    return Err(d);
                }
            }
        }
        Ok(out)
    }
}

/// Writes the scaffold ([`TEMPLATE`]) to `dir/rmlx.toml`; refuses to overwrite.
pub fn init(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    if path.exists() {
        return Err(Diagnostic::error(
            code::Manifest::Exists,
            format!("{} already exists", path.display()),
        )
        .with_file(&path)
        .with_help("edit it, or remove it first to start over"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Diagnostic::io(code::Manifest::Io, "cannot create", &path, &e))?;
    std::io::Write::write_all(&mut f, TEMPLATE.as_bytes())
        .map_err(|e| Diagnostic::io(code::Manifest::Io, "cannot write", &path, &e))?;
    Ok(path)
}

/// `*` matches any run of characters (dots included); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
