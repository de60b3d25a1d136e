//! The tokenizer of a model directory: [`Tokenizer`] wraps the `tokenizers` crate
//! (`tokenizer.json`) together with `tokenizer_config.json` (and `special_tokens_map.json`).
//!
//! This module owns: loading those files, the special-token map handed to chat templates,
//! the canonical BOS resolution chain ([`Tokenizer::resolve_bos`], DESIGN.md: `bos_token`
//! from `tokenizer_config.json` → `<bos>` → `<|im_start|>` → `eos_token` → `<|endoftext|>`,
//! never a hard-coded id), the EOS id set ([`Tokenizer::eos_ids`], [`parse_token_ids`]),
//! encode/decode, raw vocabulary pieces, and incremental detokenization for streaming
//! ([`StreamDecoder`]). Every fallback is logged with `tracing` together with its reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::diagnostic::{code, Code, Diagnostic, Result};

/// Diagnostic code for every failure to load or use a tokenizer.
pub const CODE_LOAD: Code = Code::Tokenize(code::Tokenize::Load);
/// Diagnostic code for an encode/decode failure at run time.
pub const CODE_ENCODE: Code = Code::Tokenize(code::Tokenize::Encode);

/// Which rule of the BOS chain chose the BOS token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BosRule {
    /// `bos_token` of `tokenizer_config.json` (or `special_tokens_map.json`).
    ConfigBosToken,
    /// The literal `<bos>` (Gemma).
    LiteralBos,
    /// The literal `<|im_start|>` (ChatML models without a BOS).
    ImStart,
    /// `eos_token` of `tokenizer_config.json`.
    ConfigEosToken,
    /// The literal `<|endoftext|>` (GPT-2 style vocabularies).
    EndOfText,
}

impl BosRule {
    /// Stable short name, for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BosRule::ConfigBosToken => "tokenizer_config bos_token",
            BosRule::LiteralBos => "<bos>",
            BosRule::ImStart => "<|im_start|>",
            BosRule::ConfigEosToken => "tokenizer_config eos_token",
            BosRule::EndOfText => "<|endoftext|>",
        }
    }
}

impl fmt::Display for BosRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The BOS token chosen by [`Tokenizer::resolve_bos`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BosToken {
    /// The token text, e.g. `<|im_start|>`.
    pub token: String,
    /// Its id in the vocabulary.
    pub id: u32,
    /// The rule of the chain that chose it.
    pub rule: BosRule,
}

/// A loaded tokenizer plus its configuration. See the module documentation.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// A copy of `inner` that encodes special-token strings as plain text, made on first use
    /// by [`Tokenizer::encode_with_literal_spans`].
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
    dir: PathBuf,
    /// name → token text, from tokenizer_config.json / special_tokens_map.json.
    special: BTreeMap<String, String>,
    additional_special: Vec<String>,
    /// The raw tokenizer_config.json, when present.
    config: Option<serde_json::Value>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `model_dir`, and `tokenizer_config.json` /
    /// `special_tokens_map.json` when present.
    pub fn from_dir(model_dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = model_dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path)
            .map_err(|e| Diagnostic::io(CODE_LOAD, "cannot read", &tok_path, &e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Diagnostic::error(
                CODE_LOAD,
                format!("cannot parse {}: {e}", tok_path.display()),
            )
            .with_file(&tok_path)
            .with_help("tokenizer.json must be a Hugging Face `tokenizers` file")
        })?;
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let map = read_json_opt(&dir.join("special_tokens_map.json"))?;
        if config.is_none() {
            info!(
                dir = %dir.display(),
                "no tokenizer_config.json: special-token map and BOS chain use the vocabulary only"
            );
        }
        Ok(Self::assemble(inner, dir.to_path_buf(), config, map))
    }

    /// Builds a tokenizer from in-memory parts (`tokenizer.json` bytes and an optional
    /// `tokenizer_config.json` value). `origin` names them in errors.
    pub fn from_parts(
        tokenizer_json: &[u8],
        tokenizer_config: Option<serde_json::Value>,
        origin: impl AsRef<Path>,
    ) -> Result<Tokenizer> {
        let origin = origin.as_ref();
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| {
            Diagnostic::error(
                CODE_LOAD,
                format!("cannot parse tokenizer of {}: {e}", origin.display()),
            )
            .with_file(origin)
        })?;
        Ok(Self::assemble(
            inner,
            origin.to_path_buf(),
            tokenizer_config,
            None,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        dir: PathBuf,
        config: Option<serde_json::Value>,
        map: Option<serde_json::Value>,
    ) -> Tokenizer {
        let mut special = BTreeMap::new();
        let mut additional_special = Vec::new();
        // special_tokens_map.json first, tokenizer_config.json overrides (transformers merges
        // both; the config is the newer source of truth).
        for src in [map.as_ref(), config.as_ref()].into_iter().flatten() {
            let (s, a) = parse_special_tokens(src);
            special.extend(s);
            if !a.is_empty() {
                additional_special = a;
            }
        }
        Tokenizer {
            inner,
            literal: std::sync::OnceLock::new(),
            dir,
            special,
            additional_special,
            config,
        }
    }

    /// The directory (or origin) this tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The raw `tokenizer_config.json`, when there was one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// Every special token named in the config (`bos_token`, `eos_token`, `unk_token`,
    /// `pad_token` and any other `*_token` key whose value is a string or `{"content": …}`),
    /// as name → token text. These are template variables.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special
    }

    /// `additional_special_tokens` of the config (strings or `{content}` objects).
    pub fn additional_special_tokens(&self) -> &[String] {
        &self.additional_special
    }

    /// The id of a token string, when it is in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The canonical BOS chain (DESIGN.md): `bos_token` from the config → `<bos>` →
    /// `<|im_start|>` → `eos_token` → `<|endoftext|>`; the first present in the vocabulary.
    /// Logs which rule chose it and why earlier rules were skipped. `None` (logged as a
    /// warning) when no rule matches.
    pub fn resolve_bos(&self) -> Option<BosToken> {
        let candidates: [(BosRule, Option<&str>); 5] = [
            (
                BosRule::ConfigBosToken,
                self.special.get("bos_token").map(String::as_str),
            ),
            (BosRule::LiteralBos, Some("<bos>")),
            (BosRule::ImStart, Some("<|im_start|>")),
            (
                BosRule::ConfigEosToken,
                self.special.get("eos_token").map(String::as_str),
            ),
            (BosRule::EndOfText, Some("<|endoftext|>")),
        ];
        for (rule, token) in candidates {
            let Some(token) = token else {
                debug!(rule = %rule, "BOS chain: rule skipped, the config names no such token");
                continue;
            };
            match self.inner.token_to_id(token) {
                Some(id) => {
                    if rule == BosRule::ConfigBosToken {
                        debug!(token, id, "BOS chain: bos_token from the config");
                    } else {
                        info!(
                            token,
                            id,
                            rule = %rule,
                            "BOS chain fell back: no usable bos_token in the config"
                        );
                    }
                    return Some(BosToken {
                        token: token.to_string(),
                        id,
                        rule,
                    });
                }
                None => {
                    if rule == BosRule::ConfigBosToken {
                        warn!(
                            token,
                            "BOS chain: the config's bos_token is not in the vocabulary; trying fallbacks"
                        );
                    } else {
                        debug!(token, rule = %rule, "BOS chain: not in the vocabulary");
                    }
                }
            }
        }
        warn!(dir = %self.dir.display(), "BOS chain: no rule matched; no BOS token");
        None
    }

    /// The id of the config's `eos_token`, when it is in the vocabulary.
    pub fn eos_token_id(&self) -> Option<u32> {
        let tok = self.special.get("eos_token")?;
        let id = self.inner.token_to_id(tok);
        if id.is_none() {
            warn!(token = %tok, "eos_token of the config is not in the vocabulary");
        }
        id
    }

    /// The EOS id set: the config's `eos_token` id followed by `extra` (ids from
    /// `generation_config.json` / `config.json` `eos_token_id`, see [`crate::snapshot::config::token_ids`]),
    /// deduplicated, in that order.
    pub fn eos_ids(&self, extra: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        for id in self.eos_token_id().into_iter().chain(extra.iter().copied()) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        if out.is_empty() {
            warn!(dir = %self.dir.display(), "no EOS id: generation stops only at the token limit");
        }
        out
    }

    /// Encodes `text`. `add_special_tokens` follows `tokenizers`: rendered chat prompts are
    /// encoded with `false`, plain prompts with `true` (the tokenizer's default).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| {
                Diagnostic::error(CODE_ENCODE, format!("cannot encode text: {e}"))
                    .with_file(self.dir.join("tokenizer.json"))
            })
    }

    /// The strings that encode to control tokens: added tokens flagged special, and the
    /// config's special tokens that are in the vocabulary. Sorted, longest first (so a scan
    /// prefers `<|im_start|>` over a shorter token that is its prefix).
    pub fn control_strings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        for s in self.special.values().chain(&self.additional_special) {
            if !s.is_empty() && self.inner.token_to_id(s).is_some() {
                out.push(s.clone());
            }
        }
        out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        out.dedup();
        out
    }

    /// Encodes `text` without adding special tokens, like `encode(text, false)`, except that a
    /// control token found inside one of the byte ranges `literal` is replaced by the ids of
    /// its string encoded as plain text. Everything outside those ranges, and every ordinary
    /// token inside them, is exactly what `encode(text, false)` gives (control tokens always
    /// split the input, so replacing one changes none of its neighbours).
    pub fn encode_with_literal_spans(
        &self,
        text: &str,
        literal: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>> {
        let err = |e: tokenizers::Error| {
            Diagnostic::error(CODE_ENCODE, format!("cannot encode text: {e}"))
                .with_file(self.dir.join("tokenizer.json"))
        };
        let enc = self.inner.encode(text, false).map_err(err)?;
        let control = self.inner.get_added_tokens_decoder();
        let mut out = Vec::with_capacity(enc.get_ids().len());
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            let is_control = control.get(&id).is_some_and(|t| t.special);
            let inside = literal.iter().any(|r| r.start <= start && end <= r.end);
            match text.get(start..end) {
                Some(piece) if is_control && inside => {
                    let as_text = self.literal_tokenizer().encode(piece, false).map_err(err)?;
                    out.extend_from_slice(as_text.get_ids());
                }
                _ => out.push(id),
            }
        }
        Ok(out)
    }

    fn literal_tokenizer(&self) -> &tokenizers::Tokenizer {
        self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// Decodes `ids` to text, optionally skipping special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| {
            Diagnostic::error(CODE_ENCODE, format!("cannot decode ids: {e}"))
                .with_file(self.dir.join("tokenizer.json"))
        })
    }

    /// The raw vocabulary piece of `id` (e.g. `Ġthe`, `▁the`, `<|im_end|>`), no decoding.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Is `id` a special token (an added token flagged special, or one named in the config)?
    pub fn is_special(&self, id: u32) -> bool {
        if let Some(t) = self.inner.get_added_tokens_decoder().get(&id) {
            if t.special {
                return true;
            }
        }
        match self.inner.id_to_token(id) {
            Some(piece) => {
                self.special.values().any(|s| *s == piece)
                    || self.additional_special.contains(&piece)
            }
            None => false,
        }
    }

    /// A fresh streaming detokenizer for this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(skip_special)
    }
}

/// Reads `path` as JSON when it exists; a missing file is `None`, a bad one an error.
fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Diagnostic::io(CODE_LOAD, "cannot read", path, &e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        let offset = crate::diagnostic::offset_at(&text, e.line(), e.column());
        Diagnostic::error(CODE_LOAD, format!("cannot parse {}: {e}", path.display()))
            .with_file(path)
            .with_source(text.as_str())
            .with_span(offset..offset, "here")
    })
}

/// A token value: a string or an object with `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Extracts `*_token` entries and `additional_special_tokens` from a config object.
pub fn parse_special_tokens(config: &serde_json::Value) -> (BTreeMap<String, String>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut additional = Vec::new();
    let Some(obj) = config.as_object() else {
        warn!("tokenizer config is not a JSON object; no special tokens read from it");
        return (map, additional);
    };
    for (key, value) in obj {
        if key == "additional_special_tokens" {
            if let Some(items) = value.as_array() {
                additional = items.iter().filter_map(token_text).collect();
            }
            continue;
        }
        if !key.ends_with("_token") {
            continue;
        }
        // `add_bos_token: true` and `bos_token: null` are not tokens.
        if let Some(text) = token_text(value) {
            map.insert(key.clone(), text);
        }
    }
    (map, additional)
}

/// Incremental detokenizer: push ids as they are generated, get back only text that is
/// complete UTF-8 and will not change when more tokens arrive.
///
/// Uses the prefix-window method (as text-generation-inference and `tokenizers`'
/// `DecodeStream`): decode a few tokens of left context with and without the new ones and
/// emit the difference, unless it ends in an incomplete character (U+FFFD).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl StreamDecoder {
    /// A decoder with no tokens yet.
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }

    /// Adds one id; returns the newly completed text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.emit(tok, false)
    }

    /// Emits whatever is pending (possibly with U+FFFD for an incomplete character) and
    /// resets the window. Call at the end of the stream.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        if self.read >= self.ids.len() {
            return Ok(None);
        }
        self.emit(tok, true)
    }

    fn emit(&mut self, tok: &Tokenizer, force: bool) -> Result<Option<String>> {
        let prefix_text = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let new_text = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if new_text.len() <= prefix_text.len() && !force {
            return Ok(None);
        }
        if new_text.ends_with('\u{FFFD}') && !force {
            return Ok(None);
        }
        let out = match new_text.get(prefix_text.len()..) {
            Some(rest) if new_text.starts_with(&prefix_text) => rest.to_string(),
            _ => {
                // The decoder rewrote the left context (rare): emit past the common prefix.
                let common = new_text
                    .char_indices()
                    .zip(prefix_text.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, c), _)| i + c.len_utf8());
                debug!("stream decoder: left context changed; emitting past the common prefix");
                new_text[common..].to_string()
            }
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        // Keep the window small: nothing before `prefix` is needed again.
        if self.prefix > 0 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny WordLevel tokenizer with a whitespace pre-tokenizer and some added tokens.
    fn tokenizer_json(vocab: &[&str], added: &[(&str, bool)]) -> Vec<u8> {
        let mut v = serde_json::Map::new();
        for (i, w) in vocab.iter().enumerate() {
            v.insert(w.to_string(), json!(i));
        }
        let added: Vec<_> = added
            .iter()
            .enumerate()
            .map(|(i, (c, special))| {
                json!({"id": vocab.len() + i, "content": c, "single_word": false,
                       "lstrip": false, "rstrip": false, "normalized": false,
                       "special": special})
            })
            .collect();
        serde_json::to_vec(&json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
            "model": {"type": "WordLevel", "vocab": v, "unk_token": "[UNK]"}
        }))
        .unwrap()
    }

    fn tok(added: &[(&str, bool)], config: Option<serde_json::Value>) -> Tokenizer {
        let bytes = tokenizer_json(&["[UNK]", "hello", "world", "."], added);
        Tokenizer::from_parts(&bytes, config, "test").unwrap()
    }

    #[test]
    fn special_tokens_string_and_content_forms() {
        let cfg = json!({
            "add_bos_token": true,
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "lstrip": false},
            "pad_token": null,
            "unk_token": {"content": "[UNK]"},
            "image_token": "<img>",
            "additional_special_tokens": ["<a>", {"content": "<b>"}],
            "model_max_length": 10
        });
        let t = tok(&[("<s>", true), ("</s>", true)], Some(cfg));
        let s = t.special_tokens();
        assert_eq!(s.get("bos_token").map(String::as_str), Some("<s>"));
        assert_eq!(s.get("eos_token").map(String::as_str), Some("</s>"));
        assert_eq!(s.get("unk_token").map(String::as_str), Some("[UNK]"));
        assert_eq!(s.get("image_token").map(String::as_str), Some("<img>"));
        assert!(!s.contains_key("pad_token"));
        assert!(!s.contains_key("add_bos_token"));
        assert_eq!(t.additional_special_tokens(), ["<a>", "<b>"]);
    }

    #[test]
    fn bos_chain_rules() {
        // 1. config bos_token present in the vocabulary
        let t = tok(
            &[("<s>", true), ("<bos>", true)],
            Some(json!({"bos_token": "<s>"})),
        );
        let b = t.resolve_bos().unwrap();
        assert_eq!(
            (b.token.as_str(), b.id, b.rule),
            ("<s>", 4, BosRule::ConfigBosToken)
        );

        // 2. config bos_token missing from the vocabulary → <bos>
        let t = tok(&[("<bos>", true)], Some(json!({"bos_token": "<nope>"})));
        let b = t.resolve_bos().unwrap();
        assert_eq!((b.token.as_str(), b.rule), ("<bos>", BosRule::LiteralBos));

        // 3. <|im_start|> (Qwen: bos_token null)
        let t = tok(
            &[
                ("<|im_start|>", true),
                ("<|im_end|>", true),
                ("<|endoftext|>", true),
            ],
            Some(json!({"bos_token": null, "eos_token": "<|im_end|>"})),
        );
        let b = t.resolve_bos().unwrap();
        assert_eq!(
            (b.token.as_str(), b.id, b.rule),
            ("<|im_start|>", 4, BosRule::ImStart)
        );

        // 4. eos_token
        let t = tok(
            &[("</s>", true), ("<|endoftext|>", true)],
            Some(json!({"eos_token": "</s>"})),
        );
        let b = t.resolve_bos().unwrap();
        assert_eq!(
            (b.token.as_str(), b.rule),
            ("</s>", BosRule::ConfigEosToken)
        );

        // 5. <|endoftext|>, no config at all
        let t = tok(&[("<|endoftext|>", true)], None);
        let b = t.resolve_bos().unwrap();
        assert_eq!(
            (b.token.as_str(), b.id, b.rule),
            ("<|endoftext|>", 4, BosRule::EndOfText)
        );

        // nothing
        assert!(tok(&[], None).resolve_bos().is_none());
    }

    #[test]
    fn eos_ids_deduplicate_after_the_config_eos() {
        let t = tok(
            &[("</s>", true), ("<eot>", true)],
            Some(json!({"eos_token": "</s>"})),
        );
        assert_eq!(t.eos_ids(&[5, 4, 5]), vec![4, 5]);
    }

    #[test]
    fn encode_decode_pieces_special() {
        let t = tok(
            &[("<s>", true), ("<x>", false)],
            Some(json!({"bos_token": "<s>"})),
        );
        let ids = t.encode("<s>hello world .", false).unwrap();
        assert_eq!(ids, vec![4, 1, 2, 3]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello world .");
        assert_eq!(t.id_to_piece(1).as_deref(), Some("hello"));
        assert_eq!(t.id_to_piece(99), None);
        assert_eq!(t.vocab_size(), 6);
        assert!(t.is_special(4));
        assert!(!t.is_special(5));
        assert!(!t.is_special(1));
        assert_eq!(t.token_to_id("<x>"), Some(5));
    }

    #[test]
    fn from_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err();
        assert_eq!(err.code, CODE_LOAD);
        assert!(err.message.contains("tokenizer.json"), "{}", err.message);

        std::fs::write(
            dir.path().join("tokenizer.json"),
            tokenizer_json(&["a"], &[]),
        )
        .unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{ bad").unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(
            err.message.contains("tokenizer_config.json"),
            "{}",
            err.message
        );

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "a"}}"#,
        )
        .unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.eos_token_id(), Some(0));
    }

    #[test]
    fn literal_spans_encode_control_tokens_as_text() {
        let t = tok(
            &[("<s>", true), ("<x>", false)],
            Some(json!({"eos_token": "<s>"})),
        );
        assert_eq!(t.control_strings(), vec!["<s>".to_string()]);
        let text = "hello <s> world <s> <x>";
        assert_eq!(t.encode(text, false).unwrap(), vec![1, 4, 2, 4, 5]);
        // The first `<s>` (bytes 6..9) is literal: "<", "s", ">" are unknown words.
        let ids = t
            .encode_with_literal_spans(text, std::slice::from_ref(&(6..9)))
            .unwrap();
        assert_eq!(ids, vec![1, 0, 0, 0, 2, 4, 5]);
        // A non-control added token stays a token; no spans: the plain encoding.
        assert_eq!(
            t.encode_with_literal_spans(text, std::slice::from_ref(&(20..23)))
                .unwrap(),
            vec![1, 4, 2, 4, 5]
        );
        assert_eq!(
            t.encode_with_literal_spans(text, &[]).unwrap(),
            vec![1, 4, 2, 4, 5]
        );
    }

    /// Byte-level BPE vocabulary where "é" (0xC3 0xA9) is split over two tokens.
    fn byte_level() -> Tokenizer {
        // GPT-2 byte-to-unicode: 0xC3 → 'Ã', 0xA9 → '©', space → 'Ġ'.
        let vocab = json!({"a": 0, "Ã": 1, "©": 2, "Ġ": 3, "b": 4, "Ġb": 5});
        let j = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": ["Ġ b"]}
        });
        Tokenizer::from_parts(&serde_json::to_vec(&j).unwrap(), None, "bl").unwrap()
    }

    #[test]
    fn stream_decoder_emits_complete_utf8_only() {
        let t = byte_level();
        let ids = t.encode("aé b", false).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 5]);
        let mut d = t.stream_decoder(false);
        let mut out = Vec::new();
        for id in &ids {
            out.push(d.push(&t, *id).unwrap());
        }
        assert_eq!(
            out,
            vec![
                Some("a".to_string()),
                None,
                Some("é".to_string()),
                Some(" b".to_string())
            ]
        );
        assert_eq!(d.flush(&t).unwrap(), None);

        // An incomplete character at the end comes out on flush.
        let mut d = t.stream_decoder(false);
        assert_eq!(d.push(&t, 1).unwrap(), None);
        assert_eq!(d.flush(&t).unwrap().as_deref(), Some("\u{FFFD}"));
    }
}
