//! The prompt (prefix) cache: the engine [`Cache`] states of earlier generations, keyed by
//! the token ids they hold, so a new prompt that starts like an earlier one (the next turn of
//! a conversation, a shared system prompt) runs only the tokens after the common prefix.
//!
//! What is stored, per layer kind (see [`Cache::resumable_at`]):
//! - **global key/value layers** hold every position: an entry can be cut back to any prefix
//!   of its tokens;
//! - **sliding-window layers** hold every position until the window is full, then only the
//!   window: cut back to any prefix before that, afterwards resumed only at the exact length
//!   stored;
//! - **recurrent layers** (linear attention) hold one state: resumed only at the exact length
//!   stored;
//! - **shared key/value layers** hold nothing.
//!
//! An entry is resumable at any prefix when every layer is; otherwise only at its length. So
//! a generation through the cache ([`PrefixCache::start`] → [`PrefixCache::after_chunk`]
//! after each prefill chunk → [`PrefixCache::store`]; [`generate_cached`] alone, the server's
//! scheduler for many at once) stores every generation's final state (the prompt, then the generated
//! ids fed back), and, for models with sliding or recurrent layers, also snapshots taken
//! during the prefill: at the end of the prompt (the next turn of a conversation starts
//! with it) and where the prompt leaves the longest common prefix with a stored entry (the
//! shared system prompt of the requests that follow). A state is stored as a compact copy
//! ([`Cache::compact`]): exactly the positions it holds, in arrays of its own — not the
//! running cache's key/value buffers (grown 256 positions at a time on MLX's path, or a
//! batch's shared buffer), which the copy would otherwise keep alive. A resumed entry grows
//! like any cache; MLX arrays are values, so the run's writes never change the stored state.
//! A finished sequence's layers decoded on the host (the CPU path) are copied into the entry's
//! MLX arrays once, straight from the host rows.
//!
//! Bounded by a byte budget over the stored arrays (what the entries keep alive), least
//! recently used entries evicted first; an entry made redundant by a longer one that can be cut back to it is dropped. MLX
//! arrays belong to one thread: a cache lives on its model's worker thread and holds states of
//! that one loaded model only.

use std::ops::ControlFlow;
use std::time::Instant;

use super::cache::Cache;
use super::generate::{drive, GenerateOptions, GenerateOutput, Step};
use super::sequence::{Sequence, StartCache};
use super::Model;
use crate::diagnostic::Result;

/// A stored state.
#[derive(Debug)]
struct Entry {
    /// The tokens the state holds (`cache.offset` of them).
    tokens: Vec<u32>,
    cache: Cache,
    /// Whether it can be cut back to any prefix of `tokens`.
    any_prefix: bool,
    bytes: usize,
    /// Logical time of the last store or hit (LRU).
    used: u64,
}

impl Entry {
    /// The longest prefix of `prompt` this entry can resume, leaving at least one prompt token
    /// to run (the first logits come from it); 0 when none.
    fn resumable(&self, prompt: &[u32]) -> usize {
        let common = common_prefix(&self.tokens, prompt).min(prompt.len().saturating_sub(1));
        if self.any_prefix || common == self.tokens.len() {
            common
        } else {
            0
        }
    }
}

/// Counts since the last [`PrefixCache::take_counts`] (for the server's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Lookups that reused a stored prefix.
    pub hits: u64,
    /// Prompt tokens taken from the cache instead of being run.
    pub cached_tokens: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
}

/// The prompt cache of one loaded model.
#[derive(Debug)]
pub struct PrefixCache {
    budget: usize,
    entries: Vec<Entry>,
    clock: u64,
    bytes: usize,
    counts: Counts,
}

/// What a lookup found: a cache holding the first `cache.offset` prompt tokens (empty when
/// nothing matched), and the longest common prefix with any stored entry (a useful place for
/// a snapshot when it is longer than what could be resumed).
#[derive(Debug)]
pub struct Found {
    /// The state to start from.
    pub cache: Cache,
    /// Longest common prefix with a stored entry (capped like a hit).
    pub common: usize,
}

impl PrefixCache {
    /// An empty cache holding at most `budget_bytes` of arrays (0: store nothing).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            entries: Vec::new(),
            clock: 0,
            bytes: 0,
            counts: Counts::default(),
        }
    }

    /// Whether anything is ever stored.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// The longest stored prefix of `prompt` as a cache to resume from (`fresh` when none).
    pub fn lookup(&mut self, prompt: &[u32], fresh: Cache) -> Found {
        let cap = prompt.len().saturating_sub(1);
        let common = self
            .entries
            .iter()
            .map(|e| common_prefix(&e.tokens, prompt).min(cap))
            .max()
            .unwrap_or(0);
        let best = self
            .entries
            .iter_mut()
            .map(|e| (e.resumable(prompt), e))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, e)| (*n, e.used));
        let Some((n, entry)) = best else {
            return Found {
                cache: fresh,
                common,
            };
        };
        self.clock += 1;
        entry.used = self.clock;
        let Some(cache) = entry.cache.trimmed(n) else {
            // `resumable` and `Cache::resumable_at` disagree: a bug; run the prompt cold.
            tracing::warn!("prompt cache: entry not resumable at {n} tokens; running cold");
            return Found {
                cache: fresh,
                common,
            };
        };
        self.counts.hits += 1;
        self.counts.cached_tokens += n as u64;
        tracing::debug!("prompt cache: {n} of {} prompt tokens cached", prompt.len());
        Found { cache, common }
    }

    /// Stores `cache`, the state after `tokens` (`tokens.len() == cache.offset`).
    pub fn insert(&mut self, tokens: &[u32], cache: &Cache) {
        if !self.enabled() || tokens.is_empty() || tokens.len() != cache.offset {
            return;
        }
        let any_prefix = cache.resumable_at(0);
        // A stored entry that can be cut back to `tokens` makes this one redundant.
        if let Some(e) = self.entries.iter_mut().find(|e| {
            e.tokens.starts_with(tokens) && (e.any_prefix || e.tokens.len() == tokens.len())
        }) {
            self.clock += 1;
            e.used = self.clock;
            return;
        }
        // A copy of exactly the positions held: the running cache's buffers are larger (and
        // may be a batch's, or host rows), and the budget counts what the entry keeps alive.
        let started = Instant::now();
        let stored = match cache.compact() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!("prompt cache: not storing a state that fails to copy: {e}");
                return;
            }
        };
        let bytes = stored.nbytes();
        if bytes > self.budget {
            tracing::debug!(
                "prompt cache: a state of {} tokens ({bytes} bytes) exceeds the budget ({} bytes)",
                tokens.len(),
                self.budget
            );
            return;
        }
        // Evaluated while `cache` still holds the source arrays (see `Cache::compact`).
        if let Err(e) = stored.materialize() {
            tracing::warn!("prompt cache: not storing a state that fails to evaluate: {e}");
            return;
        }
        tracing::debug!(
            "prompt cache: stored a state of {} tokens ({bytes} bytes) in {:.2} ms",
            tokens.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        // Entries this one can be cut back to are redundant now.
        if any_prefix {
            self.remove_where(|e| tokens.starts_with(&e.tokens));
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            cache: stored,
            any_prefix,
            bytes,
            used: self.clock,
        });
        self.evict_to_budget();
    }

    fn remove_where(&mut self, redundant: impl Fn(&Entry) -> bool) {
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let drop = redundant(e);
            if drop {
                *bytes -= e.bytes;
            }
            !drop
        });
    }

    /// Evicts least recently used entries until the budget holds.
    fn evict_to_budget(&mut self) {
        while self.bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.bytes -= e.bytes;
            self.counts.evictions += 1;
            tracing::debug!(
                "prompt cache: evicted a state of {} tokens ({} bytes)",
                e.tokens.len(),
                e.bytes
            );
        }
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The generation side of the cache: a sequence's start, its prefill marks, its end.
impl PrefixCache {
    /// Starts a sequence on the longest stored prefix of the prompt, with prefill marks where
    /// later prompts may resume (see the module doc). Off: a fresh sequence.
    pub fn start(
        &mut self,
        model: &Model,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Sequence> {
        if !self.enabled() {
            return Sequence::start(model, prompt, opts, StartCache::fresh());
        }
        let found = self.lookup(prompt, model.net.new_cache());
        let tokens = found.cache.offset;
        // Snapshots during the prefill matter only where a state cannot be cut back later;
        // the cache kinds show that only once layers ran, so `after_chunk` decides.
        let mut marks = vec![prompt.len()];
        if found.common > tokens {
            marks.push(found.common);
        }
        let cache = StartCache::Prefilled {
            cache: found.cache,
            tokens,
        };
        Ok(Sequence::start(model, prompt, opts, cache)?.with_marks(marks))
    }

    /// After a prefill chunk of a sequence from [`Self::start`]: at a mark, snapshots a cache
    /// that could not be cut back to it later.
    pub fn after_chunk(&mut self, seq: &Sequence) {
        if let Some((tokens, cache)) = seq.at_mark() {
            if cache.has_exact_only_layers() {
                self.insert(tokens, cache);
            }
        }
    }

    /// Stores the final state of a finished sequence ([`Sequence::finish_with_cache`]).
    pub fn store(&mut self, out: &GenerateOutput, cache: &Cache) {
        let held = held_tokens(&out.prompt_ids, &out.ids(), cache.offset);
        self.insert(&held, cache);
    }
}

/// [`super::generate_cancellable`] through `store`: starts from the longest stored prefix of
/// the prompt, snapshots where later prompts may resume (see the module doc), and stores the
/// final state. `out.cached_tokens` says how many prompt tokens were not run.
pub fn generate_cached(
    model: &Model,
    store: &mut PrefixCache,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    cancelled: impl Fn() -> bool,
    on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<GenerateOutput> {
    let seq = store.start(model, prompt_ids, opts)?;
    let (out, cache) = drive(model, seq, cancelled, on_step, |s| store.after_chunk(s))?;
    store.store(&out, &cache);
    Ok(out)
}

/// The tokens a cache of `offset` positions holds after a run: the prompt, then the generated
/// ids fed back (all of them or all but the last, depending on the decode path).
fn held_tokens(prompt: &[u32], generated: &[u32], offset: usize) -> Vec<u32> {
    prompt
        .iter()
        .chain(generated)
        .take(offset)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::ops::{ControlFlow, Range};
    use std::path::Path;
    use std::time::Instant;

    use mlx_rs::Array;

    use super::{generate_cached, PrefixCache};
    use crate::engine::cache::{Cache, CacheKind};
    use crate::engine::{generate, DtypePolicy, GenerateOptions, GenerateOutput, Model, Step};
    use crate::snapshot::Snapshot;

    /// Vocabulary of the tiny test models: `top = VOCAB` records every logit of a step.
    const VOCAB: usize = 40;
    const TURN1: [u32; 10] = [3, 17, 1, 29, 4, 11, 38, 0, 22, 5];

    fn load(write: impl Fn(&Path)) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path());
        let snap = Snapshot::open(dir.path()).expect("open tiny model");
        let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
            .expect("load tiny model");
        (dir, model)
    }

    fn opts(max_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            ignore_eos: true,
            top: VOCAB,
            ..GenerateOptions::default()
        }
    }

    /// Step 0's logits by token id.
    fn logits(out: &GenerateOutput) -> Vec<f32> {
        let mut l = vec![f32::NAN; VOCAB];
        for &(id, v) in &out.steps[0].top {
            l[id as usize] = v;
        }
        l
    }

    /// Runs `prompt` through `store` and cold; asserts the same tokens and step-0 logits
    /// within 1e-4; returns the generated ids and the cached token count.
    fn run(model: &Model, store: &mut PrefixCache, prompt: &[u32]) -> (Vec<u32>, usize) {
        let keep = |_: &Step| ControlFlow::Continue(());
        let warm = generate_cached(model, store, prompt, &opts(3), || false, keep).expect("warm");
        let cold = generate(model, prompt, &opts(3), keep).expect("cold");
        assert_eq!(warm.ids(), cold.ids(), "tokens after {prompt:?}");
        let worst = logits(&warm)
            .iter()
            .zip(logits(&cold))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "step-0 logits after {prompt:?} ({} cached) differ from a cold run by {worst}",
            warm.cached_tokens
        );
        (warm.ids(), warm.cached_tokens)
    }

    /// Two turns of a conversation, then two prompts sharing only the first 6 tokens.
    /// `exact_only`: the model has layers resumable only at the length stored.
    fn conversation(model: &Model, exact_only: bool) {
        let mut store = PrefixCache::new(1 << 30);
        let (out1, cached) = run(model, &mut store, &TURN1);
        assert_eq!(cached, 0, "nothing stored yet");
        // The next turn: the first prompt, the reply (3 ids, all but the last fed back),
        // new tokens.
        let mut turn2 = TURN1.to_vec();
        turn2.extend(&out1[..2]);
        turn2.extend([7, 9, 12]);
        let (_, cached) = run(model, &mut store, &turn2);
        assert_eq!(
            cached,
            TURN1.len() + 2,
            "the first turn's final state resumes"
        );
        let branch = |tail: &[u32]| [&TURN1[..6], tail].concat();
        let (_, cached) = run(model, &mut store, &branch(&[30, 31, 2]));
        // A full window or a recurrent state cannot be cut back to 6 tokens: the prefill
        // stops there and stores a snapshot instead.
        assert_eq!(cached, if exact_only { 0 } else { 6 });
        let (_, cached) = run(model, &mut store, &branch(&[8, 8, 9, 1]));
        assert_eq!(cached, 6, "the shared 6 tokens resume");
        let counts = store.take_counts();
        assert_eq!(counts.hits, if exact_only { 2 } else { 3 });
    }

    #[test]
    fn global_kv_cache_resumes_at_any_prefix_like_a_cold_run() {
        let (_dir, model) = load(|d| crate::engine::tests::write_tiny_llama(d, 1));
        conversation(&model, false);
    }

    #[test]
    fn sliding_window_cache_resumes_only_where_stored_like_a_cold_run() {
        let (_dir, model) = load(|d| crate::engine::tests::write_tiny_gemma3(d, 4));
        conversation(&model, true);
    }

    #[test]
    fn recurrent_cache_resumes_only_where_stored_like_a_cold_run() {
        let (_dir, model) = load(crate::arch::qwen3_5::tests::write_tiny);
        conversation(&model, true);
    }

    /// The tiny float32 models run MLX's path (the host kernels cover quantized weights only),
    /// where a run's key/value buffers grow 256 positions at a time: a stored state is a copy
    /// of its positions, counted as such, and a hit on it, cut back or grown, answers like a
    /// cold run.
    #[test]
    fn a_stored_state_counts_exactly_its_positions_and_resumes_like_a_cold_run() {
        let (dir, model) = load(|d| crate::engine::tests::write_tiny_llama(d, 1));
        let c = Snapshot::open(dir.path()).expect("open").config;
        let per_position = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 4;
        let held =
            |store: &PrefixCache| -> usize { store.entries.iter().map(|e| e.tokens.len()).sum() };
        let mut store = PrefixCache::new(1 << 30);
        let (out1, _) = run(&model, &mut store, &TURN1);
        assert!(held(&store) >= TURN1.len());
        assert_eq!(store.bytes(), held(&store) * per_position);
        let mut turn2 = TURN1.to_vec();
        turn2.extend(&out1[..2]);
        turn2.extend([7, 9, 12]);
        let (_, cached) = run(&model, &mut store, &turn2);
        assert_eq!(cached, TURN1.len() + 2, "the stored copy resumes and grows");
        let (_, cached) = run(&model, &mut store, &[&TURN1[..6], &[30, 31, 2]].concat());
        assert_eq!(cached, 6, "the stored copy is cut back");
        assert_eq!(
            store.len(),
            2,
            "the second turn's state (it replaced the first's), the branch's"
        );
        assert_eq!(store.bytes(), held(&store) * per_position);
    }

    /// Key (value: its negation) of `layer` at position `pos`, head `h`, column `d`.
    fn kv_value(layer: usize, pos: usize, h: usize, d: usize) -> f32 {
        (layer * 1000 + pos) as f32 + h as f32 * 0.25 + d as f32 / 256.0
    }

    /// `[1, heads, positions, dim]` keys (`sign` 1) or values (-1) of `layer`.
    fn kv_array(
        layer: usize,
        positions: Range<usize>,
        heads: usize,
        dim: usize,
        sign: f32,
    ) -> Array {
        let n = positions.len();
        let data: Vec<f32> = (0..heads)
            .flat_map(|h| positions.clone().map(move |p| (h, p)))
            .flat_map(|(h, p)| (0..dim).map(move |d| sign * kv_value(layer, p, h, d)))
            .collect();
        Array::from_slice(&data, &[1, heads as i32, n as i32, dim as i32])
    }

    /// A cache as a CPU sequence finishes: `layers` global key/value layers of `heads` heads
    /// of width `dim`, `prefilled` positions written through MLX, moved to the host at the
    /// first decode step, then `decoded` positions pushed there.
    fn host_decoded(
        layers: usize,
        heads: usize,
        dim: usize,
        prefilled: usize,
        decoded: usize,
    ) -> Cache {
        let mut cache = Cache::new(&vec![CacheKind::Kv; layers]);
        for l in 0..layers {
            let kv = cache.kv(l).expect("key/value layer");
            let (k, v) = (
                kv_array(l, 0..prefilled, heads, dim, 1.0),
                kv_array(l, 0..prefilled, heads, dim, -1.0),
            );
            kv.update(k, v, None).expect("prefill");
            let host = kv.host(heads, dim, None).expect("to the host");
            for p in prefilled..prefilled + decoded {
                let row = |sign: f32| -> Vec<f32> {
                    (0..heads)
                        .flat_map(|h| (0..dim).map(move |d| sign * kv_value(l, p, h, d)))
                        .collect()
                };
                host.push(&row(1.0), &row(-1.0));
            }
        }
        cache.offset = prefilled + decoded;
        cache
    }

    /// Asserts that every layer of `cache` holds exactly positions `0..n` of [`kv_value`].
    fn holds_positions(cache: &Cache, n: usize, heads: usize, dim: usize) {
        for l in 0..cache.layers.len() {
            let (k, v) = cache
                .kv_ref(l)
                .expect("layer")
                .state()
                .expect("positions held");
            let want = (
                kv_array(l, 0..n, heads, dim, 1.0),
                kv_array(l, 0..n, heads, dim, -1.0),
            );
            assert_eq!(k.shape(), want.0.shape(), "layer {l}");
            assert!(k.eq_values(&want.0).expect("compare"), "layer {l}: keys");
            assert!(v.eq_values(&want.1).expect("compare"), "layer {l}: values");
        }
    }

    /// The server's and `generate_cached`'s path on the CPU: a finished sequence's cache with
    /// its decoded layers still on the host is stored (one copy, straight from the host rows)
    /// as exactly its positions, and a hit resumes them, whole or cut back.
    #[test]
    fn a_host_decoded_state_is_stored_as_exactly_its_positions() {
        let (heads, dim) = (2, 64);
        let cache = host_decoded(2, heads, dim, 5, 3);
        let tokens: Vec<u32> = (0..8).collect();
        let mut store = PrefixCache::new(1 << 30);
        store.insert(&tokens, &cache);
        assert_eq!(
            store.bytes(),
            2 * 2 * heads * 8 * dim * 4,
            "2 layers, keys and values"
        );
        let fresh = || Cache::new(&[CacheKind::Kv; 2]);
        let found = store.lookup(&[&tokens[..], &[99]].concat(), fresh());
        assert_eq!(found.cache.offset, 8);
        holds_positions(&found.cache, 8, heads, dim);
        let found = store.lookup(&[0, 1, 2, 3, 4, 5, 77], fresh());
        assert_eq!(found.cache.offset, 6);
        holds_positions(&found.cache, 6, heads, dim);
        assert!(
            cache.kv_ref(0).expect("layer").state().is_some(),
            "the finished cache is untouched"
        );
    }

    /// Storing a SmolLM2-135M-shaped state of 1,000 positions (30 layers, 3 key/value heads of
    /// 64, float32: 46 MB) decoded on the host: as it is stored now (one copy from the host
    /// rows) and as round 10 stored it (moved back to MLX arrays first, then copied again),
    /// alternating, 15 times each; prints the least and the median ms:
    /// `cargo test --workspace --lib prompt_cache_store_benchmark -- --ignored --nocapture`
    /// (the copies run in MLX, built once for any profile).
    #[test]
    #[ignore = "a measurement: run on a quiet machine"]
    fn prompt_cache_store_benchmark() {
        let (layers, heads, dim, n) = (30, 3, 64, 1000);
        let source = host_decoded(layers, heads, dim, n - 8, 8);
        let tokens: Vec<u32> = (0..n as u32).collect();
        let store_ms = |flush_first: bool| -> f64 {
            let mut cache = source.clone();
            let mut store = PrefixCache::new(1 << 30);
            let start = Instant::now();
            if flush_first {
                for l in 0..layers {
                    cache.kv(l).expect("layer").flush().expect("flush");
                }
            }
            store.insert(&tokens, &cache);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert_eq!(store.len(), 1);
            ms
        };
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            old.push(store_ms(true));
            new.push(store_ms(false));
        }
        for (name, mut ms) in [("flush, then compact", old), ("compact from the host", new)] {
            ms.sort_by(f64::total_cmp);
            println!(
                "{name}: least {:.2} ms, median {:.2} ms",
                ms[0],
                ms[ms.len() / 2]
            );
        }
    }

    #[test]
    fn a_tiny_budget_evicts_the_least_recently_used_state() {
        let (_dir, model) = load(|d| crate::engine::tests::write_tiny_llama(d, 1));
        let prompt = |first: u32| [&[first][..], &TURN1[1..]].concat();
        // One stored state's size (the prompts are of one length: every state is alike).
        let mut probe = PrefixCache::new(1 << 30);
        run(&model, &mut probe, &prompt(1));
        let one = probe.bytes();
        assert!(one > 0 && probe.len() == 1);

        let mut store = PrefixCache::new(one * 5 / 2);
        run(&model, &mut store, &prompt(1));
        run(&model, &mut store, &prompt(2));
        assert_eq!(
            run(&model, &mut store, &prompt(1)).1,
            TURN1.len() - 1,
            "A hits"
        );
        run(&model, &mut store, &prompt(3)); // evicts B, the least recently used
        let counts = store.take_counts();
        assert_eq!(counts.evictions, 1);
        assert!(store.bytes() <= one * 5 / 2 && store.len() == 2);
        assert_eq!(run(&model, &mut store, &prompt(2)).1, 0, "B was evicted");

        let mut none = PrefixCache::new(one - 1);
        run(&model, &mut none, &prompt(1));
        assert_eq!(
            (none.len(), none.bytes()),
            (0, 0),
            "a state over budget is not kept"
        );
        assert_eq!(run(&model, &mut none, &prompt(1)).1, 0);
    }
}
