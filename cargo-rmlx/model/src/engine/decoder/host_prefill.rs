//! The CPU prefill of a short prompt chunk with the residual stream on the host, as the
//! decode steps run (`Decoder::hidden_host_decode`): per block the norms, the q|k|v, o and
//! MLP projections (the prefill GEMM, [`crate::engine::gemm`], from
//! `layers::HOST_MATMUL_ROWS` rows; the block kernel below), and attention position by
//! position — each position's keys/values written to the host-held cache, then its query
//! attending over every position before it ([`Attention::host_decode`], so q/k norms, RoPE
//! and sliding windows are the decode step's own). No MLX graph runs between the blocks.
//! One pass serves one sequence's chunk or several sequences' chunks at once
//! (`hidden_host_prefill_together`: the projections over all their rows, each sequence's
//! attention over its own cache); a lone chunk is the pass over one sequence.
//!
//! Why: the MLX path evaluates a graph per layer around the host GEMM and host attention;
//! for the probe's 37-token seed those round trips and MLX's single-threaded element-wise
//! work cost more than the arithmetic. Chunks longer than [`MAX_ROWS`] keep the MLX path
//! (its blocked attention, `attention::prefill`, scales better with length).

use mlx_rs::{Array, Dtype};

use super::{Block, Decoder};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::attention::host::{RopeTable, Scratch};
use crate::engine::attention::Attention;
use crate::engine::cache::{Cache, KvLayer};
use crate::engine::layers::{Linear, HOST_MATMUL_ROWS};

/// Longest chunk prefilled on the host (positions).
pub(super) const MAX_ROWS: usize = 256;

impl Decoder {
    /// Whether a chunk of `rows` positions of one sequence takes [`Self::hidden_host_prefill`]:
    /// the host decode path covers every block, every block attends on the host, the host
    /// GEMM is there, and the chunk is short. Logs once why not when the host decode path is on and it does not.
    pub(super) fn host_prefill(&self, batch: usize, rows: usize) -> bool {
        let capable = *self.host_prefill.get_or_init(|| {
            if !self.host_decode() {
                return false;
            }
            let why_not = if !self.blocks.iter().all(|b| b.attn.host_attention_capable()) {
                Some("some block's attention is not covered on the host")
            } else if !crate::engine::gemm::available() {
                Some("no host GEMM")
            } else {
                None
            };
            if let Some(why) = why_not {
                tracing::debug!("prefill: MLX blocks with host projections ({why})");
            }
            why_not.is_none()
        });
        capable && batch == 1 && (2..=MAX_ROWS).contains(&rows)
    }

    /// The forward pass of one sequence's chunk `x` (`[1, L, hidden]`) on the host (see the
    /// module docs); returns the hidden states `[1, L, hidden]` (float32).
    pub(super) fn hidden_host_prefill(&self, x: Array, cache: &mut Cache) -> Result<Array> {
        let mut out = self.hidden_host_prefill_together(std::slice::from_ref(&x), &mut [cache])?;
        out.pop().ok_or_else(|| {
            Diagnostic::error(
                code::Engine::HostKernel,
                "host prefill returned no hidden states (internal error)",
            )
        })
    }

    /// Whether chunks of `rows` positions of several sequences (one each) may prefill in one
    /// pass ([`Self::hidden_host_prefill_together`]): each takes the host prefill alone, and
    /// with the prefill GEMM (at least `layers::HOST_MATMUL_ROWS` rows), so the kernel of
    /// every projection is the one it would get alone.
    pub(super) fn host_prefill_together(&self, rows: &[usize]) -> bool {
        let gemm_alone = |r: usize| r >= HOST_MATMUL_ROWS as usize;
        rows.len() >= 2
            && rows
                .iter()
                .all(|&r| gemm_alone(r) && self.host_prefill(1, r))
    }

    /// [`Self::hidden_host_prefill`] of several sequences' chunks in one pass: `xs[s]`
    /// (`[1, L_s, hidden]`) on `caches[s]`. Every projection runs once over all the rows
    /// (the GEMM dequantizes and packs each weight tile once for all of them); each sequence
    /// attends over its own cache at its own positions. Returns each sequence's hidden
    /// states `[1, L_s, hidden]` (float32): the values it gets alone, bit for bit (a row's
    /// GEMM product does not depend on the other rows; tested below).
    pub(super) fn hidden_host_prefill_together(
        &self,
        xs: &[Array],
        caches: &mut [&mut Cache],
    ) -> Result<Vec<Array>> {
        let rows: Vec<usize> = xs.iter().map(|x| x.shape()[1] as usize).collect();
        let total: usize = rows.iter().sum();
        let mut h = Vec::new();
        for x in xs {
            let x = x.as_dtype(Dtype::Float32)?;
            h.extend_from_slice(crate::mlx::host::host_slice::<f32>(&x, "embedding")?);
        }
        let width = h.len() / total.max(1);
        let tables = caches
            .iter()
            .zip(&rows)
            .map(|(c, &r)| self.position_tables(c.offset, r))
            .collect::<Result<Vec<_>>>()?;
        let project = |layers: &[&Linear], x: &[f32]| Linear::host_prefill_many(layers, x, total);
        let mut scratch = Scratch::default();
        let attend = |i: usize, block: &Block, mut qkv: Vec<Vec<f32>>| {
            let mut out = Vec::with_capacity(qkv.first().map_or(0, Vec::len));
            for (s, part) in sequence_rows(&mut qkv, &rows)?.into_iter().enumerate() {
                let tables = block.rope.map(|r| tables[s][r].as_slice());
                let kv = caches[s].kv(i)?;
                out.extend(causal_attention(
                    &block.attn,
                    part,
                    kv,
                    tables,
                    &mut scratch,
                )?);
            }
            Ok(out)
        };
        self.host_blocks(&mut h, width, &project, attend)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut rest = h.as_slice();
        for (cache, &r) in caches.iter_mut().zip(&rows) {
            let (mine, tail) = rest.split_at(r * width);
            out.push(Array::from_slice(mine, &[1, r as i32, width as i32]));
            cache.offset += r;
            rest = tail;
        }
        Ok(out)
    }

    /// Per rope (global, then local), the rotation of each of the `rows` positions from
    /// `offset` on.
    fn position_tables(&self, offset: usize, rows: usize) -> Result<Vec<Vec<RopeTable>>> {
        let positions: Vec<usize> = (offset..offset + rows).collect();
        self.ropes
            .iter()
            .map(|rope| RopeTable::at_positions(rope, &positions, self.head_dim))
            .collect()
    }
}

/// A sequence's rows of the projections: `(q, k, v, rows)`.
type Rows<'a> = (&'a mut [f32], &'a mut [f32], &'a [f32], usize);

/// Each sequence's rows of the projections `qkv` (`[q, k, v]`, each `[Σ rows, width]`), in
/// place: per sequence, its `rows[s]` rows of each.
fn sequence_rows<'a>(qkv: &'a mut [Vec<f32>], rows: &[usize]) -> Result<Vec<Rows<'a>>> {
    let [q, k, v] = qkv else {
        return Err(Diagnostic::error(
            code::Engine::HostKernel,
            "host prefill attention without q, k and v (internal error)",
        ));
    };
    let total = rows.iter().sum::<usize>().max(1);
    let (qw, kw) = (q.len() / total, k.len() / total);
    let (mut q, mut k, mut v) = (q.as_mut_slice(), k.as_mut_slice(), v.as_slice());
    let mut parts = Vec::with_capacity(rows.len());
    for &r in rows {
        let (qs, q_rest) = std::mem::take(&mut q).split_at_mut(r * qw);
        let (ks, k_rest) = std::mem::take(&mut k).split_at_mut(r * kw);
        let (vs, v_rest) = v.split_at(r * kw);
        parts.push((qs, ks, vs, r));
        (q, k, v) = (q_rest, k_rest, v_rest);
    }
    Ok(parts)
}

/// Causal attention of a chunk's `rows` projected rows (`q`, `k`, `v`, each `[L, heads ·
/// head_dim]`) over `layer`: position by position, its key/value appended and its query
/// attending over every position held. `tables[p]` rotates position `p` (`None`: a NoPE
/// layer). Returns the `[L, heads · head_dim]` input of `o_proj`.
fn causal_attention(
    a: &Attention,
    (q, k, v, rows): Rows<'_>,
    layer: &mut KvLayer,
    tables: Option<&[RopeTable]>,
    scratch: &mut Scratch,
) -> Result<Vec<f32>> {
    let rows = rows.max(1);
    let (qw, kw) = (q.len() / rows, k.len() / rows);
    let mut out = vec![0f32; q.len()];
    let positions = q
        .chunks_mut(qw)
        .zip(k.chunks_mut(kw))
        .zip(v.chunks(kw))
        .zip(out.chunks_mut(qw));
    for (p, (((q, k), v), out)) in positions.enumerate() {
        let table = tables.map(|t| &t[p]);
        a.host_decode([q, k], v, layer, table, scratch, out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use mlx_rs::Array;

    use crate::engine::{gemm, qmv, DtypePolicy, Model};
    use crate::gguf::{import_to, Existing, ImportOptions};
    use crate::snapshot::Snapshot;

    /// The network of SmolLM2 4-bit (its GGUF converted as `cargo rmlx convert
    /// --keep-quantized` converts it, here in the test process and cached under its own name,
    /// so the library's tests need no other test to have run first), loaded as every caller
    /// loads it.
    fn smollm2_q4() -> Model {
        let this = std::env::current_exe().expect("the test executable's path");
        let dir = rmlx_test_support::converted_with(
            "smollm2-q4-lib",
            &this,
            &["--keep-quantized"],
            |gguf, out| {
                let opts = ImportOptions::default();
                import_to(gguf, out, &opts, Existing::Refuse)
                    .map(|_| ())
                    .map_err(|d| d.message.clone())
            },
        );
        let snapshot = Snapshot::open(&dir).expect("open the converted SmolLM2 4-bit");
        Model::load(&snapshot, DtypePolicy::Auto).expect("load SmolLM2 4-bit")
    }

    /// Largest |a - b| of two float32 arrays of the same size.
    fn max_diff(a: &Array, b: &Array) -> f32 {
        let (a, b) = (a.as_slice::<f32>(), b.as_slice::<f32>());
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// An 18-position chunk after a cached 2-position one, prefilled on the host (GEMM
    /// projections, attention position by position), gives every position the logits the
    /// host decode path gives feeding the same tokens one at a time, and leaves a cache from
    /// which the next step's logits agree too. (The MLX path and mlx-lm are compared by the
    /// oracle tests, `cargo test --workspace --test e2e oracle`.)
    #[test]
    fn host_prefill_matches_token_by_token_decode() {
        assert!(
            qmv::enabled() && gemm::available(),
            "host kernels or host GEMM unavailable (needs AVX2/FMA and cblas_sgemm)"
        );
        let net = &smollm2_q4().net;
        let ids: Vec<i32> = (0..20).map(|i| 200 + 997 * i % 40000).collect();
        let (head, chunk) = ids.split_at(2);
        let mut prefilled = net.new_cache();
        net.forward_all(&Array::from_slice(head, &[1, 2]), &mut prefilled)
            .expect("first chunk");
        let all = net
            .forward_all(
                &Array::from_slice(chunk, &[1, chunk.len() as i32]),
                &mut prefilled,
            )
            .expect("host prefill");
        let mut stepped = net.new_cache();
        let mut worst = 0f32;
        for (p, &t) in ids.iter().enumerate() {
            let one = Array::from_slice(&[t], &[1, 1]);
            let want = net.forward_last(&one, &mut stepped).expect("decode step");
            if let Some(row) = p.checked_sub(head.len()) {
                let got = all.take_axis(Array::from_int(row as i32), 0).expect("row");
                worst = worst.max(max_diff(&got, &want));
            }
        }
        let next = Array::from_slice(&[4242], &[1, 1]);
        let after_prefill = net.forward_last(&next, &mut prefilled).expect("step");
        let after_steps = net.forward_last(&next, &mut stepped).expect("step");
        worst = worst.max(max_diff(&after_prefill, &after_steps));
        // Logits here reach |20|; GEMM and the block kernel sum in different orders (measured
        // 6.5e-5).
        assert!(worst < 1e-3, "largest logit difference {worst}");
    }

    /// Prompt ids for the tests below: `n` tokens drawn from `seed`.
    fn prompt(seed: i32, n: usize) -> Vec<i32> {
        (0..n as i32)
            .map(|i| 100 + (seed * 7919 + 997 * i) % 40000)
            .collect()
    }

    /// Three sequences' chunks (16, 20 and 31 tokens after cached heads of 2, 27 and 5
    /// positions) prefilled in one pass give each the last-position logits it gets alone,
    /// bit for bit, and leave caches from which the next step's logits are bit-identical too.
    #[test]
    fn prefill_together_matches_alone_bit_for_bit() {
        let net = &smollm2_q4().net;
        let shapes = [(2usize, 16usize), (27, 20), (5, 31)];
        let mut alone = Vec::new();
        let mut together = Vec::new();
        let mut chunks = Vec::new();
        for (s, &(head, len)) in shapes.iter().enumerate() {
            let ids = prompt(s as i32 + 1, head + len);
            let mut cache = net.new_cache();
            let first = Array::from_slice(&ids[..head], &[1, head as i32]);
            net.forward_last(&first, &mut cache)
                .expect("head")
                .eval()
                .expect("eval");
            together.push(cache.clone());
            alone.push(cache);
            chunks.push(Array::from_slice(&ids[head..], &[1, len as i32]));
        }
        let mut caches: Vec<&mut crate::engine::cache::Cache> = together.iter_mut().collect();
        let got = net
            .forward_last_together(&chunks, &mut caches)
            .expect("pass")
            .expect("chunks of 16 or more tokens prefill together");
        let next = Array::from_slice(&[4242], &[1, 1]);
        for ((chunk, cache), (got, other)) in chunks
            .iter()
            .zip(&mut alone)
            .zip(got.iter().zip(&mut together))
        {
            let want = net.forward_last(chunk, cache).expect("alone");
            assert_eq!(
                got.as_slice::<f32>(),
                want.as_slice::<f32>(),
                "prefill logits"
            );
            assert_eq!(other.offset, cache.offset);
            let a = net.forward_last(&next, cache).expect("step");
            let b = net.forward_last(&next, other).expect("step");
            assert_eq!(
                a.as_slice::<f32>(),
                b.as_slice::<f32>(),
                "next step's logits"
            );
        }
    }

    /// A chunk shorter than the prefill GEMM's rows takes the block kernel alone, so it does
    /// not prefill together: nothing runs and the caller goes one at a time.
    #[test]
    fn short_chunks_do_not_prefill_together() {
        let net = &smollm2_q4().net;
        let chunks = [
            Array::from_slice(&prompt(1, 8), &[1, 8]),
            Array::from_slice(&prompt(2, 20), &[1, 20]),
        ];
        let (mut a, mut b) = (net.new_cache(), net.new_cache());
        let out = net
            .forward_last_together(&chunks, &mut [&mut a, &mut b])
            .expect("no error");
        assert!(out.is_none());
        assert_eq!((a.offset, b.offset), (0, 0));
    }
}
