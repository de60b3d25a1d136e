//! Mutation fuzzing of the files a model directory and a project hold (test-only): the shared
//! harness — proptest mutations of a real-shaped input (bit flips, byte writes, truncations,
//! insertions, removals, huge integers written over binary fields, digit runs of text formats
//! replaced by huge or negative numbers), the case count, and an allocation guard — plus the
//! config.json and safetensors-header fuzzers. The GGUF reader and importer are fuzzed in
//! `gguf::fuzz`, rmlx.toml in `manifest::fuzz`.
//!
//! The property everywhere: the parser returns `Ok` or a `Diagnostic` (whose span, if any, lies
//! inside the text and renders with miette), never panics, and never asks for one allocation
//! larger than [`ALLOC_LIMIT`] (the guard turns such a request into an abort that names its
//! size, so a size field trusted before it is checked fails the run).
//!
//! A smoke run of [`SMOKE_CASES`] cases per fuzzer is part of `cargo test`; a long run:
//! `RMLX_FUZZ_CASES=20000 cargo test -p cargo-rmlx --lib fuzz -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::diagnostic::Diagnostic;

/// Cases per fuzzer in the smoke run inside `cargo test`.
pub const SMOKE_CASES: u32 = 96;

/// The largest single allocation a fuzz case may ask for. Inputs are at most a few hundred
/// kilobytes; anything near this is a size taken from the input without a check.
pub const ALLOC_LIMIT: usize = 256 << 20;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The test binary's allocator: the system allocator, refusing (with a message on stderr)
/// requests above the limit of the current thread while it runs a fuzz case.
struct Guarded;

#[global_allocator]
static GUARDED: Guarded = Guarded;

fn allowed(size: usize) -> bool {
    let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
    if size <= limit {
        return true;
    }
    // Formatted on the stack: allocating inside the allocator is best avoided.
    let mut msg = *b"fuzz: a case asked for one allocation of 00000000000000000000 bytes\n";
    let digits = &mut msg[41..61];
    let mut n = size;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: writes a valid stack buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    false
}

// SAFETY: every call is forwarded to the system allocator unchanged, or answered with null
// (allocation failure), which callers must handle.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with the allocation limit applied to this thread.
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LIMIT.with(|l| l.set(usize::MAX));
        }
    }
    let _reset = Reset;
    LIMIT.with(|l| l.set(ALLOC_LIMIT));
    f()
}

/// One change to an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// A little-endian integer of `width` bytes written over the input (binary size fields).
    Int(Index, u64, u8),
    /// The n-th run of ASCII digits replaced by a number (text size fields).
    Number(Index, String),
}

/// Integers that break size arithmetic.
const HUGE: &[u64] = &[
    0,
    1,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 53,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

fn huge() -> impl Strategy<Value = u64> {
    prop_oneof![prop::sample::select(HUGE), any::<u64>()]
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        huge().prop_map(|v| v.to_string()),
        huge().prop_map(|v| format!("-{v}")),
        Just("18446744073709551616".to_string()),
        Just("1e308".to_string()),
        Just("-0".to_string()),
        Just("0.5".to_string()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        3 => (any::<Index>(), huge(), prop::sample::select(&[2u8, 4, 8][..]))
            .prop_map(|(i, v, w)| Mutation::Int(i, v, w)),
        3 => (any::<Index>(), number_text()).prop_map(|(i, s)| Mutation::Number(i, s)),
    ]
}

/// Up to eight mutations, applied in order.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..8)
}

/// Byte ranges of the runs of ASCII digits in `b`.
fn digit_runs(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, c) in b.iter().enumerate() {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(s..b.len());
    }
    runs
}

/// `base` with `muts` applied.
pub fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, bit) => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
            }
            Mutation::Set(i, v) => {
                let at = i.index(b.len());
                b[at] = *v;
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len())),
            Mutation::Insert(i, bytes) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i.index(b.len());
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Int(i, v, w) => {
                let w = usize::from(*w);
                if b.len() >= w {
                    let at = i.index(b.len() - w + 1);
                    b[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            Mutation::Number(i, text) => {
                let runs = digit_runs(&b);
                if !runs.is_empty() {
                    let r = runs[i.index(runs.len())].clone();
                    b.splice(r, text.bytes());
                }
            }
        }
    }
    b
}

/// The number of cases per fuzzer: `RMLX_FUZZ_CASES`, else [`SMOKE_CASES`].
pub fn cases() -> u32 {
    std::env::var("RMLX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SMOKE_CASES)
}

/// Checks what a fuzz case produced: a diagnostic's span lies inside `text` on character
/// boundaries, and the diagnostic renders.
pub fn check_diagnostic(
    d: &Diagnostic,
    text: Option<&str>,
) -> std::result::Result<(), TestCaseError> {
    if let (Some(span), Some(text)) = (d.span.clone(), text) {
        prop_assert!(
            span.start <= span.end
                && span.end <= text.len()
                && text.is_char_boundary(span.start)
                && text.is_char_boundary(span.end),
            "span {span:?} outside the text ({} bytes): {d:?}",
            text.len()
        );
    }
    let rendered = format!("{:?}", miette::Report::new(d.clone()));
    prop_assert!(rendered.contains(d.code.as_str()), "{rendered}");
    Ok(())
}

/// Runs `case` on `cases()` mutations of `base` under the allocation guard; panics with the
/// smallest failing mutation list. Prints the number of cases run.
pub fn fuzz(
    name: &str,
    base: &[u8],
    case: impl FnMut(&[u8]) -> std::result::Result<(), TestCaseError>,
) {
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::RefCell::new(case);
    let result = runner.run(&mutations(), |muts| {
        let input = apply(base, &muts);
        guarded(|| (case.borrow_mut())(&input))
    });
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    eprintln!("fuzz {name}: {cases} cases, no failure");
}

mod tests {
    use super::*;
    use crate::snapshot::ModelConfig;

    const CONFIG: &str = r#"{
  "model_type": "gemma3_text",
  "hidden_size": 64,
  "intermediate_size": 128,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 16,
  "vocab_size": 100,
  "max_position_embeddings": 256,
  "sliding_window": 32,
  "sliding_window_pattern": 2,
  "bos_token_id": 1,
  "eos_token_id": [2, 3],
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
  "quantization": {"group_size": 32, "bits": 4, "model.layers.0.mlp.down_proj": {"bits": 8}}
}"#;

    fn layer_names(n: usize) -> Vec<String> {
        (0..n.min(4096))
            .map(|i| format!("model.layers.{i}.self_attn.q_proj.weight"))
            .collect()
    }

    #[test]
    fn fuzz_config_json() {
        fuzz("config.json", CONFIG.as_bytes(), |input| {
            let text = String::from_utf8_lossy(input);
            match ModelConfig::from_text(Path::new("config.json"), &text) {
                Err(d) => check_diagnostic(&d, Some(&text)),
                Ok(config) => {
                    // What a loader does next: the sizes against the tensors, the spec.
                    let names = layer_names(2);
                    if let Err(d) = config.check_tensors(names.iter().map(String::as_str)) {
                        return check_diagnostic(&d, Some(&text));
                    }
                    match crate::arch::gemma3::spec(&config) {
                        Ok(spec) => {
                            prop_assert_eq!(spec.sliding_window.len(), config.num_hidden_layers);
                            Ok(())
                        }
                        Err(d) => check_diagnostic(&d, Some(&text)),
                    }
                }
            }
        });
    }

    #[test]
    fn fuzz_safetensors_header() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("model.safetensors");
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (0..8u8).collect();
        let views = vec![
            (
                "model.layers.0.a".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a)
                    .unwrap(),
            ),
            (
                "model.layers.1.b".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![4], &b)
                    .unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &good).unwrap();
        let base = std::fs::read(&good).unwrap();
        let case_dir = dir.path().join("case");
        std::fs::create_dir(&case_dir).unwrap();
        fuzz("safetensors header", &base, |input| {
            std::fs::write(case_dir.join("model.safetensors"), input).unwrap();
            match crate::snapshot::Weights::open(&case_dir) {
                Err(d) => check_diagnostic(&d, None),
                Ok(w) => {
                    for name in w.names().map(str::to_owned).collect::<Vec<_>>() {
                        if let Err(d) = w.raw_array(&name) {
                            check_diagnostic(&d, None)?;
                        }
                    }
                    Ok(())
                }
            }
        });
    }
}
