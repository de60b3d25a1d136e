//! The CPU prefill of a short prompt chunk with the residual stream on the host, as the
//! decode steps run (`Decoder::hidden_host_decode`): per block the norms, the q|k|v, o and
//! MLP projections (the prefill GEMM, [`crate::engine::gemm`], from
//! `layers::HOST_MATMUL_ROWS` rows; the block kernel below), and attention position by
//! position — each position's keys/values written to the host-held cache, then its query
//! attending over every position before it ([`Attention::host_decode`], so q/k norms, RoPE
//! and sliding windows are the decode step's own). No MLX graph runs between the blocks.
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
use crate::engine::layers::Linear;

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
        let shape = x.shape().to_vec();
        let x = x.as_dtype(Dtype::Float32)?;
        let mut h = crate::mlx::host::host_slice::<f32>(&x, "embedding")?.to_vec();
        let rows = shape[1] as usize;
        let width = h.len() / rows.max(1);
        let tables = self.position_tables(cache.offset, rows)?;
        let project = |layers: &[&Linear], x: &[f32]| Linear::host_prefill_many(layers, x, rows);
        let mut scratch = Scratch::default();
        let attend = |i: usize, block: &Block, qkv: Vec<Vec<f32>>| {
            let tables = block.rope.map(|r| tables[r].as_slice());
            causal_attention(&block.attn, (qkv, rows), cache.kv(i)?, tables, &mut scratch)
        };
        self.host_blocks(&mut h, width, &project, attend)?;
        cache.offset += rows;
        Ok(Array::from_slice(&h, &shape))
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

/// Causal attention of a chunk's `rows` projected rows (`[q, k, v]`, each `[L, heads · head_dim]`)
/// over `layer`: position by position, its key/value appended and its query attending over
/// every position held. `tables[p]` rotates position `p` (`None`: a NoPE layer). Returns the
/// `[L, heads · head_dim]` input of `o_proj`.
fn causal_attention(
    a: &Attention,
    (qkv, rows): (Vec<Vec<f32>>, usize),
    layer: &mut KvLayer,
    tables: Option<&[RopeTable]>,
    scratch: &mut Scratch,
) -> Result<Vec<f32>> {
    let Ok([mut q, mut k, v]) = <[Vec<f32>; 3]>::try_from(qkv) else {
        return Err(Diagnostic::error(
            code::Engine::HostKernel,
            "host prefill attention without q, k and v (internal error)",
        ));
    };
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

    use crate::engine::network::Net;
    use crate::engine::{gemm, qmv, DtypePolicy, Model};
    use crate::gguf::{import_to, Existing, ImportOptions};
    use crate::snapshot::Snapshot;

    /// The network of SmolLM2 4-bit (its GGUF converted as `cargo rmlx convert
    /// --keep-quantized` converts it, here in the test process and cached under its own name,
    /// so the library's tests need no other test to have run first), loaded as every caller
    /// loads it.
    fn smollm2_q4() -> Net {
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
        Model::load(&snapshot, DtypePolicy::Auto)
            .expect("load SmolLM2 4-bit")
            .net
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
        let net = &smollm2_q4();
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
}
