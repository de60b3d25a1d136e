//! Causal attention of a prompt chunk on the host (CPU prefill): the queries of a chunk of
//! at least [`MIN_ROWS`] positions over every key before them, computed in blocks of
//! [`BLOCK`] queries spread over the rayon pool. Each block multiplies its queries by the
//! keys it can see (`cblas_sgemm`, see [`crate::engine::gemm::sgemm_host`]), takes the
//! masked softmax of that `[BLOCK, keys]` tile in place and multiplies it by the values — no
//! `[L, L]` score matrix and no mask array is ever built, and the future keys of a block are
//! not even multiplied. MLX's CPU attention, which this replaces for long global-attention
//! prompts, materialises the scores and runs its softmax on one thread.
//!
//! Used by [`super::attend`] for float32 global (or not yet sliding) causal attention
//! without sinks when the host prefill GEMM is available; everything else keeps MLX's.

use mlx_rs::{Array, Dtype};
use rayon::prelude::*;

use crate::diagnostic::Result;
use crate::engine::gemm;

/// Query positions from which a chunk attends on the host (shorter ones keep MLX's kernel).
pub const MIN_ROWS: usize = 16;

/// Query positions per task.
const BLOCK: usize = 64;

/// Whether [`attend`] takes these operands: float32 `q`/`k`/`v` of rank 4 with at least
/// [`MIN_ROWS`] queries, and the host GEMM available.
pub fn applies(q: &Array, k: &Array, v: &Array) -> bool {
    q.ndim() == 4
        && q.shape()[2] as usize >= MIN_ROWS
        && [q, k, v].iter().all(|a| a.dtype() == Dtype::Float32)
        && gemm::available()
}

/// Causal scaled dot-product attention: `q` `[B, H, L, d]` are the last `L` of the `T`
/// positions of `k`/`v` (`[B, KVH, T, d]`, `H` a multiple of `KVH`); query `i` sees keys
/// `0..=T - L + i`. Returns `[B, H, L, d]`.
pub fn attend(q: &Array, k: &Array, v: &Array, scale: f32) -> Result<Array> {
    let [b, heads, l, d] = dims(q);
    let [_, kv_heads, total, _] = dims(k);
    let (q, k, v) = (host(q)?, host(k)?, host(v)?);
    let group = (heads / kv_heads.max(1)).max(1);
    let first = total - l;
    let mut out = vec![0f32; b * heads * l * d];
    let tasks: Vec<(usize, usize, &mut [f32])> = out
        .chunks_mut(l * d)
        .enumerate()
        .flat_map(|(bh, o)| {
            o.chunks_mut(BLOCK * d)
                .enumerate()
                .map(move |(blk, o)| (bh, blk * BLOCK, o))
        })
        .collect();
    tasks
        .into_par_iter()
        .try_for_each_init(Vec::new, |scores, (bh, q0, out)| {
            let (bi, h) = (bh / heads, bh % heads);
            let kvh = bi * kv_heads + h / group;
            let rows = out.len() / d;
            let keys = first + q0 + rows;
            let qs = &q[(bh * l + q0) * d..][..rows * d];
            let ks = &k[kvh * total * d..][..keys * d];
            let vs = &v[kvh * total * d..][..keys * d];
            scores.resize(rows * keys, 0.0);
            gemm::sgemm_host((rows, keys, d), scale, qs, ks, true, scores)?;
            for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
                let (seen, future) = row.split_at_mut(first + q0 + i + 1);
                super::host::softmax(seen);
                future.fill(0.0);
            }
            gemm::sgemm_host((rows, d, keys), 1.0, scores, vs, false, out)
        })?;
    Ok(Array::from_slice(
        &out,
        &[b as i32, heads as i32, l as i32, d as i32],
    ))
}

/// The four dimensions of a rank-4 array (checked by [`applies`]).
fn dims(a: &Array) -> [usize; 4] {
    std::array::from_fn(|i| a.shape()[i] as usize)
}

/// A row-contiguous host copy of `a`.
fn host(a: &Array) -> Result<Vec<f32>> {
    let c = a.contiguous()?;
    Ok(c.try_as_slice::<f32>()
        .map_err(|e| {
            crate::diagnostic::Diagnostic::error(
                crate::diagnostic::code::Engine::HostAttention,
                format!("prefill attention operand: {e}"),
            )
        })?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};

    use super::*;

    fn array(shape: [usize; 4], seed: u32) -> Array {
        let v = crate::engine::tests::values(shape.iter().product(), seed);
        Array::from_slice(&v, &shape.map(|d| d as i32))
    }

    /// Matches MLX's causal attention with grouped heads, for a chunk that starts at the
    /// first position and one that follows cached positions, with a last partial block.
    #[test]
    fn matches_mlx_causal_attention() {
        assert!(
            gemm::available(),
            "host GEMM unavailable (needs AVX2/FMA and cblas_sgemm)"
        );
        for (l, total) in [(130, 130), (70, 200)] {
            let q = array([1, 6, l, 32], 1);
            let k = array([1, 2, total, 32], 2);
            let v = array([1, 2, total, 32], 3);
            assert!(applies(&q, &k, &v));
            let got = attend(&q, &k, &v, 0.3).expect("host attention");
            let mask = Some(ScaledDotProductAttentionMask::Causal);
            let want = scaled_dot_product_attention(&q, &k, &v, 0.3, mask, None).expect("mlx");
            assert_eq!(got.shape(), want.shape());
            let (g, w) = (got.as_slice::<f32>(), want.as_slice::<f32>());
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4,
                    "L {l} T {total} value {i}: {a} vs mlx {b}"
                );
            }
        }
    }
}
