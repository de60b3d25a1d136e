//! The constraint module on the real SmolLM2 tokenizer (built from the test model's GGUF
//! like `cargo rmlx build` builds it): masks allow exactly the valid continuations.

use std::sync::OnceLock;

use serde_json::json;

use super::*;
use crate::gguf::tokenizer::TokenizerFiles;
use crate::gguf::GgufFile;

const VOCAB: usize = 49152;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = rmlx_test_support::models_dir().join(rmlx_test_support::SMOLLM2_GGUF);
        let gguf = GgufFile::open(&path).unwrap_or_else(|e| {
            panic!(
                "the SmolLM2 test model is needed ({}; `bash scripts/fetch-models.sh` \
                 installs it): {e:?}",
                path.display()
            )
        });
        let files = TokenizerFiles::from_gguf(&gguf, 8192).expect("tokenizer from GGUF");
        let json = serde_json::to_vec(&files.tokenizer_json).expect("tokenizer.json");
        Tokenizer::from_parts(&json, Some(files.tokenizer_config), &path).expect("tokenizer")
    })
}

fn env() -> &'static GuideEnv {
    static ENV: OnceLock<GuideEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let tok = tokenizer();
        GuideEnv::new(tok, VOCAB, &tok.eos_ids(&[])).expect("token environment")
    })
}

fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).expect("encode")
}

fn text(id: u32) -> String {
    tokenizer().decode(&[id], false).expect("decode")
}

/// The ids the guide allows now.
fn allowed(guide: &mut Guide) -> Vec<u32> {
    let mut logits = vec![0.0f32; VOCAB];
    assert_eq!(guide.mask(&mut logits), Masked::Open);
    (0..VOCAB as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect()
}

/// Commits `text`'s tokens one by one, each checked against the mask first.
fn walk(guide: &mut Guide, text: &str) {
    for id in ids(text) {
        assert!(
            allowed(guide).contains(&id),
            "{:?} (id {id}) of {text:?} is masked",
            self::text(id)
        );
        assert_eq!(guide.commit(id), Masked::Open);
    }
}

fn eos_allowed(guide: &mut Guide) -> bool {
    let eos = tokenizer().eos_ids(&[]);
    allowed(guide).iter().any(|id| eos.contains(id))
}

#[test]
fn json_schema_mask_allows_only_valid_continuations() {
    let schema = json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green"]},
            "n": {"type": "integer"}
        },
        "required": ["color", "n"],
        "additionalProperties": false
    });
    let c = env().compile(&ConstraintSpec::JsonSchema(schema)).unwrap();
    let mut g = c.start();
    let first: Vec<String> = allowed(&mut g).into_iter().map(text).collect();
    assert!(
        first
            .iter()
            .all(|t| "{\"color\": \"".starts_with(t.as_str())),
        "{first:?}"
    );
    assert!(!eos_allowed(&mut g), "EOS before the object is complete");
    walk(&mut g, "{\"color\": \"");
    let tail = ["red\", \"n\": ", "green\", \"n\": "];
    let values: Vec<String> = allowed(&mut g).into_iter().map(text).collect();
    assert!(!values.is_empty());
    for t in &values {
        assert!(
            tail.iter().any(|v| v.starts_with(t.as_str())),
            "{t:?} allowed in the enum"
        );
    }
    walk(&mut g, "green\", \"n\": 42");
    assert!(!eos_allowed(&mut g), "EOS inside the object");
    walk(&mut g, "}");
    assert!(
        g.is_finished() || eos_allowed(&mut g),
        "complete object accepts EOS"
    );
}

#[test]
fn regex_mask_allows_only_digits_first() {
    // `[0-9]`, not `\d`: Rust's `\d` is any Unicode digit, whose first bytes are allowed too.
    let c = env()
        .compile(&ConstraintSpec::Regex("[0-9]{3}-[a-z]+".into()))
        .unwrap();
    let mut g = c.start();
    let first: Vec<String> = allowed(&mut g).into_iter().map(text).collect();
    assert!(!first.is_empty());
    assert!(
        first.iter().all(|t| t.chars().all(|c| c.is_ascii_digit())),
        "{first:?}"
    );
    walk(&mut g, "123-abc");
    assert!(eos_allowed(&mut g));
}

#[test]
fn a_forbidden_token_is_a_dead_end() {
    let c = env().compile(&ConstraintSpec::JsonObject).unwrap();
    let mut g = c.start();
    let hello = ids("Hello")[0];
    assert!(!allowed(&mut g).contains(&hello));
    assert!(matches!(g.commit(hello), Masked::DeadEnd(_)));
}

#[test]
fn invalid_constraints_name_the_problem() {
    for spec in [
        ConstraintSpec::Regex("(unclosed".into()),
        ConstraintSpec::JsonSchema(json!({"type": "no-such-type"})),
        ConstraintSpec::Lark("start: undefined_rule".into()),
    ] {
        let e = env().compile(&spec).unwrap_err();
        assert_eq!(e.code, "rmlx::constrain::invalid", "{spec:?}");
        assert!(e
            .message
            .starts_with(&format!("invalid {} constraint: ", spec.kind())));
        assert!(e.message.len() > 30, "llguidance's reason: {}", e.message);
    }
}

#[test]
fn forbid_unset_masks_by_bit() {
    let mut logits = vec![1.0f32; 40];
    forbid_unset(&[0b101, 0b1], &mut logits);
    let open: Vec<usize> = (0..40).filter(|&i| logits[i].is_finite()).collect();
    assert_eq!(open, [0, 2, 32]);
}
