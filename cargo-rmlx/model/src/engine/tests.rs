//! The engine on tiny generated models, checked against a naive float64 implementation of
//! the same architectures written here (embeddings, RMSNorm, RoPE, GQA attention with causal
//! and sliding-window masks, gated MLP, q/k norms, gemma's sandwich norms). Covers every
//! `ArchSpec` flag; the real-model checks against mlx-lm live in the end-to-end tests.

#![allow(clippy::needless_range_loop)] // the naive reference indexes heads and features explicitly

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::Array;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::json;

use super::{DtypePolicy, Model};
use crate::snapshot::Snapshot;

const H: usize = 32;
const NH: usize = 4;
const NKV: usize = 2;
const HD: usize = 8;
const FF: usize = 48;
const LAYERS: usize = 2;
const VOCAB: usize = 40;

/// A tiny deterministic generator of test weights (uniform in `[-0.5, 0.5)`).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    /// `n` values uniform in `[-scale / 2, scale / 2)`.
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// `n` deterministic test values in `[-1, 1)` from `seed` (the host kernels' unit tests).
pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    Rng(u64::from(seed)).vec(n, 2.0)
}

#[derive(Clone, Copy, PartialEq)]
enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

/// Tensors by name: shape and float32 values.
pub(crate) type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn make_weights(arch: Arch, rng: &mut Rng) -> Weights {
    let mut w = Weights::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        w.insert(name, (shape, rng.vec(n, scale)));
    };
    put("model.embed_tokens.weight".into(), vec![VOCAB, H], 1.0, rng);
    put("model.norm.weight".into(), vec![H], 0.5, rng);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (n, o, i) in [
            ("self_attn.q_proj", NH * HD, H),
            ("self_attn.k_proj", NKV * HD, H),
            ("self_attn.v_proj", NKV * HD, H),
            ("self_attn.o_proj", H, NH * HD),
            ("mlp.gate_proj", FF, H),
            ("mlp.up_proj", FF, H),
            ("mlp.down_proj", H, FF),
        ] {
            put(format!("{p}.{n}.weight"), vec![o, i], 0.4, rng);
        }
        if arch == Arch::Qwen2 {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                vec![NH * HD],
                0.3,
                rng,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                vec![NKV * HD],
                0.3,
                rng,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                vec![NKV * HD],
                0.3,
                rng,
            );
        }
        if matches!(arch, Arch::Qwen3 | Arch::Gemma3) {
            put(format!("{p}.self_attn.q_norm.weight"), vec![HD], 0.5, rng);
            put(format!("{p}.self_attn.k_norm.weight"), vec![HD], 0.5, rng);
        }
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if arch == Arch::Gemma3 {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for n in norms {
            put(format!("{p}.{n}.weight"), vec![H], 0.5, rng);
        }
    }
    // Norm weights around 1 (gemma stores w for 1 + w, so keep those small).
    if arch != Arch::Gemma3 {
        for (name, (_, v)) in w.iter_mut() {
            if name.contains("norm") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
        }
    }
    w
}

fn config(arch: Arch) -> serde_json::Value {
    let mut c = json!({
        "hidden_size": H, "intermediate_size": FF, "num_hidden_layers": LAYERS,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": true,
    });
    let m = c.as_object_mut().expect("object");
    let t = match arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Gemma3 => {
            m.insert("query_pre_attn_scalar".into(), json!(16));
            m.insert("sliding_window".into(), json!(3));
            m.insert(
                "layer_types".into(),
                json!(["sliding_attention", "full_attention"]),
            );
            m.insert("rope_local_base_freq".into(), json!(100.0));
            "gemma3_text"
        }
    };
    m.insert("model_type".into(), json!(t));
    c
}

fn write_model(dir: &Path, arch: Arch, w: &Weights) {
    std::fs::write(dir.join("config.json"), config(arch).to_string()).expect("config");
    write_weights(dir, w);
}

/// Writes a tiny llama (two global layers) into `dir`, for other modules' tests.
pub(crate) fn write_tiny_llama(dir: &Path, seed: u64) {
    write_model(dir, Arch::Llama, &make_weights(Arch::Llama, &mut Rng(seed)));
}

/// Writes a tiny gemma3 (a sliding layer of window 3, then a global layer) into `dir`, for
/// other modules' tests.
pub(crate) fn write_tiny_gemma3(dir: &Path, seed: u64) {
    write_model(
        dir,
        Arch::Gemma3,
        &make_weights(Arch::Gemma3, &mut Rng(seed)),
    );
}

/// Writes `w` as `dir/model.safetensors` (float32).
pub(crate) fn write_weights(dir: &Path, w: &Weights) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(n, (s, v))| {
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(StDtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write");
}

// ---- the naive reference ----

fn matvec(w: &(Vec<usize>, Vec<f32>), x: &[f64]) -> Vec<f64> {
    let (rows, cols) = (w.0[0], w.0[1]);
    (0..rows)
        .map(|r| (0..cols).map(|c| w.1[r * cols + c] as f64 * x[c]).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f32], one_plus: bool) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + 1e-5).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &g)| v * inv * if one_plus { 1.0 + g as f64 } else { g as f64 })
        .collect()
}

fn rope(x: &mut [f64], pos: usize, base: f64) {
    let half = x.len() / 2;
    for i in 0..half {
        let freq = base.powf(-2.0 * i as f64 / x.len() as f64);
        let (s, c) = (pos as f64 * freq).sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

fn naive_logits(arch: Arch, w: &Weights, ids: &[usize]) -> Vec<Vec<f64>> {
    let gemma = arch == Arch::Gemma3;
    let g = |n: &str| w.get(n).unwrap_or_else(|| panic!("weight {n}"));
    let emb = g("model.embed_tokens.weight");
    let scale_emb = if gemma {
        half::bf16::from_f32((H as f32).sqrt()).to_f32() as f64
    } else {
        1.0
    };
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| {
            emb.1[t * H..(t + 1) * H]
                .iter()
                .map(|&v| v as f64 * scale_emb)
                .collect()
        })
        .collect();
    let attn_scale = if gemma {
        16f64.powf(-0.5)
    } else {
        (HD as f64).powf(-0.5)
    };
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let window = (gemma && l == 0).then_some(3usize);
        let base = if window.is_some() { 100.0 } else { 10000.0 };
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let hx = rms(x, &g(&format!("{p}.input_layernorm.weight")).1, gemma);
            let proj = |n: &str| {
                let mut y = matvec(g(&format!("{p}.self_attn.{n}.weight")), &hx);
                if let Some(b) = w.get(&format!("{p}.self_attn.{n}.bias")) {
                    y.iter_mut().zip(&b.1).for_each(|(y, &b)| *y += b as f64);
                }
                y
            };
            let heads = |v: Vec<f64>, norm: &str| -> Vec<Vec<f64>> {
                v.chunks(HD)
                    .map(|h| {
                        let mut h = match w.get(&format!("{p}.self_attn.{norm}.weight")) {
                            Some(nw) => rms(h, &nw.1, gemma),
                            None => h.to_vec(),
                        };
                        if norm != "v" {
                            rope(&mut h, pos, base);
                        }
                        h
                    })
                    .collect()
            };
            qs.push(heads(proj("q_proj"), "q_norm"));
            ks.push(heads(proj("k_proj"), "k_norm"));
            vs.push(heads(proj("v_proj"), "v"));
        }
        let mut next = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            let mut o = Vec::with_capacity(NH * HD);
            for h in 0..NH {
                let kv = h / (NH / NKV);
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| window.is_none_or(|w| i - j < w))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        qs[i][h]
                            .iter()
                            .zip(&ks[j][kv])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            * attn_scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..HD {
                    o.push(
                        visible
                            .iter()
                            .zip(&e)
                            .map(|(&j, e)| e / z * vs[j][kv][d])
                            .sum(),
                    );
                }
            }
            let a = matvec(g(&format!("{p}.self_attn.o_proj.weight")), &o);
            let mut x: Vec<f64> = if gemma {
                let a = rms(
                    &a,
                    &g(&format!("{p}.post_attention_layernorm.weight")).1,
                    true,
                );
                x.iter().zip(&a).map(|(x, a)| x + a).collect()
            } else {
                x.iter().zip(&a).map(|(x, a)| x + a).collect()
            };
            let pre = if gemma {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let hx = rms(&x, &g(&format!("{p}.{pre}.weight")).1, gemma);
            let gate = matvec(g(&format!("{p}.mlp.gate_proj.weight")), &hx);
            let up = matvec(g(&format!("{p}.mlp.up_proj.weight")), &hx);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(&gt, &u)| {
                    let a = if gemma {
                        0.5 * gt
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt()
                                    * (gt + 0.044715 * gt.powi(3)))
                                .tanh())
                    } else {
                        gt / (1.0 + (-gt).exp())
                    };
                    a * u
                })
                .collect();
            let mut m = matvec(g(&format!("{p}.mlp.down_proj.weight")), &act);
            if gemma {
                m = rms(
                    &m,
                    &g(&format!("{p}.post_feedforward_layernorm.weight")).1,
                    true,
                );
            }
            x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
            next.push(x);
        }
        xs = next;
    }
    xs.iter()
        .map(|x| matvec(emb, &rms(x, &g("model.norm.weight").1, gemma)))
        .collect()
}

fn check(arch: Arch, seed: u64) {
    let mut rng = Rng(seed);
    let w = make_weights(arch, &mut rng);
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(dir.path(), arch, &w);
    let snap = Snapshot::open(dir.path()).expect("open tiny model");
    let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
        .expect("load tiny model");
    assert_eq!(
        super::gpu_used(),
        super::gpu_available(),
        "a model loaded on a GPU marks the process (and only then: the CLI ends it early)"
    );
    let ids = [3usize, 17, 1, 29, 4, 11];
    let want = naive_logits(arch, &w, &ids);

    // All positions in one pass (teacher forcing).
    let input: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let mut cache = model.net.new_cache();
    let all = model
        .net
        .forward_all(
            &Array::from_slice(&input, &[1, ids.len() as i32]),
            &mut cache,
        )
        .expect("forward");
    all.eval().expect("eval");
    let got: &[f32] = all.as_slice();
    let mut worst = 0f64;
    for (i, row) in want.iter().enumerate() {
        for (v, &g) in row.iter().zip(&got[i * VOCAB..(i + 1) * VOCAB]) {
            worst = worst.max((v - g as f64).abs());
        }
    }
    assert!(
        worst < 2e-3,
        "one-pass logits differ from the naive model by {worst}"
    );

    // Incremental decoding through the KV cache: prefill 2, then one token at a time.
    let mut cache = model.net.new_cache();
    let mut rows = Vec::new();
    let first = model
        .net
        .forward_last(&Array::from_slice(&input[..2], &[1, 2]), &mut cache)
        .expect("prefill");
    rows.push((1, first));
    for (i, &t) in input.iter().enumerate().skip(2) {
        let l = model
            .net
            .forward_last(&Array::from_slice(&[t], &[1, 1]), &mut cache)
            .expect("decode");
        rows.push((i, l));
    }
    for (i, l) in rows {
        l.eval().expect("eval");
        let got: &[f32] = l.as_slice();
        let d = want[i]
            .iter()
            .zip(got)
            .map(|(v, &g)| (v - g as f64).abs())
            .fold(0.0, f64::max);
        assert!(d < 2e-3, "cached decode at position {i} differs by {d}");
    }
}

#[test]
fn llama_matches_the_naive_reference() {
    check(Arch::Llama, 1);
}

#[test]
fn qwen2_biases_match_the_naive_reference() {
    check(Arch::Qwen2, 2);
}

#[test]
fn qwen3_qk_norms_match_the_naive_reference() {
    check(Arch::Qwen3, 3);
}

#[test]
fn gemma3_sandwich_norms_and_sliding_window_match_the_naive_reference() {
    check(Arch::Gemma3, 4);
}

/// Which sequences (indices into the prompts) decode together at each step of
/// [`check_batch`]: two start, a third joins, one leaves, one steps alone, the rows change
/// order; after the schedule, rows 2 and 0 go on together for `tail` more steps (past the
/// 256-position growth of the shared buffer when `tail` is large).
const BATCH_SCHEDULE: [&[usize]; 7] = [
    &[0, 1],
    &[0, 1],
    &[0, 1, 2],
    &[0, 1, 2],
    &[0, 2],
    &[0],
    &[2, 0],
];

/// Batched decode through MLX (the tiny float32 models never take the host kernels, so this
/// is the GPU's path): every row's logits equal its sequence's own run, step by step, across
/// joins, a leave, a step alone and a change of row order.
fn check_batch(arch: Arch, seed: u64, tail: usize) {
    let w = make_weights(arch, &mut Rng(seed));
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(dir.path(), arch, &w);
    let snap = Snapshot::open(dir.path()).expect("open tiny model");
    let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
        .expect("load tiny model");
    let prompts: [&[i32]; 3] = [&[3, 17, 1, 29, 4], &[11, 2], &[5, 9, 30, 7, 22, 8, 1]];
    let schedule: Vec<Vec<usize>> = BATCH_SCHEDULE
        .iter()
        .map(|s| s.to_vec())
        .chain(std::iter::repeat_n(vec![2, 0], tail))
        .collect();
    let feed = |seq: usize, step: usize| ((seq * 7 + step * 3 + 1) % VOCAB) as u32;
    let prefill = |prompt: &[i32]| {
        let mut cache = model.net.new_cache();
        let input = Array::from_slice(prompt, &[1, prompt.len() as i32]);
        let l = model.net.forward_last(&input, &mut cache).expect("prefill");
        l.eval().expect("eval");
        cache
    };
    let logits = |l: &Array| -> Vec<f32> {
        l.eval().expect("eval");
        l.as_slice::<f32>().to_vec()
    };
    // Each sequence alone, its steps in order.
    let mut alone: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for (s, prompt) in prompts.iter().enumerate() {
        let mut cache = prefill(prompt);
        let steps = schedule.iter().filter(|m| m.contains(&s)).count();
        for t in 0..steps {
            let input = Array::from_slice(&[feed(s, t) as i32], &[1, 1]);
            let l = model.net.forward_last(&input, &mut cache).expect("step");
            alone[s].push(logits(&l));
        }
    }
    // The same steps batched as scheduled.
    let mut caches: Vec<_> = prompts.iter().map(|p| prefill(p)).collect();
    let mut done = vec![0usize; prompts.len()];
    let mut worst = 0f32;
    for (step, members) in schedule.iter().enumerate() {
        let ids: Vec<u32> = members.iter().map(|&s| feed(s, done[s])).collect();
        let mut slots: Vec<Option<&mut super::cache::Cache>> =
            caches.iter_mut().map(Some).collect();
        let mut refs: Vec<&mut super::cache::Cache> = members
            .iter()
            .map(|&s| slots[s].take().expect("each sequence once a step"))
            .collect();
        let got = logits(&model.net.forward_batch(&ids, &mut refs).expect("batch"));
        let lent = refs[0]
            .kv_ref(LAYERS - 1)
            .expect("a key/value layer")
            .in_batch();
        assert_eq!(lent, members.len() > 1, "step {step}: the batch path ran");
        for (row, &s) in members.iter().enumerate() {
            let want = &alone[s][done[s]];
            let d = want
                .iter()
                .zip(&got[row * VOCAB..(row + 1) * VOCAB])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                d < 1e-4,
                "step {step}: sequence {s} differs from its own run by {d}"
            );
            worst = worst.max(d);
            done[s] += 1;
        }
    }
    eprintln!("batched vs alone: worst logit difference {worst}");
}

#[test]
fn llama_batched_decode_matches_each_sequence_alone() {
    check_batch(Arch::Llama, 5, 0);
}

#[test]
fn qwen3_batched_decode_matches_each_sequence_alone() {
    check_batch(Arch::Qwen3, 6, 0);
}

#[test]
fn gemma3_batched_decode_matches_each_sequence_alone_past_buffer_growth() {
    check_batch(Arch::Gemma3, 7, 260);
}
