//! The generic part of mapping llama.cpp's GGUF conventions to Hugging Face / mlx-lm ones;
//! what each architecture knows (its GGUF name, tensor names, permutation, norm shift, own
//! config keys) is its registry family's `arch::gguf` entry ([`Architecture`]). Here: which
//! entry a file is ([`detect`]), GGUF tensor names → MLX-layout names ([`map_tensor`],
//! including undoing llama.cpp's Q/K row permutation and the `+1` gemma norm shift),
//! hyper-parameters from metadata ([`ModelParams`]) and `config.json` ([`config_json`]).

use serde_json::{json, Map, Value};
use tracing::warn;

use super::reader::GgufFile;
use crate::arch::gguf::put;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::config::size_limit;

/// A GGUF architecture this importer can map: an entry of a registry family's `gguf` list.
pub use crate::arch::gguf::GgufArch as Architecture;

/// The architecture of a GGUF file, or an `unsupported-architecture` error.
pub fn detect(gguf: &GgufFile) -> Result<&'static Architecture> {
    let name = gguf.architecture().ok_or_else(|| {
        Diagnostic::error(
            code::Gguf::MissingMetadata,
            "GGUF file has no `general.architecture`",
        )
        .with_file(gguf.path())
    })?;
    crate::arch::gguf::lookup(name).ok_or_else(|| {
        Diagnostic::error(
            code::Gguf::UnsupportedArchitecture,
            format!("GGUF architecture `{name}` is not supported"),
        )
        .with_file(gguf.path())
        .with_help(format!(
            "supported architectures: {}",
            crate::arch::gguf::all()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// What to do with one GGUF tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorMapping {
    /// Write it under this Hugging Face name.
    Keep {
        /// Hugging Face tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
        hf_name: String,
        /// Undo llama.cpp's rope permutation of the rows with this many heads.
        unpermute_heads: Option<usize>,
        /// Subtract this from every value (gemma norms); 0 for none.
        subtract: f32,
    },
    /// A module the converter fused: written as equal row parts of each matrix under these
    /// names, in row order (`crate::arch::gguf::Fused`).
    Split(Vec<String>),
    /// Not a Hugging Face weight (e.g. `rope_freqs.weight`); skip it, with this reason.
    Skip(&'static str),
}

/// Maps a GGUF tensor name; `None` for names this architecture does not know.
pub fn map_tensor(arch: &Architecture, params: &ModelParams, name: &str) -> Option<TensorMapping> {
    let mut mapping = match name {
        "token_embd.weight" => keep("model.embed_tokens.weight".into()),
        "output_norm.weight" => keep("model.norm.weight".into()),
        "output.weight" => keep("lm_head.weight".into()),
        "rope_freqs.weight" => {
            return Some(TensorMapping::Skip(
                "llama.cpp's precomputed rope frequencies are not a Hugging Face weight",
            ))
        }
        n if crate::arch::gguf::phi3::ROPE_FACTOR_TENSORS.contains(&n) => {
            return Some(TensorMapping::Skip(
                "Phi-3's rope factors are config.json's `rope_scaling`, not a weight",
            ))
        }
        n => match (arch.top_level)(n) {
            Some(hf) => keep(hf.into()),
            None => layer_tensor(arch, params, name)?,
        },
    };
    if arch.norm_shift != 0.0 && name.ends_with("norm.weight") {
        if let TensorMapping::Keep { subtract, .. } = &mut mapping {
            *subtract = arch.norm_shift;
        }
    }
    Some(mapping)
}

/// Written under `hf` as it is.
fn keep(hf: String) -> TensorMapping {
    TensorMapping::Keep {
        hf_name: hf,
        unpermute_heads: None,
        subtract: 0.0,
    }
}

/// Maps a `blk.<i>.<rest>` tensor of a layer below the block count.
fn layer_tensor(arch: &Architecture, params: &ModelParams, name: &str) -> Option<TensorMapping> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= params.num_layers {
        return None;
    }
    if let Some(param) = (arch.layer_param)(rest) {
        return Some(keep(format!("model.layers.{layer}.{param}")));
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    if let Some(f) = arch.fused.iter().find(|f| f.gguf == module) {
        let names = f.parts.iter();
        let names = names.map(|p| format!("model.layers.{layer}.{p}.{suffix}"));
        return Some(TensorMapping::Split(names.collect()));
    }
    let hf_module = (arch.layer_module)(module)?;
    let unpermute_heads = match module {
        "attn_q" if arch.permutes_qk => Some(params.num_heads),
        "attn_k" if arch.permutes_qk => Some(params.num_kv_heads),
        _ => None,
    };
    Some(TensorMapping::Keep {
        hf_name: format!("model.layers.{layer}.{hf_module}.{suffix}"),
        unpermute_heads,
        subtract: 0.0,
    })
}

/// For each destination row, the source row that undoes llama.cpp's rope permutation:
/// the converter did `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)`,
/// so HF row `h*hd + t*hd/2 + i` is GGUF row `h*hd + 2*i + t`. `None` when `rows` is not a
/// multiple of `2 * n_head`.
pub fn unpermute_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for t in 0..2 {
            for i in 0..half {
                src.push(h * hd + 2 * i + t);
            }
        }
    }
    Some(src)
}

/// Reorders whole rows of `row_bytes` bytes: row `r` of the result is row `src[r]` of `data`.
pub fn permute_rows(data: &[u8], row_bytes: usize, src: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &s in src {
        out.extend_from_slice(&data[s * row_bytes..(s + 1) * row_bytes]);
    }
    out
}

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    /// Hugging Face `rope_scaling`, when the GGUF declares one.
    pub rope_scaling: Option<Value>,
    /// `<arch>.attention.sliding_window`, when present.
    pub sliding_window: Option<usize>,
}

fn missing(gguf: &GgufFile, key: &str) -> Diagnostic {
    Diagnostic::error(
        code::Gguf::MissingMetadata,
        format!("GGUF metadata `{key}` is missing or not a number"),
    )
    .with_file(gguf.path())
    .with_help("the file was not written by a llama.cpp converter this importer knows")
}

/// `v` (the value of GGUF `key`, which becomes config.json's `hf_key`) checked against the
/// bound config.json sizes get, before anything is allocated from it.
fn bounded(gguf: &GgufFile, key: &str, hf_key: &str, v: u64) -> Result<usize> {
    match size_limit(hf_key) {
        Some(max) if v > max => Err(Diagnostic::error(
            code::Gguf::SizeLimit,
            format!("GGUF metadata `{key}` is {v}, above the limit of {max} (`{hf_key}`)"),
        )
        .with_file(gguf.path())
        .with_help("the file is corrupt or its metadata was edited")),
        _ => Ok(v as usize),
    }
}

/// The required positive size `key` (config.json's `hf_key`), bounded like config.json.
pub(crate) fn req_usize(gguf: &GgufFile, key: &str, hf_key: &str) -> Result<usize> {
    match gguf.get_u64(key) {
        Some(v) if v > 0 => bounded(gguf, key, hf_key, v),
        _ => Err(missing(gguf, key)),
    }
}

/// An optional positive size; absent or zero is `None`.
fn opt_usize(gguf: &GgufFile, key: &str, hf_key: &str) -> Result<Option<usize>> {
    match gguf.get_u64(key) {
        Some(v) if v > 0 => bounded(gguf, key, hf_key, v).map(Some),
        _ => Ok(None),
    }
}

/// The block index of a `blk.<i>.…` tensor name.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The blocks that have a tensor `blk.<i>.<suffix>` (e.g. a MoE router), ascending.
pub(crate) fn layers_with(gguf: &GgufFile, suffix: &str) -> Vec<usize> {
    let mut layers: Vec<usize> = gguf
        .tensors()
        .iter()
        .filter(|t| {
            t.name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(_, rest)| rest == suffix)
        })
        .filter_map(|t| block_of(&t.name))
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers
}

/// Per layer, whether it attends over a sliding window, as llama.cpp decides it: the
/// `<arch>.attention.sliding_window_pattern` list of booleans, else every layer `i` with
/// `i % n < n - 1` for its number `n` (or, absent, the architecture's fixed `default_n`).
pub(crate) fn sliding_layers(
    gguf: &GgufFile,
    arch: &str,
    num_layers: usize,
    default_n: usize,
) -> Result<Vec<bool>> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    let n = match gguf.get(&key) {
        None => default_n,
        Some(v) => match (v.as_array(), v.as_i64()) {
            (Some(list), _) if list.len() == num_layers => {
                let flags: Option<Vec<bool>> = list.iter().map(|f| f.as_bool()).collect();
                return flags.ok_or_else(|| bad_pattern(gguf, &key, num_layers));
            }
            (None, Some(n)) if n >= 0 => n as usize,
            _ => return Err(bad_pattern(gguf, &key, num_layers)),
        },
    };
    Ok((0..num_layers).map(|i| n == 0 || i % n < n - 1).collect())
}

fn bad_pattern(gguf: &GgufFile, key: &str, num_layers: usize) -> Diagnostic {
    Diagnostic::error(
        code::Gguf::BadMetadata,
        format!(
            "GGUF metadata `{key}` is neither a number nor one boolean per layer ({num_layers})"
        ),
    )
    .with_file(gguf.path())
}

/// The number of `blk.<i>` blocks that have tensors must be `block_count`.
fn check_block_count(gguf: &GgufFile, key: &str, block_count: usize) -> Result<()> {
    let present = gguf
        .tensors()
        .iter()
        .filter_map(|t| block_of(&t.name))
        .max()
        .map_or(0, |m| m + 1);
    if present == block_count {
        return Ok(());
    }
    Err(Diagnostic::error(
        code::Gguf::BadMetadata,
        format!(
            "GGUF metadata `{key}` is {block_count}, but the file has tensors for {present} \
             blocks"
        ),
    )
    .with_file(gguf.path())
    .with_help("the file is corrupt or its metadata was edited"))
}

/// Checks every `tokenizer.ggml.*_token_id` present: an integer below the vocabulary size.
pub fn check_special_ids(gguf: &GgufFile, vocab_size: usize) -> Result<()> {
    for name in ["bos", "eos", "eot", "unknown", "padding"] {
        let key = format!("tokenizer.ggml.{name}_token_id");
        let Some(v) = gguf.get(&key) else { continue };
        match v.as_i64() {
            Some(id) if id >= 0 && (id as u64) < vocab_size as u64 => {}
            _ => {
                return Err(Diagnostic::error(
                    code::Gguf::BadMetadata,
                    format!(
                        "GGUF metadata `{key}` is {v}, not a token id (the vocabulary has \
                         {vocab_size} tokens)"
                    ),
                )
                .with_file(gguf.path()))
            }
        }
    }
    Ok(())
}

/// A size stored as a number or one value per layer: a uniform array is that value; a varying
/// one is layer 0's where the family reads the per-layer values itself (`per_layer`), else
/// an error.
fn per_layer_size(
    gguf: &GgufFile,
    key: &str,
    hf_key: &str,
    per_layer: bool,
) -> Result<Option<usize>> {
    let Some(arr) = gguf.get_i64_array(key) else {
        return opt_usize(gguf, key, hf_key);
    };
    match arr.first().copied() {
        Some(f) if f > 0 && (per_layer || arr.iter().all(|&x| x == f)) => {
            bounded(gguf, key, hf_key, f as u64).map(Some)
        }
        _ => Err(Diagnostic::error(
            code::Gguf::UnsupportedArchitecture,
            format!("GGUF `{key}` varies per layer, which is not supported"),
        )
        .with_file(gguf.path())),
    }
}

impl ModelParams {
    /// Reads the hyper-parameters of `arch` from the file's metadata.
    pub fn read(gguf: &GgufFile, arch: &Architecture) -> Result<Self> {
        let p = arch.name;
        let k = |s: &str| format!("{p}.{s}");
        let hidden_size = req_usize(gguf, &k("embedding_length"), "hidden_size")?;
        let num_layers = req_usize(gguf, &k("block_count"), "num_hidden_layers")?;
        check_block_count(gguf, &k("block_count"), num_layers)?;
        let per_layer = arch.per_layer_sizes;
        let size = |key: &str, hf_key: &str| per_layer_size(gguf, &k(key), hf_key, per_layer);
        let intermediate_size = size("feed_forward_length", "intermediate_size")?
            .ok_or_else(|| missing(gguf, &k("feed_forward_length")))?;
        let num_heads = per_layer_size(
            gguf,
            &k("attention.head_count"),
            "num_attention_heads",
            false,
        )?
        .ok_or_else(|| missing(gguf, &k("attention.head_count")))?;
        let num_kv_heads = match size("attention.head_count_kv", "num_attention_heads")? {
            Some(n) => n,
            None => {
                warn!("GGUF has no `{p}.attention.head_count_kv`; using the head count {num_heads} (no GQA)");
                num_heads
            }
        };
        let head_dim = match opt_usize(gguf, &k("attention.key_length"), "head_dim")? {
            Some(v) => v,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(missing(gguf, &k("attention.key_length")));
                }
                hidden_size / num_heads
            }
        };
        let rms_norm_eps = gguf
            .get_f64(&k("attention.layer_norm_rms_epsilon"))
            .map(short_f64)
            .ok_or_else(|| missing(gguf, &k("attention.layer_norm_rms_epsilon")))?;
        let default_theta = arch.default_rope_theta;
        let rope_theta = match gguf.get_f64(&k("rope.freq_base")) {
            Some(v) => short_f64(v),
            None => {
                warn!("GGUF has no `{p}.rope.freq_base`; using the {p} default {default_theta}");
                default_theta
            }
        };
        let max_position_embeddings =
            match opt_usize(gguf, &k("context_length"), "max_position_embeddings")? {
                Some(v) => v,
                None => {
                    warn!("GGUF has no `{p}.context_length`; using 2048");
                    2048
                }
            };
        let vocab_size = match opt_usize(gguf, &k("vocab_size"), "vocab_size")? {
            Some(v) => v,
            None => match gguf.get_array("tokenizer.ggml.tokens") {
                Some(t) if !t.is_empty() => {
                    bounded(gguf, "tokenizer.ggml.tokens", "vocab_size", t.len() as u64)?
                }
                _ => match gguf.tensor_info("token_embd.weight") {
                    Some(t) if t.dims.len() == 2 => {
                        bounded(gguf, "token_embd.weight", "vocab_size", t.dims[1])?
                    }
                    _ => return Err(missing(gguf, &k("vocab_size"))),
                },
            },
        };
        let rope_scaling = rope_scaling(gguf, p);
        let sliding_window = opt_usize(gguf, &k("attention.sliding_window"), "sliding_window")?;
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Diagnostic::error(
                code::Gguf::BadMetadata,
                format!(
                    "{num_heads} attention heads are not a multiple of {num_kv_heads} KV heads"
                ),
            )
            .with_file(gguf.path()));
        }
        Ok(Self {
            hidden_size,
            num_layers,
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings,
            vocab_size,
            rope_scaling,
            sliding_window,
        })
    }
}

/// A value stored as f32 in the GGUF, as the shortest decimal that round-trips through f32
/// (so `1e-5` stays `1e-5` in config.json instead of `9.999999747378752e-6`).
pub fn short_f64(v: f64) -> f64 {
    let f = v as f32;
    if f as f64 != v {
        return v; // really an f64
    }
    format!("{f}").parse().unwrap_or(v)
}

fn rope_scaling(gguf: &GgufFile, p: &str) -> Option<Value> {
    let ty = gguf.get_str(&format!("{p}.rope.scaling.type"));
    let factor = gguf
        .get_f64(&format!("{p}.rope.scaling.factor"))
        .map(short_f64);
    let orig = gguf.get_u64(&format!("{p}.rope.scaling.original_context_length"));
    match (ty, factor) {
        (None | Some("none"), _) => None,
        (Some(_), None) | (Some(_), Some(0.0)) => {
            warn!("GGUF `{p}.rope.scaling.type` is set without a usable factor; ignoring rope scaling");
            None
        }
        (Some(t @ ("linear" | "yarn")), Some(f)) => {
            let mut m = Map::new();
            m.insert("type".into(), json!(t));
            m.insert("rope_type".into(), json!(t));
            m.insert("factor".into(), json!(f));
            if let Some(o) = orig {
                m.insert("original_max_position_embeddings".into(), json!(o));
            }
            for beta in ["beta_fast", "beta_slow"] {
                let key = format!("{p}.rope.scaling.yarn_{beta}");
                if let Some(v) = gguf.get_f64(&key).filter(|_| t == "yarn") {
                    m.insert(beta.into(), json!(short_f64(v)));
                }
            }
            Some(Value::Object(m))
        }
        (Some(t), Some(_)) => {
            warn!("GGUF rope scaling type `{t}` is not supported; ignoring rope scaling");
            None
        }
    }
}

/// Token ids used in config files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn), when different from `eos`.
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
}

impl SpecialIds {
    /// Reads `tokenizer.ggml.*_token_id`.
    pub fn read(gguf: &GgufFile) -> Self {
        let id = |k: &str| gguf.get_u32(&format!("tokenizer.ggml.{k}_token_id"));
        let eos = id("eos");
        Self {
            bos: id("bos"),
            eos,
            eot: id("eot").filter(|&e| Some(e) != eos),
            unk: id("unknown"),
            pad: id("padding"),
        }
    }

    /// `eos_token_id` value: a number, or a list when there is an end-of-turn id too.
    pub fn eos_json(&self) -> Value {
        match (self.eos, self.eot) {
            (Some(e), Some(t)) => json!([e, t]),
            (Some(e), None) => json!(e),
            (None, Some(t)) => json!(t),
            (None, None) => Value::Null,
        }
    }
}

/// Builds `config.json`. `quantization` is the mlx-lm quantization block (also written as
/// `quantization_config`) when any tensor is kept quantized.
pub fn config_json(
    gguf: &GgufFile,
    arch: &Architecture,
    p: &ModelParams,
    ids: &SpecialIds,
    tie_word_embeddings: bool,
    torch_dtype: &str,
    quantization: Option<Value>,
) -> Result<Value> {
    let mut c = Map::new();
    put(&mut c, "architectures", json!([arch.hf_class]));
    put(&mut c, "model_type", json!(arch.model_type));
    put(&mut c, "hidden_size", json!(p.hidden_size));
    put(&mut c, "intermediate_size", json!(p.intermediate_size));
    put(&mut c, "num_hidden_layers", json!(p.num_layers));
    put(&mut c, "num_attention_heads", json!(p.num_heads));
    put(&mut c, "num_key_value_heads", json!(p.num_kv_heads));
    put(&mut c, "head_dim", json!(p.head_dim));
    put(&mut c, "rms_norm_eps", json!(p.rms_norm_eps));
    put(&mut c, "rope_theta", json!(p.rope_theta));
    put(
        &mut c,
        "max_position_embeddings",
        json!(p.max_position_embeddings),
    );
    put(&mut c, "vocab_size", json!(p.vocab_size));
    put(&mut c, "tie_word_embeddings", json!(tie_word_embeddings));
    put(&mut c, "bos_token_id", json!(ids.bos));
    put(&mut c, "eos_token_id", ids.eos_json());
    if let Some(pad) = ids.pad {
        put(&mut c, "pad_token_id", json!(pad));
    }
    put(
        &mut c,
        "rope_scaling",
        p.rope_scaling.clone().unwrap_or(Value::Null),
    );
    (arch.config)(gguf, p, &mut c)?;
    put(&mut c, "torch_dtype", json!(torch_dtype));
    if let Some(q) = quantization {
        put(&mut c, "quantization", q.clone());
        put(&mut c, "quantization_config", q);
    }
    Ok(Value::Object(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gguf::gemma3::GEMMA3;
    use crate::arch::gguf::llama::{LLAMA, QWEN2};

    fn params() -> ModelParams {
        ModelParams {
            hidden_size: 8,
            num_layers: 2,
            intermediate_size: 16,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 64,
            vocab_size: 10,
            rope_scaling: None,
            sliding_window: None,
        }
    }

    /// The llama.cpp converter's permutation, written the way numpy does it.
    fn permute(rows: usize, n_head: usize) -> Vec<usize> {
        // gguf[h, i, t] = hf[h, t, i]  →  gguf row index h*hd + i*2 + t holds hf row
        // h*hd + t*hd/2 + i.
        let hd = rows / n_head;
        let mut gguf_from_hf = vec![0; rows];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for t in 0..2 {
                    gguf_from_hf[h * hd + i * 2 + t] = h * hd + t * (hd / 2) + i;
                }
            }
        }
        gguf_from_hf
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        for (rows, heads) in [(8, 2), (576, 9), (192, 3), (64, 1)] {
            let gguf_from_hf = permute(rows, heads);
            let src = unpermute_rows(rows, heads).unwrap();
            for (hf_row, &g) in src.iter().enumerate() {
                assert_eq!(gguf_from_hf[g], hf_row);
            }
        }
        assert!(unpermute_rows(10, 3).is_none());
        let data: Vec<u8> = (0..8u8).flat_map(|r| [r, r]).collect();
        let out = permute_rows(&data, 2, &unpermute_rows(8, 2).unwrap());
        assert_eq!(out, vec![0, 0, 2, 2, 1, 1, 3, 3, 4, 4, 6, 6, 5, 5, 7, 7]);
    }

    #[test]
    fn tensor_names_map_to_hugging_face() {
        let p = params();
        let hf = |arch: &Architecture, n: &str| match map_tensor(arch, &p, n) {
            Some(TensorMapping::Keep { hf_name, .. }) => hf_name,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(hf(&LLAMA, "token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(hf(&LLAMA, "output.weight"), "lm_head.weight");
        assert_eq!(
            hf(&LLAMA, "blk.1.ffn_norm.weight"),
            "model.layers.1.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf(&QWEN2, "blk.0.attn_q.bias"),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf(&GEMMA3, "blk.0.ffn_norm.weight"),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert!(map_tensor(&LLAMA, &p, "blk.2.attn_q.weight").is_none());
        assert!(matches!(
            map_tensor(&LLAMA, &p, "rope_factors_long.weight"),
            Some(TensorMapping::Skip(_))
        ));
        assert!(map_tensor(&LLAMA, &p, "blk.0.attn_q_norm.weight").is_none());
        match map_tensor(&LLAMA, &p, "blk.0.attn_k.weight") {
            Some(TensorMapping::Keep {
                unpermute_heads, ..
            }) => assert_eq!(unpermute_heads, Some(1)),
            other => panic!("{other:?}"),
        }
        match map_tensor(&QWEN2, &p, "blk.0.attn_q.weight") {
            Some(TensorMapping::Keep {
                unpermute_heads, ..
            }) => assert_eq!(unpermute_heads, None),
            other => panic!("{other:?}"),
        }
        match map_tensor(&GEMMA3, &p, "blk.0.attn_q_norm.weight") {
            Some(TensorMapping::Keep { subtract, .. }) => assert_eq!(subtract, 1.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_parameters_and_permuted_families_map() {
        use crate::arch::gguf::gpt_oss::GPT_OSS;
        use crate::arch::gguf::ministral3::MISTRAL3;
        use crate::arch::gguf::qwen3_5::{QWEN35, QWEN35MOE};
        let p = params();
        let hf = |arch: &Architecture, n: &str| match map_tensor(arch, &p, n) {
            Some(TensorMapping::Keep {
                hf_name,
                unpermute_heads,
                ..
            }) => (hf_name, unpermute_heads),
            other => panic!("{n}: {other:?}"),
        };
        let cases: [(&Architecture, &str, &str, Option<usize>); 7] = [
            (
                &GPT_OSS,
                "blk.1.attn_sinks.weight",
                "model.layers.1.self_attn.sinks",
                None,
            ),
            (
                &GPT_OSS,
                "blk.0.ffn_up_exps.bias",
                "model.layers.0.mlp.experts.up_proj.bias",
                None,
            ),
            (
                &QWEN35,
                "blk.0.ssm_a",
                "model.layers.0.linear_attn.A_log",
                None,
            ),
            (
                &QWEN35,
                "blk.0.ssm_dt.bias",
                "model.layers.0.linear_attn.dt_bias",
                None,
            ),
            (
                &QWEN35MOE,
                "blk.1.ffn_gate_inp_shexp.weight",
                "model.layers.1.mlp.shared_expert_gate.weight",
                None,
            ),
            (
                &MISTRAL3,
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
                Some(2),
            ),
            (
                &MISTRAL3,
                "blk.0.attn_k.weight",
                "model.layers.0.self_attn.k_proj.weight",
                Some(1),
            ),
        ];
        for (arch, gguf, want, heads) in cases {
            assert_eq!(hf(arch, gguf), (want.to_owned(), heads), "{arch} {gguf}");
        }
        assert!(map_tensor(&GPT_OSS, &p, "blk.0.attn_sinks.bias").is_none());
        assert!(map_tensor(&QWEN35, &p, "blk.0.ssm_a.weight").is_none());
    }

    #[test]
    fn new_families_map_to_the_mlx_layout() {
        use crate::arch::gguf::olmo2::OLMO2;
        use crate::arch::gguf::phi3::PHI3;
        use crate::arch::gguf::qwen3_moe::QWEN3MOE;
        let p = params();
        let cases: [(&Architecture, &str, Option<&str>); 9] = [
            (
                &OLMO2,
                "blk.1.post_ffw_norm",
                Some("post_feedforward_layernorm"),
            ),
            (&OLMO2, "blk.0.attn_q_norm", Some("self_attn.q_norm")),
            (&OLMO2, "blk.0.attn_norm", None),
            (
                &QWEN3MOE,
                "blk.0.ffn_gate_exps",
                Some("mlp.switch_mlp.gate_proj"),
            ),
            (&QWEN3MOE, "blk.1.ffn_gate_inp", Some("mlp.gate")),
            (&QWEN3MOE, "blk.1.ffn_down", Some("mlp.down_proj")),
            (&PHI3, "blk.0.attn_qkv", Some("self_attn.qkv_proj")),
            (&PHI3, "blk.1.ffn_up", Some("mlp.gate_up_proj")),
            (&PHI3, "blk.0.attn_q", None),
        ];
        for (arch, gguf, hf) in cases {
            let layer = &gguf[4..5];
            let want = hf.map(|m| TensorMapping::Keep {
                hf_name: format!("model.layers.{layer}.{m}.weight"),
                unpermute_heads: None,
                subtract: 0.0,
            });
            assert_eq!(
                map_tensor(arch, &p, &format!("{gguf}.weight")),
                want,
                "{arch} {gguf}"
            );
        }
    }
}
