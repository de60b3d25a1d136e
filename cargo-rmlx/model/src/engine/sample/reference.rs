//! The sampler as it was before [`super::rank`] (round 10): every finite candidate collected,
//! sorted, then top-k, min-p, top-p and the draw — kept as the reference the ranked sampler
//! must agree with token for token, with its tie order made explicit (the lower token id
//! first; the unstable sort left it open). Also the micro-benchmark of old against new.

use super::*;

/// The round-10 `Sampler::sample`, the tie order made explicit.
fn sample_sorted(s: &mut Sampler, logits: &[f32]) -> u32 {
    if s.is_greedy() {
        return argmax(logits);
    }
    let t = s.cfg.temperature;
    let mut cand: Vec<(u32, f32)> = (0..)
        .zip(logits)
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i, l / t))
        .collect();
    if cand.is_empty() {
        return argmax(logits);
    }
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.cfg.top_k > 0 {
        cand.truncate(s.cfg.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    if s.cfg.min_p > 0.0 {
        let floor = probs[0] * s.cfg.min_p as f64;
        keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
    }
    if s.cfg.top_p < 1.0 {
        let mut mass = 0.0;
        let mut n = 0;
        for p in &probs[..keep] {
            mass += p;
            n += 1;
            if mass >= s.cfg.top_p as f64 {
                break;
            }
        }
        keep = n.max(1);
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut r = s.next_f64() * total;
    for (c, p) in cand.iter().zip(&probs[..keep]) {
        if r < *p {
            return c.0;
        }
        r -= p;
    }
    cand[keep - 1].0
}

/// A SplitMix64 stream for test data.
struct Data(u64);

impl Data {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A language model's shape: a bulk spread over `spread` around 0, a few tokens far above
    /// it, and (when `awkward`) NaN, ±inf and repeated values among them.
    fn logits(&mut self, n: usize, spread: f32, awkward: bool) -> Vec<f32> {
        let mut l: Vec<f32> = (0..n)
            .map(|_| (self.unit() + self.unit() + self.unit() - 1.5) * spread)
            .collect();
        for _ in 0..n.min(8) {
            let i = self.next() as usize % n;
            l[i] = spread * (1.0 + 2.0 * self.unit());
        }
        if awkward && n > 4 {
            for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                let i = self.next() as usize % n;
                l[i] = v;
            }
            for _ in 0..n / 10 {
                let (i, j) = (self.next() as usize % n, self.next() as usize % n);
                l[i] = l[j];
            }
        }
        l
    }
}

/// Sampler settings over every filter and their combinations.
fn configs() -> Vec<SamplerConfig> {
    let mut out = Vec::new();
    for temperature in [0.25, 0.7, 1.0, 1.6] {
        for top_k in [0, 2, 5, 40, 100] {
            for top_p in [1.0, 0.95, 0.5] {
                for min_p in [0.0, 0.05, 0.3] {
                    out.push(SamplerConfig {
                        temperature,
                        top_p,
                        top_k,
                        min_p,
                        seed: 0,
                    });
                }
            }
        }
    }
    out
}

/// `draws` tokens from one sampler of each kind, seeded alike.
fn both(cfg: SamplerConfig, logits: &[f32], draws: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut new, mut old) = (Sampler::new(cfg), Sampler::new(cfg));
    (0..draws)
        .map(|_| (new.sample(logits), sample_sorted(&mut old, logits)))
        .unzip()
}

#[test]
fn ranked_sampling_draws_the_sorted_samplers_tokens() {
    let mut data = Data(11);
    let mut checked = 0;
    for (n, spread, awkward) in [
        (1, 1.0, false),
        (2, 1.0, false),
        (7, 3.0, true),
        (300, 4.0, true),
        (5_000, 6.0, true),
        (5_000, 0.5, false),
    ] {
        for vector in 0..3 {
            let l = data.logits(n, spread, awkward);
            for (c, cfg) in configs().into_iter().enumerate() {
                let cfg = SamplerConfig {
                    seed: data.next(),
                    ..cfg
                };
                let (new, old) = both(cfg, &l, 12);
                assert_eq!(
                    new, old,
                    "n {n} spread {spread} vector {vector} config {c}: {cfg:?}"
                );
                checked += new.len();
            }
        }
    }
    assert!(checked > 30_000, "{checked} draws compared");
}

#[test]
fn long_prefixes_draw_the_sorted_samplers_tokens() {
    // Flat logits: top-p and the plain draw reach thousands of candidates deep, so the
    // best-first prefix grows many times.
    let mut data = Data(5);
    for spread in [0.2, 2.0] {
        let l = data.logits(49_152, spread, true);
        for (temperature, top_p, min_p) in [(1.0, 1.0, 0.0), (1.5, 0.9, 0.0), (1.0, 1.0, 0.01)] {
            let cfg = SamplerConfig {
                temperature,
                top_p,
                min_p,
                top_k: 0,
                seed: data.next(),
            };
            let (new, old) = both(cfg, &l, 40);
            assert_eq!(new, old, "spread {spread}: {cfg:?}");
        }
    }
}

#[test]
fn one_growth_by_the_mass_bound_decides_the_draw() {
    // `more_needed` is a bound, not a guess: after a prefix of 64 that does not decide, one
    // growth by it does (the loop's further growths are only a net for rounding).
    let mut data = Data(21);
    let mut grown = 0;
    for spread in [1.0, 3.0, 6.0] {
        let l = data.logits(20_000, spread, true);
        for (temperature, top_p, min_p) in [
            (1.0, 1.0, 0.0),
            (1.5, 1.0, 0.0),
            (1.2, 0.95, 0.0),
            (1.0, 1.0, 0.001),
            (1.3, 0.99, 0.0005),
        ] {
            let mut s = Sampler::new(SamplerConfig {
                temperature,
                top_p,
                min_p,
                top_k: 0,
                seed: data.next(),
            });
            let (max, finite) = super::finite_max(&l);
            let top = max / temperature;
            let total = rank::exp_total(&l, temperature, top);
            for _ in 0..20 {
                let u = s.next_f64();
                let mut ranked = rank::Ranked::new(&l, temperature, finite);
                ranked.grow(64);
                let prob = |c: &rank::Cand| f64::from(c.1 - top).exp() / total;
                let probs: Vec<f64> = ranked.cand.iter().map(prob).collect();
                if s.pick(&probs, ranked.complete(), u).is_some() {
                    continue;
                }
                ranked.grow(s.more_needed(&probs, ranked.rest(), u));
                let probs: Vec<f64> = ranked.cand.iter().map(prob).collect();
                let config = (spread, temperature, top_p, min_p, u);
                assert!(s.pick(&probs, ranked.complete(), u).is_some(), "{config:?}");
                grown += 1;
            }
        }
    }
    assert!(
        grown > 20,
        "only {grown} draws needed more than 64 candidates"
    );
}

#[test]
fn a_temperature_that_overflows_the_logits_picks_the_largest_finite_logit() {
    let l = [1.0e3, 3.0e3, f32::NAN, 3.0e3, f32::INFINITY];
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1e-38,
        ..Default::default()
    });
    assert!(!s.is_greedy());
    assert_eq!(s.sample(&l), 1);
    let none = [f32::NAN, f32::NEG_INFINITY];
    assert_eq!(s.sample(&none), argmax(&none));
}

/// Microseconds per call of `f`, the best of 5 rounds of `calls`.
fn micros(calls: usize, mut f: impl FnMut() -> u32) -> f64 {
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        for _ in 0..calls {
            sink = sink.wrapping_add(u64::from(f()));
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    std::hint::black_box(sink);
    best
}

/// The sorted against the ranked sampler, µs per call, per vocabulary size and config:
/// `cargo test --release --workspace --lib sample_micro_benchmark -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run on a quiet machine, in release"]
fn sample_micro_benchmark() {
    let mut data = Data(3);
    let cfg = |temperature, top_k, top_p, min_p| SamplerConfig {
        temperature,
        top_p,
        top_k,
        min_p,
        seed: 9,
    };
    let configs = [
        ("t=0.7", cfg(0.7, 0, 1.0, 0.0)),
        ("t=1.0", cfg(1.0, 0, 1.0, 0.0)),
        ("t=0.7 top_k=40", cfg(0.7, 40, 1.0, 0.0)),
        ("t=0.7 top_p=0.9", cfg(0.7, 0, 0.9, 0.0)),
        ("t=1.0 top_p=0.95", cfg(1.0, 0, 0.95, 0.0)),
        ("t=0.7 min_p=0.05", cfg(0.7, 0, 1.0, 0.05)),
        ("t=0.8 top_k=50 top_p=0.9", cfg(0.8, 50, 0.9, 0.0)),
        ("t=1.0 top_p=0.9 min_p=0.02", cfg(1.0, 0, 0.9, 0.02)),
    ];
    for n in [49_152, 151_936] {
        for (shape, spread) in [("peaked", 6.0), ("flat", 1.0)] {
            let l = data.logits(n, spread, false);
            for (name, c) in configs {
                let (mut new, mut old) = (Sampler::new(c), Sampler::new(c));
                let calls = 30;
                let t_old = micros(calls, || sample_sorted(&mut old, &l));
                let t_new = micros(calls, || new.sample(&l));
                println!(
                    "n {n:>6} {shape:<6} {name:<28} sorted {t_old:>8.1} µs  ranked {t_new:>7.1} µs  {:>5.1}x",
                    t_old / t_new
                );
            }
        }
    }
}
