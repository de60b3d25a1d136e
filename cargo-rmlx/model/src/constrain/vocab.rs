//! The token environment llguidance needs, built from our [`Tokenizer`]: every token id of
//! the model's vocabulary as the bytes it decodes to (byte-level BPE pieces mapped back
//! through the GPT-2 byte alphabet; SentencePiece pieces with `▁` as a space and `<0xNN>`
//! byte tokens; special tokens behind llguidance's marker byte so no grammar text can
//! produce them), the EOS set, and a tokenize function for the strings a grammar forces.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::tokenize::Tokenizer;

/// How a vocabulary's pieces spell bytes (read from the tokenizer's decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spelling {
    /// GPT-2 byte-level BPE: every byte is one printable character.
    ByteLevel,
    /// SentencePiece-style: `▁` (or the decoder's replaced character) is a space,
    /// `<0xNN>` tokens are single bytes.
    ByteFallback {
        /// The character the decoder turns into a space.
        space: char,
    },
}

/// The spelling of `tok`'s pieces, from its decoder's configuration.
fn spelling(tok: &Tokenizer) -> Result<Spelling> {
    let decoder = serde_json::to_value(tok.inner().get_decoder()).unwrap_or_default();
    let text = decoder.to_string();
    if text.contains("\"ByteLevel\"") {
        return Ok(Spelling::ByteLevel);
    }
    if text.contains("\"ByteFallback\"") {
        let space = replaced_space(&decoder).unwrap_or('▁');
        return Ok(Spelling::ByteFallback { space });
    }
    Err(Diagnostic::error(
        code::Constrain::Tokenizer,
        format!(
            "structured output needs a byte-level or byte-fallback tokenizer; this one's \
             decoder is {}",
            decoder
        ),
    )
    .with_file(tok.dir().join("tokenizer.json")))
}

/// The character a `Replace` decoder step turns into a space (`▁` in SentencePiece).
fn replaced_space(decoder: &serde_json::Value) -> Option<char> {
    let steps = decoder.get("decoders")?.as_array()?;
    steps.iter().find_map(|d| {
        let is_space = d.get("type")?.as_str()? == "Replace" && d.get("content")? == " ";
        let pattern = d.get("pattern")?.get("String")?.as_str()?;
        let mut chars = pattern.chars();
        match (is_space, chars.next(), chars.next()) {
            (true, Some(c), None) => Some(c),
            _ => None,
        }
    })
}

/// GPT-2's byte alphabet reversed: printable character → byte.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut out = HashMap::with_capacity(256);
    let mut shifted = 0x100u32;
    for byte in 0..=255u8 {
        let c = byte as char;
        let printable = matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}');
        if printable {
            out.insert(c, byte);
        } else {
            out.insert(char::from_u32(shifted).unwrap_or(c), byte);
            shifted += 1;
        }
    }
    out
}

/// The bytes one vocabulary piece stands for, `None` when it spells no bytes (a byte-level
/// piece with a character outside the alphabet).
fn piece_bytes(piece: &str, spelling: Spelling, alphabet: &HashMap<char, u8>) -> Option<Vec<u8>> {
    match spelling {
        Spelling::ByteLevel => piece.chars().map(|c| alphabet.get(&c).copied()).collect(),
        Spelling::ByteFallback { space } => {
            let hex = piece
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .filter(|h| h.len() == 2);
            match hex.map(|h| u8::from_str_radix(h, 16)) {
                Some(Ok(b)) => Some(vec![b]),
                _ => Some(piece.replace(space, " ").into_bytes()),
            }
        }
    }
}

/// Every token id below `vocab_size` as bytes. Ids the tokenizer does not know (the
/// model's padding rows) become special-marked names nothing can produce.
pub(crate) fn token_bytes(tok: &Tokenizer, vocab_size: usize) -> Result<Vec<Vec<u8>>> {
    let spelling = spelling(tok)?;
    let alphabet = byte_level_alphabet();
    let added = tok.inner().get_added_tokens_decoder();
    let named: HashSet<&str> = tok
        .special_tokens()
        .values()
        .chain(tok.additional_special_tokens())
        .map(String::as_str)
        .collect();
    let mut unspellable = 0usize;
    let words = (0..vocab_size as u32)
        .map(|id| {
            let marked = |name: &str| {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(name.as_bytes());
                b
            };
            if let Some(a) = added.get(&id) {
                return if a.special || named.contains(a.content.as_str()) {
                    marked(&a.content)
                } else {
                    a.content.clone().into_bytes()
                };
            }
            match tok.id_to_piece(id) {
                Some(piece) => piece_bytes(&piece, spelling, &alphabet).unwrap_or_else(|| {
                    unspellable += 1;
                    marked(&format!("<[{id}]>"))
                }),
                None => marked(&format!("<[{id}]>")),
            }
        })
        .collect();
    if unspellable > 0 {
        tracing::warn!(
            "{unspellable} vocabulary pieces spell no bytes in the {spelling:?} alphabet: \
             structured output never picks them"
        );
    }
    Ok(words)
}

/// llguidance's view of a tokenizer: the trie and a tokenize function.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            match self.tokenizer.encode(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(e) => {
                    tracing::debug!("tokenizing {text:?} for a grammar failed ({e}); greedy");
                    self.trie.greedy_tokenize(text.as_bytes())
                }
            }
        })
    }
}

/// The token environment of `tok` for a model with `vocab_size` logits and these EOS ids.
pub(crate) fn tok_env(tok: &Tokenizer, vocab_size: usize, eos_ids: &[u32]) -> Result<TokEnv> {
    let words = token_bytes(tok, vocab_size)?;
    let Some((&first_eos, _)) = eos_ids.split_first() else {
        return Err(Diagnostic::error(
            code::Constrain::Tokenizer,
            "structured output needs an EOS token; the model and tokenizer declare none",
        ));
    };
    if let Some(bad) = eos_ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(Diagnostic::error(
            code::Constrain::Tokenizer,
            format!("EOS id {bad} is outside the model's vocabulary ({vocab_size})"),
        ));
    }
    let info = TokRxInfo::new(vocab_size as u32, first_eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
    Ok(Arc::new(Env {
        trie,
        tokenizer: tok.inner().clone(),
    }))
}
