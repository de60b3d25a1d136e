//! Token sampling from a logit vector: greedy, or temperature with top-k, top-p and min-p
//! filters and a seeded generator, so a sampled run is reproducible. Also the passes a step
//! makes over the vocabulary: [`argmax`] (vectorised lanes) and [`top_k`] (one pass, no copy
//! of the vocabulary for up to 32 entries).

/// Sampling settings (OpenAI/mlx-lm semantics: 0 disables a filter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 → greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the top probability (0 = off).
    pub min_p: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

/// A sampler with its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
}

impl Sampler {
    /// A sampler seeded from `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Self {
        Self {
            cfg,
            state: cfg.seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Whether this sampler always picks the arg-max.
    pub fn is_greedy(&self) -> bool {
        self.cfg.temperature <= 0.0 || self.cfg.top_k == 1
    }

    /// SplitMix64 step → uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.cfg.top_k > 0 {
            cand.truncate(self.cfg.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if self.cfg.min_p > 0.0 {
            let floor = probs[0] * self.cfg.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        if self.cfg.top_p < 1.0 {
            let mut mass = 0.0;
            let mut n = 0;
            for p in &probs[..keep] {
                mass += p;
                n += 1;
                if mass >= self.cfg.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.next_f64() * total;
        for (c, p) in cand.iter().zip(&probs[..keep]) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        cand[keep - 1].0
    }
}

/// Lanes of the passes over a logit vector that the compiler vectorises ([`argmax`], a
/// step's evidence).
pub(crate) const LANES: usize = 16;

/// The larger of `a` and `b`, `a` when `b` is NaN: one `maxps`, so lane loops vectorise.
#[inline(always)]
pub(crate) fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// Index of the largest logit (first one on ties, NaN ignored; 0 when every logit is NaN or
/// -inf). Two passes the compiler vectorises: the maximum in lanes, then its first index.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, v);
        }
    }
    let best = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| larger(a, b));
    if best == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&v| v == best).unwrap_or(0) as u32
}

/// Up to this many top logits are kept in a sorted list during one pass over the logits;
/// more go through a selection over a copy.
const STREAMED_TOP_K: usize = 32;

/// The `k` largest logits, best first (by `total_cmp`; the first index on ties).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k > STREAMED_TOP_K {
        return top_k_selected(logits, k);
    }
    let beats = |a: f32, b: f32| a.total_cmp(&b).is_gt();
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in logits.iter().enumerate() {
        if best.len() == k && !beats(v, best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| !beats(v, b));
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// [`top_k`] for a large `k`: a selection over a copy of the whole vector.
fn top_k_selected(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    idx.select_nth_unstable_by(k - 1, order);
    idx.truncate(k);
    idx.sort_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max_and_top_k_orders() {
        let l = [0.1, 3.0, -1.0, 2.5];
        assert_eq!(Sampler::new(SamplerConfig::default()).sample(&l), 1);
        assert_eq!(top_k(&l, 2), vec![(1, 3.0), (3, 2.5)]);
    }

    /// The top `k` by sorting everything (best first, first index on ties).
    fn top_k_sorted(l: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn top_k_and_argmax_match_a_full_sort() {
        let mut l: Vec<f32> = (0..5000)
            .map(|i| ((i * 37 % 101) as f32 * 0.7).sin())
            .collect();
        l[17] = f32::NAN;
        l[900] = f32::NEG_INFINITY;
        // Compared bit for bit: the NaN ranks first under `total_cmp`.
        let bits = |v: Vec<(u32, f32)>| -> Vec<(u32, u32)> {
            v.into_iter().map(|(i, x)| (i, x.to_bits())).collect()
        };
        for k in [1, 2, 5, 20, 32, 33, 100, 5000, 6000] {
            assert_eq!(bits(top_k(&l, k)), bits(top_k_sorted(&l, k)), "k {k}");
        }
        let finite: Vec<f32> = l
            .iter()
            .map(|&v| if v.is_nan() { 0.0 } else { v })
            .collect();
        assert_eq!(argmax(&l) as usize, {
            let best = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            finite.iter().position(|&v| v == best).unwrap()
        });
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let l: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            seed: 7,
            ..Default::default()
        };
        let allowed: Vec<u32> = top_k(&l, 3).iter().map(|x| x.0).collect();
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..100).map(|_| s.sample(&l)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..100).map(|_| s.sample(&l)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|t| allowed.contains(t)));
        assert!(
            allowed.iter().all(|t| a.contains(t)),
            "all of top-3 get sampled"
        );
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let l = [10.0, 9.5, 0.0, -5.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            min_p: 0.1,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..200 {
            assert!(s.sample(&l) <= 1);
        }
    }
}
