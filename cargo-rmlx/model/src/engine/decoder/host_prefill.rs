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

use super::{host_mlp, norm_rows, Decoder};
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
        for (i, block) in self.blocks.iter().enumerate() {
            let a = &block.attn;
            let n = norm_rows(&block.input_norm, &h, width)?;
            let qkv = project(&[&a.q_proj, &a.k_proj, &a.v_proj], &n)?;
            let tables = block.rope.map(|r| tables[r].as_slice());
            let o = causal_attention(a, (qkv, rows), cache.kv(i)?, tables, &mut scratch)?;
            let r = project(&[&a.o_proj], &o)?.remove(0);
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
            let n = norm_rows(&block.post_attn_norm, &h, width)?;
            let r = host_mlp(block, &n, &project)?;
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
        }
        cache.offset += rows;
        Ok(Array::from_slice(&h, &shape))
    }

    /// Per rope (global, then local), the rotation of each of the `rows` positions from
    /// `offset` on.
    fn position_tables(&self, offset: usize, rows: usize) -> Result<Vec<Vec<RopeTable>>> {
        self.ropes
            .iter()
            .map(|rope| {
                (offset..offset + rows)
                    .map(|p| RopeTable::new(rope, p, self.head_dim))
                    .collect()
            })
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
