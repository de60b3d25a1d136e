//! The strict rmlx.toml reader: walks the spanned TOML document and turns every problem
//! (syntax, unknown key, wrong type, unsupported value) into a located [`Diagnostic`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    mode_defaults, supported, DistributedDecl, Dtype, Manifest, ModelDecl, ModuleOverride,
    ProbeDecl, QuantSpec, Quantize, ServeDecl, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_PROMPT_CACHE_MB,
};
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::snapshot::{QuantMode, QuantParams};
use crate::tools::ToolFormat;

const CODE_SYNTAX: Code = Code::Manifest(code::Manifest::Syntax);
const CODE_UNKNOWN_KEY: Code = Code::Manifest(code::Manifest::UnknownKey);
const CODE_TYPE: Code = Code::Manifest(code::Manifest::WrongType);
const CODE_VALUE: Code = Code::Manifest(code::Manifest::InvalidValue);
const CODE_MISSING_KEY: Code = Code::Manifest(code::Manifest::MissingKey);

type Value<'i> = Spanned<DeValue<'i>>;

struct Ctx<'a> {
    path: &'a Path,
    text: Arc<str>,
}

impl Ctx<'_> {
    fn err(
        &self,
        code: impl Into<Code>,
        msg: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::error(code, msg)
            .with_file(self.path)
            .with_source(self.text.clone())
            .with_span(span, label)
    }

    fn wrong_type(&self, key: &str, want: &str, v: &Value<'_>) -> Diagnostic {
        self.err(
            CODE_TYPE,
            format!(
                "`{key}` must be {want}, found {}",
                article(v.get_ref().type_str())
            ),
            v.span(),
            format!("expected {want}"),
        )
    }

    /// The table in `v`, or a wrong-type error naming `key`.
    fn table<'v, 'i>(&self, key: &str, v: &'v Value<'i>) -> Result<&'v DeTable<'i>> {
        v.get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(key, "a table", v))
    }

    /// Errors on the first key of `t` not in `allowed`.
    fn known_keys(&self, t: &DeTable<'_>, allowed: &[&str], what: &str) -> Result<()> {
        for (k, _) in t.iter() {
            let name = k.get_ref().as_ref();
            if !allowed.contains(&name) {
                let mut d = self.err(
                    CODE_UNKNOWN_KEY,
                    format!("unknown key `{name}` in {what}"),
                    k.span(),
                    "unknown key",
                );
                d = match did_you_mean(name, allowed) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("allowed keys: {}", allowed.join(", "))),
                };
                return Err(d);
            }
        }
        Ok(())
    }

    fn string<'v>(&self, key: &str, v: &'v Value<'_>) -> Result<&'v str> {
        v.get_ref()
            .as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    fn integer(&self, key: &str, v: &Value<'_>) -> Result<i64> {
        let i = v
            .get_ref()
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
            self.err(
                CODE_VALUE,
                format!("`{key}` is out of range"),
                v.span(),
                "too large",
            )
        })
    }

    fn path(&self, base: &Path, key: &str, v: &Value<'_>) -> Result<PathBuf> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            return Err(self.err(
                CODE_VALUE,
                format!("`{key}` is empty"),
                v.span(),
                "expected a path",
            ));
        }
        Ok(base.join(s))
    }
}

fn article(type_str: &str) -> String {
    match type_str.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

/// The closest candidate within a small edit distance (or equal up to `_`/`-`).
pub(super) fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.replace('_', "-").to_ascii_lowercase();
    if let Some(c) = candidates.iter().find(|c| norm(c) == norm(name)) {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (levenshtein(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn parse(path: &Path, text: &str, target_dir: PathBuf) -> Result<Manifest> {
    let shared: Arc<str> = text.into();
    let ctx = Ctx {
        path,
        text: shared.clone(),
    };
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(
            CODE_SYNTAX,
            format!("{} is not valid TOML", path.display()),
            span,
            e.message().trim().to_string(),
        )
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = doc.get_ref();
    ctx.known_keys(root, &["models", "serve", "distributed"], "rmlx.toml")?;

    let mut models = Vec::new();
    if let Some(v) = root.get("models") {
        let t = ctx.table("models", v)?;
        for (k, v) in t.iter() {
            models.push(model(&ctx, &dir, k, v)?);
        }
    }
    let serve = match root.get("serve") {
        Some(v) => serve(&ctx, v)?,
        None => ServeDecl::default(),
    };
    let distributed = root
        .get("distributed")
        .map(|v| distributed(&ctx, &dir, v))
        .transpose()?;
    Ok(Manifest {
        distributed,
        path: path.to_path_buf(),
        dir,
        target_dir,
        text: shared,
        models,
        serve,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

const MODEL_KEYS: &[&str] = &[
    "source",
    "quantize",
    "chat-template",
    "dtype",
    "probe",
    "tool-format",
];

fn model(
    ctx: &Ctx<'_>,
    dir: &Path,
    key: &Spanned<std::borrow::Cow<'_, str>>,
    v: &Value<'_>,
) -> Result<ModelDecl> {
    let name = key.get_ref().to_string();
    if !valid_name(&name) {
        return Err(ctx
            .err(
                CODE_VALUE,
                format!("invalid model name `{name}`"),
                key.span(),
                "not a valid name",
            )
            .with_help(
                "a model name is a directory name under target/rmlx/: letters, digits, `_`, \
                 `-` and `.`, starting with a letter, digit or `_`",
            ));
    }
    let what = format!("[models.{name}]");
    let t = ctx.table(&format!("models.{name}"), v)?;
    // `[models.qwen2.5]` is the table `5` inside model `qwen2`: suggest quoting.
    for (k, v) in t.iter() {
        let sub = k.get_ref().as_ref();
        if !MODEL_KEYS.contains(&sub) && v.get_ref().is_table() {
            return Err(ctx
                .err(
                    CODE_UNKNOWN_KEY,
                    format!("unknown key `{sub}` in {what}"),
                    k.span(),
                    "unknown key",
                )
                .with_help(format!(
                    "a model name containing dots must be quoted: [models.\"{name}.{sub}\"]"
                )));
        }
    }
    ctx.known_keys(t, MODEL_KEYS, &what)?;
    let (source, source_span) = match t.get("source") {
        Some(v) => (ctx.path(dir, "source", v)?, v.span()),
        None => {
            return Err(ctx
                .err(
                    CODE_MISSING_KEY,
                    format!("{what} has no `source`"),
                    key.span(),
                    "this model needs a `source`",
                )
                .with_help(
                    "set `source` to a model directory, an MLX-quantized directory or a .gguf \
                     file (relative to rmlx.toml)",
                ))
        }
    };
    let (quantize, quantize_span) = match t.get("quantize") {
        None => (Quantize::AsSource, key.span()),
        Some(v) => (quantize(ctx, v)?, v.span()),
    };
    let chat_template = match t.get("chat-template") {
        Some(v) => Some((ctx.path(dir, "chat-template", v)?, v.span())),
        None => None,
    };
    let dtype = match t.get("dtype") {
        None => None,
        Some(v) => {
            let s = ctx.string("dtype", v)?;
            let d = Dtype::parse(s).ok_or_else(|| {
                ctx.err(
                    CODE_VALUE,
                    format!("unsupported dtype `{s}`"),
                    v.span(),
                    "unsupported dtype",
                )
                .with_help("use \"bfloat16\", \"float16\" or \"float32\"")
            })?;
            Some((d, v.span()))
        }
    };
    let probe = match t.get("probe") {
        None => ProbeDecl::default(),
        Some(v) => probe(ctx, &name, v)?,
    };
    let tool_format = tool_format(ctx, t)?;
    Ok(ModelDecl {
        name,
        name_span: key.span(),
        source,
        source_span,
        quantize,
        quantize_span,
        chat_template,
        dtype,
        probe,
        tool_format,
    })
}

/// `tool-format` of a table, if set.
fn tool_format(ctx: &Ctx<'_>, t: &DeTable<'_>) -> Result<Option<ToolFormat>> {
    let Some(v) = t.get("tool-format") else {
        return Ok(None);
    };
    let s = ctx.string("tool-format", v)?;
    match ToolFormat::from_name(s) {
        Some(f) => Ok(Some(f)),
        None => Err(ctx
            .err(
                CODE_VALUE,
                format!("unknown tool-call format `{s}`"),
                v.span(),
                "unknown format",
            )
            .with_help(format!("use one of: {}", ToolFormat::names().join(", ")))),
    }
}

const QUANT_KEYS: &[&str] = &["mode", "bits", "group-size", "overrides"];
const OVERRIDE_KEYS: &[&str] = &["mode", "bits", "group-size"];

fn quantize(ctx: &Ctx<'_>, v: &Value<'_>) -> Result<Quantize> {
    match v.get_ref() {
        DeValue::Boolean(false) => Ok(Quantize::Dense),
        DeValue::Boolean(true) => {
            let (group_size, bits) = mode_defaults(QuantMode::Affine);
            Ok(Quantize::Quantize(QuantSpec {
                default: QuantParams {
                    group_size,
                    bits,
                    mode: QuantMode::Affine,
                },
                overrides: Vec::new(),
            }))
        }
        DeValue::Table(t) => {
            ctx.known_keys(t, QUANT_KEYS, "`quantize`")?;
            let default = params(ctx, t, None)?;
            let mut overrides = Vec::new();
            if let Some(ov) = t.get("overrides") {
                let ot = ctx.table("quantize.overrides", ov)?;
                for (k, v) in ot.iter() {
                    let pattern = k.get_ref().to_string();
                    if pattern.is_empty() {
                        return Err(ctx.err(
                            CODE_VALUE,
                            "empty module path in `quantize.overrides`",
                            k.span(),
                            "empty",
                        ));
                    }
                    let params = match v.get_ref() {
                        DeValue::Boolean(false) => None,
                        DeValue::Boolean(true) => Some(default),
                        DeValue::Table(ovt) => {
                            ctx.known_keys(ovt, OVERRIDE_KEYS, &format!("override `{pattern}`"))?;
                            Some(params(ctx, ovt, Some(default))?)
                        }
                        _ => {
                            return Err(ctx.wrong_type(
                                &format!("quantize.overrides.\"{pattern}\""),
                                "false (keep dense) or a table like { bits = 8 }",
                                v,
                            ))
                        }
                    };
                    overrides.push(ModuleOverride {
                        pattern,
                        span: k.span(),
                        params,
                    });
                }
            }
            Ok(Quantize::Quantize(QuantSpec { default, overrides }))
        }
        _ => Err(ctx
            .wrong_type(
                "quantize",
                "a table like { mode = \"affine\", bits = 4, group-size = 64 }, true or false",
                v,
            )
            .with_help(
                "`quantize = { mode = \"affine\", bits = 4, group-size = 64 }`; `true` uses \
                 MLX's defaults (affine 4-bit g64); `false` writes every tensor dense",
            )),
    }
}

/// Quantization settings of a `quantize` table or an override (inheriting from `parent`).
fn params(ctx: &Ctx<'_>, t: &DeTable<'_>, parent: Option<QuantParams>) -> Result<QuantParams> {
    let mode_v = t.get("mode");
    let mode = match mode_v {
        None => parent.map_or(QuantMode::Affine, |p| p.mode),
        Some(v) => {
            let s = ctx.string("mode", v)?;
            QuantMode::parse(s).ok_or_else(|| {
                ctx.err(
                    CODE_VALUE,
                    format!("unknown quantization mode `{s}`"),
                    v.span(),
                    "unknown mode",
                )
                .with_help("MLX's modes: \"affine\", \"mxfp4\", \"mxfp8\", \"nvfp4\"")
            })?
        }
    };
    // A parent's bits and group size carry over unless the mode changes (then the new
    // mode's defaults apply, as in mlx-lm).
    let inherited = match parent {
        Some(p) if p.mode == mode => (p.group_size, p.bits),
        _ => mode_defaults(mode),
    };
    let (ok_bits, ok_groups) = supported(mode);
    let list = |xs: &[i32]| {
        xs.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bits = match t.get("bits") {
        None => inherited.1,
        Some(v) => {
            let b = ctx.integer("bits", v)?;
            if !ok_bits.iter().any(|&x| i64::from(x) == b) {
                return Err(ctx
                    .err(
                        CODE_VALUE,
                        format!("{} quantization does not support {b} bits", mode.as_str()),
                        v.span(),
                        "unsupported bit width",
                    )
                    .with_help(format!(
                        "MLX's {} mode supports bits: {}",
                        mode.as_str(),
                        list(ok_bits)
                    )));
            }
            b as i32
        }
    };
    let group_size = match t.get("group-size") {
        None => inherited.0,
        Some(v) => {
            let g = ctx.integer("group-size", v)?;
            if !ok_groups.iter().any(|&x| i64::from(x) == g) {
                return Err(ctx
                    .err(
                        CODE_VALUE,
                        format!(
                            "{} quantization does not support group size {g}",
                            mode.as_str()
                        ),
                        v.span(),
                        "unsupported group size",
                    )
                    .with_help(format!(
                        "MLX's {} mode supports group sizes: {}",
                        mode.as_str(),
                        list(ok_groups)
                    )));
            }
            g as i32
        }
    };
    Ok(QuantParams {
        group_size,
        bits,
        mode,
    })
}

const PROBE_KEYS: &[&str] = &["prompt", "expect", "max-tokens"];

fn probe(ctx: &Ctx<'_>, name: &str, v: &Value<'_>) -> Result<ProbeDecl> {
    let t = ctx.table(&format!("models.{name}.probe"), v)?;
    ctx.known_keys(t, PROBE_KEYS, &format!("[models.{name}.probe]"))?;
    let mut p = ProbeDecl {
        span: Some(v.span()),
        ..ProbeDecl::default()
    };
    if let Some(v) = t.get("prompt") {
        p.prompt = Some(ctx.string("prompt", v)?.to_string());
    }
    if let Some(v) = t.get("expect") {
        p.expect = Some(ctx.string("expect", v)?.to_string());
    }
    if let Some(v) = t.get("max-tokens") {
        let n = ctx.integer("max-tokens", v)?;
        if n < 1 {
            return Err(ctx.err(
                CODE_VALUE,
                "`max-tokens` must be at least 1",
                v.span(),
                "too small",
            ));
        }
        p.max_tokens = Some(n as usize);
    }
    Ok(p)
}

/// Largest `max-batch` accepted.
const MAX_BATCH_LIMIT: usize = 256;

/// `[distributed]`: `hostfile`, relative to rmlx.toml's directory.
fn distributed(ctx: &Ctx<'_>, dir: &Path, v: &Value<'_>) -> Result<DistributedDecl> {
    let t = ctx.table("distributed", v)?;
    ctx.known_keys(t, &["hostfile"], "[distributed]")?;
    match t.get("hostfile") {
        Some(v) => Ok(DistributedDecl {
            hostfile: ctx.path(dir, "hostfile", v)?,
        }),
        None => Err(ctx.err(
            CODE_MISSING_KEY,
            "[distributed] has no `hostfile`",
            v.span(),
            "expected `hostfile = \"hosts.json\"`",
        )),
    }
}

fn serve(ctx: &Ctx<'_>, v: &Value<'_>) -> Result<ServeDecl> {
    let t = ctx.table("serve", v)?;
    ctx.known_keys(
        t,
        &[
            "host",
            "port",
            "content-special-tokens",
            "tool-format",
            "prompt-cache-mb",
            "max-batch",
        ],
        "[serve]",
    )?;
    let host = match t.get("host") {
        Some(v) => {
            let h = ctx.string("host", v)?;
            if h.is_empty() {
                return Err(ctx.err(CODE_VALUE, "`host` is empty", v.span(), "empty"));
            }
            h.to_string()
        }
        None => DEFAULT_HOST.to_string(),
    };
    let port = match t.get("port") {
        Some(v) => {
            let p = ctx.integer("port", v)?;
            u16::try_from(p).map_err(|_| {
                ctx.err(
                    CODE_VALUE,
                    format!("port {p} is out of range"),
                    v.span(),
                    "expected 0..=65535",
                )
            })?
        }
        None => DEFAULT_PORT,
    };
    let content_special_tokens = match t.get("content-special-tokens") {
        Some(v) => v
            .get_ref()
            .as_bool()
            .ok_or_else(|| ctx.wrong_type("content-special-tokens", "a boolean", v))?,
        None => false,
    };
    let prompt_cache_mb = match t.get("prompt-cache-mb") {
        Some(v) => {
            let n = ctx.integer("prompt-cache-mb", v)?;
            u64::try_from(n).map_err(|_| {
                ctx.err(
                    CODE_VALUE,
                    format!("prompt-cache-mb {n} is negative"),
                    v.span(),
                    "expected MiB, 0 for off",
                )
            })?
        }
        None => DEFAULT_PROMPT_CACHE_MB,
    };
    let max_batch = match t.get("max-batch") {
        Some(v) => {
            let n = ctx.integer("max-batch", v)?;
            Some(
                usize::try_from(n)
                    .ok()
                    .filter(|&n| (1..=MAX_BATCH_LIMIT).contains(&n))
                    .ok_or_else(|| {
                        ctx.err(
                            CODE_VALUE,
                            format!("max-batch {n} is out of range"),
                            v.span(),
                            "expected 1..=256",
                        )
                    })?,
            )
        }
        None => None,
    };
    Ok(ServeDecl {
        host,
        port,
        content_special_tokens,
        tool_format: tool_format(ctx, t)?,
        prompt_cache_mb,
        max_batch,
    })
}
