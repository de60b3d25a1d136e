//! Tokenizer files from GGUF metadata: a Hugging Face `tokenizer.json` (byte-level BPE from
//! `tokenizer.ggml.model == "gpt2"`, loadable by the `tokenizers` crate and by Python
//! `transformers`), `tokenizer_config.json`, `chat_template.jinja` and
//! `generation_config.json` ([`TokenizerFiles::from_gguf`]).
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre` (llama.cpp's name for the pre-tokenizer
//! regex set); an unknown name falls back to the plain GPT-2 byte-level split, with a warning.
//! SentencePiece (`tokenizer.ggml.model == "llama"`) vocabularies are not supported yet.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::arch::SpecialIds;
use super::reader::GgufFile;
use crate::diagnostic::{code, Code, Diagnostic, Result};

/// GGUF token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// Qwen2's pre-tokenizer regex (from its tokenizer.json).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex (from its tokenizer.json).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer family chosen from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// Digits split individually, then GPT-2 byte-level (smollm, starcoder, refact, …).
    DigitsByteLevel,
    /// Qwen2 regex split, then byte-level without regex; NFC normalizer.
    Qwen2,
    /// Llama 3 regex split, then byte-level without regex; merges ignored for whole words.
    Llama3,
    /// Plain GPT-2 byte-level (gpt-2, default, and the fallback).
    ByteLevel,
    /// A SentencePiece vocabulary (`tokenizer.ggml.model == "llama"`): spaces become `▁`
    /// in the normalizer; no byte-level step.
    SentencePiece,
}

impl PreTokenizer {
    /// Picks the pre-tokenizer for `tokenizer.ggml.pre` (and the vocabulary, when absent).
    pub fn from_gguf(pre: Option<&str>, tokens: &[&str]) -> Self {
        match pre {
            Some("smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b") => {
                Self::DigitsByteLevel
            }
            Some("qwen2" | "deepseek-r1-qwen" | "megrez" | "hunyuan") => Self::Qwen2,
            Some("llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx") => Self::Llama3,
            Some("gpt-2" | "gpt2" | "default" | "olmo" | "phi-2" | "jina-es" | "jina-de") => {
                Self::ByteLevel
            }
            other => {
                if looks_like_smollm(tokens) {
                    info!(
                        "GGUF tokenizer.ggml.pre is {other:?}; the vocabulary is SmolLM's, so \
                         using the SmolLM pre-tokenizer (individual digits + byte-level)"
                    );
                    Self::DigitsByteLevel
                } else {
                    warn!(
                        "GGUF tokenizer.ggml.pre {other:?} is not known; falling back to the \
                         plain GPT-2 byte-level pre-tokenizer (tokenization may differ from the \
                         original)"
                    );
                    Self::ByteLevel
                }
            }
        }
    }

    /// The ByteLevel post-processor (offsets only), as the original tokenizer.json has it.
    fn byte_level_post(self) -> Value {
        match self {
            Self::Qwen2 => json!({
                "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
            }),
            _ => json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
            }),
        }
    }

    /// The ByteLevel decoder, as the original tokenizer.json has it.
    fn byte_level_decoder(self) -> Value {
        match self {
            Self::Qwen2 => json!({
                "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
            }),
            _ => json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
            }),
        }
    }

    fn normalizer(self) -> Value {
        match self {
            Self::Qwen2 => json!({"type": "NFC"}),
            _ => Value::Null,
        }
    }

    fn json(self) -> Value {
        let split = |re: &str| {
            json!({
                "type": "Split",
                "pattern": {"Regex": re},
                "behavior": "Isolated",
                "invert": false
            })
        };
        let byte_level_no_regex = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
        });
        match self {
            Self::DigitsByteLevel => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
                ]
            }),
            Self::Qwen2 => json!({
                "type": "Sequence",
                "pretokenizers": [split(QWEN2_REGEX), byte_level_no_regex]
            }),
            Self::Llama3 => json!({
                "type": "Sequence",
                "pretokenizers": [split(LLAMA3_REGEX), byte_level_no_regex]
            }),
            Self::ByteLevel => json!({
                "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
            }),
            Self::SentencePiece => Value::Null,
        }
    }
}

fn looks_like_smollm(tokens: &[&str]) -> bool {
    tokens.len() == 49152
        && tokens.first() == Some(&"<|endoftext|>")
        && tokens.get(1) == Some(&"<|im_start|>")
}

/// Does a token look like a special marker (`<|…|>`)?
fn looks_special(s: &str) -> bool {
    s.len() > 4 && s.starts_with("<|") && s.ends_with("|>")
}

/// The four tokenizer-related files of an imported model.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: Value,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Value,
    /// `chat_template.jinja`, when the GGUF has `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `generation_config.json`.
    pub generation_config: Value,
    /// The pre-tokenizer that was chosen.
    pub pre_tokenizer: PreTokenizer,
}

fn meta_err(gguf: &GgufFile, code: impl Into<Code>, msg: String) -> Diagnostic {
    Diagnostic::error(code, msg).with_file(gguf.path())
}

impl TokenizerFiles {
    /// Builds the files from the GGUF's `tokenizer.*` metadata. `model_max_length` is the
    /// context length.
    pub fn from_gguf(gguf: &GgufFile, model_max_length: usize) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model").ok_or_else(|| {
            meta_err(
                gguf,
                code::Gguf::MissingMetadata,
                "GGUF has no `tokenizer.ggml.model`, so no tokenizer can be built".into(),
            )
        })?;
        if model != "gpt2" && model != "llama" {
            return Err(meta_err(
                gguf,
                code::Gguf::UnsupportedTokenizer,
                format!(
                    "GGUF tokenizer model `{model}` is not supported (supported: byte-level BPE \
                     `gpt2` and SentencePiece BPE `llama`)"
                ),
            )
            .with_help("supply tokenizer.json from the original model instead"));
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
            meta_err(
                gguf,
                code::Gguf::MissingMetadata,
                "GGUF has no string array `tokenizer.ggml.tokens`".into(),
            )
        })?;
        if tokens.is_empty() {
            return Err(meta_err(
                gguf,
                code::Gguf::BadMetadata,
                "GGUF `tokenizer.ggml.tokens` is empty".into(),
            ));
        }
        let types = match gguf.get_i64_array("tokenizer.ggml.token_type") {
            Some(t) if t.len() == tokens.len() => t,
            Some(t) => {
                warn!(
                    "GGUF tokenizer.ggml.token_type has {} entries for {} tokens; treating \
                     every token as normal except <|…|> markers",
                    t.len(),
                    tokens.len()
                );
                vec![token_type::NORMAL; tokens.len()]
            }
            None => {
                warn!("GGUF has no tokenizer.ggml.token_type; treating every token as normal except <|…|> markers");
                vec![token_type::NORMAL; tokens.len()]
            }
        };
        let ids = SpecialIds::read(gguf);
        let add_bos = gguf
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false);
        let add_eos = gguf
            .get_bool("tokenizer.ggml.add_eos_token")
            .unwrap_or(false);
        let chat_template = gguf.get_str("tokenizer.chat_template").map(str::to_owned);
        let merges_raw;
        let scores;
        let spm_tokens: Vec<String>;
        let spm_refs: Vec<&str>;
        let (tokens, kind, pre) = if model == "gpt2" {
            merges_raw = gguf.get_str_array("tokenizer.ggml.merges").ok_or_else(|| {
                meta_err(
                    gguf,
                    code::Gguf::MissingMetadata,
                    "GGUF byte-level BPE tokenizer has no `tokenizer.ggml.merges`".into(),
                )
            })?;
            let pre = PreTokenizer::from_gguf(gguf.get_str("tokenizer.ggml.pre"), &tokens);
            (
                &tokens[..],
                Kind::Bpe {
                    merges: &merges_raw,
                    pre,
                },
                pre,
            )
        } else {
            scores = match gguf.get_f32_array("tokenizer.ggml.scores") {
                Some(s) if s.len() == tokens.len() => s,
                _ => {
                    return Err(meta_err(
                        gguf,
                        code::Gguf::MissingMetadata,
                        "GGUF SentencePiece tokenizer has no `tokenizer.ggml.scores` with one \
                         score per token"
                            .into(),
                    ))
                }
            };
            // llama.cpp's converter wrote user-defined tokens with `▁` replaced by spaces;
            // Hugging Face keeps the SentencePiece form.
            spm_tokens = tokens
                .iter()
                .zip(&types)
                .map(|(t, &ty)| {
                    if ty == token_type::USER_DEFINED {
                        t.replace(' ', "\u{2581}")
                    } else {
                        (*t).to_owned()
                    }
                })
                .collect();
            spm_refs = spm_tokens.iter().map(String::as_str).collect();
            let add_space_prefix = gguf
                .get_bool("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true);
            (
                &spm_refs[..],
                Kind::Spm {
                    scores: &scores,
                    add_space_prefix,
                },
                PreTokenizer::SentencePiece,
            )
        };
        let spec = Spec {
            tokens,
            types: &types,
            kind,
            ids: &ids,
            add_bos,
            add_eos,
        };
        let tokenizer_json = spec.tokenizer_json()?;
        let tokenizer_config = spec.tokenizer_config(chat_template.as_deref(), model_max_length);
        let mut gen = Map::new();
        if let Some(b) = ids.bos {
            gen.insert("bos_token_id".into(), json!(b));
        }
        if !ids.eos_json().is_null() {
            gen.insert("eos_token_id".into(), ids.eos_json());
        }
        if let Some(p) = ids.pad {
            gen.insert("pad_token_id".into(), json!(p));
        }
        Ok(Self {
            tokenizer_json,
            tokenizer_config,
            chat_template,
            generation_config: Value::Object(gen),
            pre_tokenizer: pre,
        })
    }
}

/// Model-specific inputs of a tokenizer.
pub(crate) enum Kind<'a> {
    /// Byte-level BPE with explicit merges.
    Bpe {
        merges: &'a [&'a str],
        pre: PreTokenizer,
    },
    /// SentencePiece BPE: merges are derived from the piece scores.
    Spm {
        scores: &'a [f32],
        add_space_prefix: bool,
    },
}

/// Everything needed to write a tokenizer.
pub(crate) struct Spec<'a> {
    pub tokens: &'a [&'a str],
    pub types: &'a [i64],
    pub kind: Kind<'a>,
    pub ids: &'a SpecialIds,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl Spec<'_> {
    fn is_added(&self, id: usize) -> bool {
        matches!(
            self.types.get(id).copied(),
            Some(token_type::CONTROL | token_type::USER_DEFINED)
        )
    }

    fn is_special(&self, id: usize) -> bool {
        self.types.get(id).copied() == Some(token_type::CONTROL) || looks_special(self.tokens[id])
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize).copied())
    }

    fn tokenizer_json(&self) -> Result<Value> {
        let mut vocab = Map::new();
        let mut dup = 0usize;
        for (id, t) in self.tokens.iter().enumerate() {
            if vocab.insert((*t).to_owned(), json!(id)).is_some() {
                dup += 1;
            }
        }
        if dup > 0 {
            warn!("GGUF vocabulary has {dup} duplicate token strings; tokenizer.json keeps the last id of each");
        }
        let pairs = match &self.kind {
            Kind::Bpe { merges, .. } => self.bpe_merges(merges),
            Kind::Spm { scores, .. } => self.spm_merges(scores),
        };
        // The "a b" string form is the most widely readable; tokens containing a space need
        // the [a, b] pair form (tokenizers >= 0.20).
        let any_space = pairs
            .iter()
            .any(|(a, b)| a.contains(' ') || b.contains(' '));
        let merges: Vec<Value> = if any_space {
            pairs.iter().map(|(a, b)| json!([a, b])).collect()
        } else {
            pairs
                .iter()
                .map(|(a, b)| json!(format!("{a} {b}")))
                .collect()
        };

        let added: Vec<Value> = (0..self.tokens.len())
            .filter(|&id| self.is_added(id))
            .map(|id| {
                json!({
                    "id": id,
                    "content": self.tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": self.is_special(id),
                })
            })
            .collect();

        let byte_level = matches!(self.kind, Kind::Bpe { .. });
        let post_processor = self.post_processor(byte_level);
        let unk = self.token(self.ids.unk);
        let (normalizer, pre_tokenizer, decoder, unk_token, byte_fallback, ignore_merges) =
            match &self.kind {
                Kind::Bpe { pre, .. } => (
                    pre.normalizer(),
                    pre.json(),
                    pre.byte_level_decoder(),
                    Value::Null,
                    false,
                    *pre == PreTokenizer::Llama3,
                ),
                Kind::Spm {
                    add_space_prefix, ..
                } => {
                    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
                    let mut decoders = vec![
                        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                        json!({"type": "ByteFallback"}),
                        json!({"type": "Fuse"}),
                    ];
                    let (normalizer, pre_tokenizer) = if *add_space_prefix {
                        // Llama 2 style: prepend "▁", no pre-tokenizer, strip it on decode.
                        decoders
                            .push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                        (
                            json!({"type": "Sequence", "normalizers": [
                                {"type": "Prepend", "prepend": "\u{2581}"}, replace
                            ]}),
                            Value::Null,
                        )
                    } else {
                        // Gemma style.
                        (
                            replace,
                            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
                        )
                    };
                    (
                        normalizer,
                        pre_tokenizer,
                        json!({"type": "Sequence", "decoders": decoders}),
                        json!(unk),
                        true,
                        false,
                    )
                }
            };

        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk_token,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": !byte_level,
                "byte_fallback": byte_fallback,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            }
        }))
    }

    /// GGUF merges ("a b" strings) as pairs, dropping malformed ones and ones that refer to
    /// tokens outside the vocabulary (the `tokenizers` crate would refuse the whole file).
    fn bpe_merges<'m>(&self, merges: &[&'m str]) -> Vec<(&'m str, &'m str)> {
        let known: HashSet<&str> = self.tokens.iter().copied().collect();
        let mut pairs = Vec::with_capacity(merges.len());
        let mut dropped = 0usize;
        for m in merges {
            // llama.cpp splits a merge at the first space after the first character.
            let split = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i);
            let Some(i) = split else {
                dropped += 1;
                continue;
            };
            let (a, b) = (&m[..i], &m[i + 1..]);
            let merged = format!("{a}{b}");
            if !known.contains(a) || !known.contains(b) || !known.contains(merged.as_str()) {
                dropped += 1;
                continue;
            }
            pairs.push((a, b));
        }
        if dropped > 0 {
            warn!(
                "dropped {dropped} of {} GGUF merges that are malformed or refer to tokens \
                 outside the vocabulary",
                merges.len()
            );
        }
        pairs
    }

    /// Merges of a SentencePiece BPE vocabulary, derived from the piece scores the way
    /// Hugging Face's converter does (`generate_merges`): every split of every piece into two
    /// vocabulary pieces is a merge ranked by the piece's score (higher first), ties broken by
    /// longer left part, then longer right part, then piece order and the parts' ids. Pieces
    /// that are not normal (control, user-defined, byte) score 0, as in the SentencePiece model
    /// (llama.cpp stored -1000 for them).
    fn spm_merges(&self, scores: &[f32]) -> Vec<(&str, &str)> {
        let ids: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, i))
            .collect();
        struct M<'s> {
            l: &'s str,
            r: &'s str,
            score: f32,
            len_l: usize,
            len_r: usize,
        }
        let mut merges: Vec<M<'_>> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.tokens.len());
        for (id, piece) in self.tokens.iter().enumerate() {
            // Like Python's dicts: a duplicated piece keeps its first position and the values
            // (id, score) of its last occurrence.
            if !seen.insert(piece) {
                continue;
            }
            let last = *ids.get(piece).unwrap_or(&id);
            let score = if self.types.get(last).copied() == Some(token_type::NORMAL) {
                scores.get(last).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            let mut local: Vec<(usize, usize, &str, &str)> = Vec::new();
            for (i, _) in piece.char_indices().skip(1) {
                let (l, r) = (&piece[..i], &piece[i..]);
                if let (Some(&il), Some(&ir)) = (ids.get(l), ids.get(r)) {
                    local.push((il, ir, l, r));
                }
            }
            local.sort_by_key(|&(il, ir, _, _)| (il, ir));
            merges.extend(local.into_iter().map(|(_, _, l, r)| M {
                l,
                r,
                score,
                len_l: l.chars().count(),
                len_r: r.chars().count(),
            }));
        }
        // Stable sort, descending (Python's `sorted(..., reverse=True)` keeps ties in order).
        merges.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.len_l.cmp(&a.len_l))
                .then(b.len_r.cmp(&a.len_r))
        });
        merges.into_iter().map(|m| (m.l, m.r)).collect()
    }

    fn post_processor(&self, byte_level: bool) -> Value {
        let byte_level_post = match &self.kind {
            Kind::Bpe { pre, .. } => pre.byte_level_post(),
            Kind::Spm { .. } => Value::Null,
        };
        let bos = self.token(self.ids.bos);
        let eos = self.token(self.ids.eos);
        let want_bos = self.add_bos && bos.is_some();
        let want_eos = self.add_eos && eos.is_some();
        if self.add_bos && bos.is_none() {
            warn!("GGUF asks to add a BOS token but has no valid tokenizer.ggml.bos_token_id; not adding one");
        }
        if self.add_eos && eos.is_none() {
            warn!("GGUF asks to add an EOS token but has no valid tokenizer.ggml.eos_token_id; not adding one");
        }
        if !want_bos && !want_eos {
            return if byte_level {
                byte_level_post
            } else {
                Value::Null
            };
        }
        let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
        let special =
            |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let part = |name: &str, type_id: u32| {
            let mut v = Vec::new();
            if let (true, Some(b)) = (want_bos, bos) {
                v.push(special(b, type_id));
            }
            v.push(seq(name, type_id));
            if let (true, Some(e)) = (want_eos, eos) {
                v.push(special(e, type_id));
            }
            v
        };
        let single = part("A", 0);
        let mut pair = part("A", 0);
        pair.extend(part("B", 1));
        let mut special_tokens = Map::new();
        for (want, tok, id) in [(want_bos, bos, self.ids.bos), (want_eos, eos, self.ids.eos)] {
            if let (true, Some(t), Some(id)) = (want, tok, id) {
                special_tokens.insert(t.to_owned(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        let template = json!({
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens
        });
        if byte_level {
            json!({"type": "Sequence", "processors": [byte_level_post, template]})
        } else {
            template
        }
    }

    fn tokenizer_config(&self, chat_template: Option<&str>, model_max_length: usize) -> Value {
        let mut decoder = Map::new();
        for id in (0..self.tokens.len()).filter(|&id| self.is_added(id)) {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": self.tokens[id],
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": self.is_special(id),
                }),
            );
        }
        let mut c = Map::new();
        c.insert("add_bos_token".into(), json!(self.add_bos));
        c.insert("add_eos_token".into(), json!(self.add_eos));
        c.insert("added_tokens_decoder".into(), Value::Object(decoder));
        c.insert("bos_token".into(), json!(self.token(self.ids.bos)));
        c.insert("eos_token".into(), json!(self.token(self.ids.eos)));
        c.insert("unk_token".into(), json!(self.token(self.ids.unk)));
        c.insert("pad_token".into(), json!(self.token(self.ids.pad)));
        if let Some(t) = chat_template {
            c.insert("chat_template".into(), json!(t));
        }
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        c.insert("model_max_length".into(), json!(model_max_length));
        c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        Value::Object(c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The GPT-2 byte→unicode table, to build a small byte-level vocabulary.
    pub(crate) fn byte_to_unicode() -> Vec<char> {
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut table = vec![' '; 256];
        for (b, c) in bs.iter().zip(cs) {
            table[*b as usize] = char::from_u32(c).unwrap();
        }
        table
    }

    /// A small SmolLM-like vocabulary: 3 control tokens, the 256 byte tokens, a few merges.
    pub(crate) fn tiny_vocab() -> (Vec<String>, Vec<i64>, Vec<String>) {
        let mut tokens = vec![
            "<|endoftext|>".to_owned(),
            "<|im_start|>".to_owned(),
            "<|im_end|>".to_owned(),
        ];
        let mut types = vec![token_type::CONTROL; 3];
        for c in byte_to_unicode() {
            tokens.push(c.to_string());
            types.push(token_type::NORMAL);
        }
        let merges = [
            "H e", "l l", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(token_type::NORMAL);
        }
        (
            tokens,
            types,
            merges.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn spec_json(pre: PreTokenizer, add_bos: bool) -> (Value, Value) {
        let (tokens, types, merges) = tiny_vocab();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        let ids = SpecialIds {
            bos: Some(1),
            eos: Some(2),
            eot: None,
            unk: Some(0),
            pad: Some(2),
        };
        let spec = Spec {
            tokens: &tokens,
            types: &types,
            kind: Kind::Bpe {
                merges: &merges,
                pre,
            },
            ids: &ids,
            add_bos,
            add_eos: false,
        };
        (
            spec.tokenizer_json().unwrap(),
            spec.tokenizer_config(Some("{{ x }}"), 2048),
        )
    }

    fn load(v: &Value) -> tokenizers::Tokenizer {
        use std::str::FromStr;
        tokenizers::Tokenizer::from_str(&v.to_string()).expect("tokenizers loads the json")
    }

    #[test]
    fn smollm_tokenizer_splits_digits_and_round_trips() {
        let (json, config) = spec_json(PreTokenizer::DigitsByteLevel, false);
        let tok = load(&json);
        let text = "Hello world 12345";
        let enc = tok.encode(text, true).unwrap();
        let pieces: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
        assert_eq!(pieces, ["Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5"]);
        let decoded = tok.decode(enc.get_ids(), false).unwrap();
        assert_eq!(decoded, text);
        // Special tokens are matched as a whole and skipped on request.
        let enc = tok.encode("<|im_start|>Hello<|im_end|>", false).unwrap();
        assert_eq!(enc.get_ids()[0], 1);
        assert_eq!(*enc.get_ids().last().unwrap(), 2);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "Hello");
        assert_eq!(config["bos_token"], "<|im_start|>");
        assert_eq!(config["unk_token"], "<|endoftext|>");
        assert_eq!(config["added_tokens_decoder"]["2"]["special"], true);
        assert_eq!(config["chat_template"], "{{ x }}");
    }

    #[test]
    fn bos_template_and_regex_pretokenizers_load() {
        let (json, _) = spec_json(PreTokenizer::Llama3, true);
        let tok = load(&json);
        let enc = tok.encode("Hello world", true).unwrap();
        assert_eq!(enc.get_ids()[0], 1, "BOS added");
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "Hello world");
        let enc = tok.encode("12345", false).unwrap();
        assert_eq!(enc.get_tokens(), ["12", "3", "4", "5"]); // \p{N}{1,3} then merges
        let (json, _) = spec_json(PreTokenizer::Qwen2, false);
        let tok = load(&json);
        let enc = tok.encode("Hello 12", true).unwrap();
        assert_eq!(enc.get_tokens(), ["Hello", "Ġ", "1", "2"]);
        let (json, _) = spec_json(PreTokenizer::ByteLevel, false);
        let enc = load(&json).encode("Hello 12", true).unwrap();
        assert_eq!(enc.get_tokens(), ["Hello", "Ġ", "12"]);
    }

    #[test]
    fn sentencepiece_merges_follow_scores_and_bytes_fall_back() {
        // <unk> <bos> <eos>, 256 byte tokens, then pieces with descending scores.
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<bos>".into(), "<eos>".into()];
        let mut types = vec![token_type::CONTROL; 3];
        let mut scores = vec![-1000.0f32; 3];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
        for (i, p) in ["▁", "a", "b", "c", "ab", "▁ab", "abc", "▁abc", "bc"]
            .iter()
            .enumerate()
        {
            tokens.push((*p).into());
            types.push(token_type::NORMAL);
            scores.push(-(i as f32));
        }
        // A user-defined run of spaces, written by llama.cpp with real spaces.
        tokens.push("▁▁".into());
        types.push(token_type::USER_DEFINED);
        scores.push(-1000.0);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let ids = SpecialIds {
            bos: Some(1),
            eos: Some(2),
            eot: None,
            unk: Some(0),
            pad: None,
        };
        for add_space_prefix in [false, true] {
            let spec = Spec {
                tokens: &refs,
                types: &types,
                kind: Kind::Spm {
                    scores: &scores,
                    add_space_prefix,
                },
                ids: &ids,
                add_bos: true,
                add_eos: false,
            };
            let json = spec.tokenizer_json().unwrap();
            let merges: Vec<&str> = json["model"]["merges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .collect();
            // Score 0 first (▁▁ is user-defined → 0), then by score: ab, ▁ab (▁ + ab),
            // abc (longer left part first: ab + c, a + bc), ▁abc (▁ab + c, ▁ + abc), bc.
            assert_eq!(
                merges,
                ["▁ ▁", "a b", "▁ ab", "ab c", "a bc", "▁ab c", "▁ abc", "b c"]
            );
            let tok = load(&json);
            let enc = tok.encode("abc ab é", true).unwrap();
            let pieces: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
            let expected: Vec<&str> = if add_space_prefix {
                vec!["<bos>", "▁abc", "▁ab", "▁", "<0xC3>", "<0xA9>"]
            } else {
                vec!["<bos>", "abc", "▁ab", "▁", "<0xC3>", "<0xA9>"]
            };
            assert_eq!(pieces, expected);
            assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "abc ab é");
        }
    }

    #[test]
    fn pre_tokenizer_choice() {
        assert_eq!(
            PreTokenizer::from_gguf(Some("smollm"), &[]),
            PreTokenizer::DigitsByteLevel
        );
        assert_eq!(
            PreTokenizer::from_gguf(Some("qwen2"), &[]),
            PreTokenizer::Qwen2
        );
        assert_eq!(
            PreTokenizer::from_gguf(Some("llama-bpe"), &[]),
            PreTokenizer::Llama3
        );
        assert_eq!(
            PreTokenizer::from_gguf(Some("???"), &["a"]),
            PreTokenizer::ByteLevel
        );
    }
}
