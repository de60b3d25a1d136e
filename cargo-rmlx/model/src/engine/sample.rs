//! Token sampling from a logit vector: greedy, or temperature with top-k, top-p and min-p
//! filters and a seeded generator, so a sampled run is reproducible. Also the passes a step
//! makes over the vocabulary: [`argmax`] (vectorised lanes), [`top_k`] (one pass, no copy
//! of the vocabulary for up to 32 entries) and [`FiniteRange`] (the finite logits' maximum
//! and largest magnitude and the non-finite count, one pass; a sampled step and a step's
//! evidence both start from it). A sampled step ranks only the candidates it needs
//! ([`rank`]); the algorithm it replaced, a sort of every candidate, is kept as the tests'
//! reference (`reference`).

mod rank;
#[cfg(test)]
mod reference;

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

    /// Picks the next token from raw logits: greedy, or a draw over the finite logits scaled
    /// by 1/temperature after the top-k, min-p and top-p filters, one random number per
    /// sampled step. The candidates are ranked best first (larger scaled logit, then the
    /// lower token id) without sorting the vocabulary: top-k selects its `k` in one pass;
    /// without top-k one pass sums the softmax normaliser, and a best-first prefix
    /// ([`Self::first_prefix`]) grows, by as many as its mass shows are needed at most
    /// ([`Self::more_needed`]), until the filters and the draw are decided inside it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        let (max, finite) = finite_max(logits);
        if max == f32::NEG_INFINITY {
            tracing::debug!("no finite logit to sample from: arg-max");
            return argmax(logits);
        }
        let u = self.next_f64();
        let top = max / t;
        if !top.is_finite() {
            tracing::debug!(
                temperature = t,
                max,
                "the temperature scales the largest logit past f32's range: the first \
                 largest finite logit, the limit of sampling as the temperature falls"
            );
            return (0..)
                .zip(logits)
                .find(|(_, &l)| l == max)
                .map_or(0, |(i, _)| i);
        }
        let mut ranked = rank::Ranked::new(logits, t, finite);
        if self.cfg.top_k > 0 {
            ranked.grow(self.cfg.top_k);
            let k = self.cfg.top_k.min(ranked.cand.len());
            return self.pick_top_k(&ranked.cand[..k], u);
        }
        let total = rank::exp_total(logits, t, top);
        let mut probs = Vec::new();
        let mut m = self.first_prefix(total, u);
        loop {
            ranked.grow(m);
            let new = &ranked.cand[probs.len()..];
            probs.extend(new.iter().map(|c| f64::from(c.1 - top).exp() / total));
            if let Some(i) = self.pick(&probs, ranked.complete(), u) {
                return ranked.cand[i].0;
            }
            m = self.more_needed(&probs, ranked.rest(), u);
        }
    }

    /// The draw from the probabilities of a best-first prefix of every candidate (no top-k),
    /// or `None` when the prefix ends before the filters and the draw are decided.
    fn pick(&self, probs: &[f64], complete: bool, u: f64) -> Option<usize> {
        if self.cfg.min_p > 0.0 || self.cfg.top_p < 1.0 {
            let (keep, decided) = self.kept(probs);
            (decided || complete).then(|| draw_kept(&probs[..keep], u))
        } else {
            draw_all(probs, complete, u)
        }
    }

    /// The first prefix's length: 64, or, when min-p (which may decide sooner) is off, four
    /// times as many as must be ranked at least before the mass reaches the draw's `u` or
    /// `top_p` (no candidate has more than `1 / total`): a distribution that spreads its mass
    /// that far mostly needs many more, and from a quarter of the candidates on
    /// [`rank::Ranked::grow`] sorts them all at once instead of selecting twice.
    fn first_prefix(&self, total: f64, u: f64) -> usize {
        if self.cfg.min_p > 0.0 {
            return FIRST_PREFIX;
        }
        let target = if self.cfg.top_p < 1.0 {
            f64::from(self.cfg.top_p)
        } else {
            u
        };
        FIRST_PREFIX.max((4.0 * target * total) as usize)
    }

    /// How many more candidates decide the draw, at most (give or take rounding), given the
    /// probabilities `probs` of those ranked so far and `rest` left. Those left rank below
    /// them, so their best `j` hold at least `j / rest` of the mass left `1 − Σ probs`:
    /// `rest · (target − Σ probs) / (1 − Σ probs)` of them reach a cumulative `target` (`u`
    /// for a draw over all, `top_p`); and at most `(1 − Σ probs) / floor` of them pass
    /// min-p's floor. The smallest of the bounds that apply, 1% and 16 over for rounding.
    fn more_needed(&self, probs: &[f64], rest: usize, u: f64) -> usize {
        let (min_p, top_p) = (f64::from(self.cfg.min_p), f64::from(self.cfg.top_p));
        let held: f64 = probs.iter().sum();
        let left = (1.0 - held).max(f64::MIN_POSITIVE);
        let reach = |target: f64| rest as f64 * (target - held).max(0.0) / left;
        let mut need = rest as f64;
        if min_p <= 0.0 && top_p >= 1.0 {
            need = reach(u);
        }
        if top_p < 1.0 {
            need = need.min(reach(top_p));
        }
        if min_p > 0.0 {
            need = need.min(left / (probs[0] * min_p) + 1.0);
        }
        ((need * 1.01) as usize).saturating_add(16)
    }

    /// The draw among the `top_k` best candidates `cand` (all of them, best first): their
    /// softmax, then min-p and top-p over it.
    fn pick_top_k(&self, cand: &[rank::Cand], u: f64) -> u32 {
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| f64::from(c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let (keep, _) = self.kept(&probs);
        cand[draw_kept(&probs[..keep], u)].0
    }

    /// How many of the best candidates min-p and top-p keep, from the probabilities of a
    /// best-first prefix of them, and whether a filter decided inside the prefix (when not,
    /// the prefix passed both and more candidates may follow). Min-p keeps those at least
    /// `min_p` × the best one's probability; top-p then the fewest whose mass reaches
    /// `top_p`; at least one is kept.
    fn kept(&self, probs: &[f64]) -> (usize, bool) {
        let (mut keep, mut decided) = (probs.len(), false);
        if self.cfg.min_p > 0.0 {
            let floor = probs[0] * f64::from(self.cfg.min_p);
            if let Some(i) = probs.iter().position(|&p| p < floor || p.is_nan()) {
                (keep, decided) = (i.max(1), true);
            }
        }
        if self.cfg.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, p) in probs[..keep].iter().enumerate() {
                mass += p;
                if mass >= f64::from(self.cfg.top_p) {
                    return (n + 1, true);
                }
            }
        }
        (keep, decided)
    }
}

/// Candidates in the first best-first prefix of a draw without top-k.
const FIRST_PREFIX: usize = 64;

/// The draw among the kept candidates (their probabilities, best first): `u` × their mass,
/// walked best first; the last one when rounding leaves some of it over.
fn draw_kept(probs: &[f64], u: f64) -> usize {
    walk(probs, u * probs.iter().sum::<f64>()).unwrap_or(probs.len() - 1)
}

/// The draw among every candidate from the probabilities of a best-first prefix of them:
/// `u` (their mass being 1) walked best first. `None` when the prefix ends first and is not
/// complete; the last one when it is and rounding leaves some of `u` over.
fn draw_all(probs: &[f64], complete: bool, u: f64) -> Option<usize> {
    walk(probs, u).or(complete.then(|| probs.len() - 1))
}

/// The first candidate at which `r` falls inside the probabilities walked best first
/// (`None`: `r` outlasts them all).
fn walk(probs: &[f64], mut r: f64) -> Option<usize> {
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return Some(i);
        }
        r -= p;
    }
    None
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

/// The finite logits' maximum (-inf when there are none) and largest |logit|, and how many
/// logits are NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FiniteRange {
    pub(crate) max: f32,
    pub(crate) max_abs: f32,
    pub(crate) non_finite: usize,
}

impl FiniteRange {
    /// One pass over `logits` in lanes (exact in any order).
    pub(crate) fn of(logits: &[f32]) -> Self {
        let mut lanes = [Self::EMPTY; LANES];
        let chunks = logits.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (lane, &l) in lanes.iter_mut().zip(chunk) {
                lane.add(l);
            }
        }
        for &l in tail {
            lanes[0].add(l);
        }
        lanes.iter().fold(Self::EMPTY, |a, b| Self {
            max: larger(a.max, b.max),
            max_abs: larger(a.max_abs, b.max_abs),
            non_finite: a.non_finite + b.non_finite,
        })
    }

    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        max_abs: 0.0,
        non_finite: 0,
    };

    /// Takes one logit in (branch-free, so the lanes vectorise).
    #[inline(always)]
    fn add(&mut self, l: f32) {
        let finite = l.abs() < f32::INFINITY;
        self.max = larger(self.max, if finite { l } else { f32::NEG_INFINITY });
        self.max_abs = larger(self.max_abs, if finite { l.abs() } else { 0.0 });
        self.non_finite += usize::from(!finite);
    }
}

/// The largest finite logit (-inf when none is finite) and how many logits are finite.
fn finite_max(logits: &[f32]) -> (f32, usize) {
    let range = FiniteRange::of(logits);
    (range.max, logits.len() - range.non_finite)
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
