//! The CPU prefill GEMM: `y = x · dequantize(W)ᵀ` for many input rows (a prompt chunk) and
//! affine 4/8-bit weights, on the host, over MLX's own weight buffers.
//!
//! Why it exists: before it, a prefill chunk ran each quantized layer as MLX `dequantize`
//! (the whole matrix into a new float32 array, one thread) followed by MLX's matmul (OpenBLAS
//! `sgemm`, single-threaded by default: see [`super::blas`]), so one of the two cores sat
//! idle and every layer's weights were written out and read back in full. Here the weight
//! rows are cut into tiles spread over the rayon pool; each task dequantizes its tile into
//! a buffer that stays in cache and multiplies the whole input by it with a single-threaded
//! `cblas_sgemm`, writing its own columns of the output. No OpenBLAS worker threads are
//! involved (none spin on `sched_yield`), and both cores work.
//!
//! Used by `Linear::forward` for inputs of at least `layers::HOST_MATMUL_ROWS` rows when the
//! host kernels are on ([`super::qmv::enabled`]) and `cblas_sgemm` is in the process
//! (OpenBLAS, linked by `build.rs`); otherwise MLX's dequantize + matmul remains.
//! `RMLX_HOST_GEMM=0` turns it off.

use std::sync::OnceLock;

use mlx_rs::Array;
use rayon::prelude::*;

use super::qmv::{Operands, QuantMatrix};
use crate::diagnostic::{Diagnostic, Result};

/// Weight rows per task at most (a tile of 512 rows × 576 columns, SmolLM2's gate|up, is
/// 1.2 MiB of float32; [`MAX_TILE_BYTES`] bounds wider matrices). Each `cblas_sgemm` call packs the whole input
/// chunk again, so fewer, larger tiles pack it less often: 128-token prefill 0.227–0.235 s
/// with 64-row tiles and four per thread, 0.213–0.216 s with these (BENCHMARKS.md, "Round 9
/// (`cold9`): cold probe").
const MAX_TILE_ROWS: usize = 512;

/// Float32 bytes of a tile at most (rows permitting, [`MIN_TILE_ROWS`] first): the tile
/// stays in a core's L2 for the product, also for wide matrices.
const MAX_TILE_BYTES: usize = 3 << 19;

/// Tiles per rayon thread a call is cut into (rows permitting): enough for a thread slowed
/// by a shared core to take fewer.
const TILES_PER_THREAD: usize = 2;

/// Weight rows per task at least (a multiple of 8 keeps sgemm's panels whole).
const MIN_TILE_ROWS: usize = 16;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    libc::c_int,
    libc::c_int,
    libc::c_int,
    libc::c_int,
    libc::c_int,
    libc::c_int,
    f32,
    *const f32,
    libc::c_int,
    *const f32,
    libc::c_int,
    f32,
    *mut f32,
    libc::c_int,
);

const ROW_MAJOR: libc::c_int = 101;
const NO_TRANS: libc::c_int = 111;
const TRANS: libc::c_int = 112;

/// `cblas_sgemm` of the process, looked up once; `None` (logged) when it is absent or the
/// path is turned off.
fn sgemm() -> Option<Sgemm> {
    static SGEMM: OnceLock<Option<Sgemm>> = OnceLock::new();
    *SGEMM.get_or_init(|| {
        if !super::switches::host_gemm() {
            tracing::debug!("host prefill GEMM off (RMLX_HOST_GEMM=0): MLX dequantize + matmul");
            return None;
        }
        let found = lookup_sgemm();
        if found.is_none() {
            tracing::debug!("no cblas_sgemm in the process: prefill keeps MLX dequantize + matmul");
        }
        found
    })
}

#[cfg(unix)]
fn lookup_sgemm() -> Option<Sgemm> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cblas_sgemm".as_ptr()) };
    // SAFETY: the symbol is the CBLAS `cblas_sgemm`, whose C signature `Sgemm` spells out.
    (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Sgemm>(sym) })
}

#[cfg(not(unix))]
fn lookup_sgemm() -> Option<Sgemm> {
    None
}

/// Whether [`matmul_many`] can run here (the host kernels are on and `cblas_sgemm` exists).
pub fn available() -> bool {
    super::qmv::enabled() && sgemm().is_some()
}

/// `y = x · dequantize(W)ᵀ` for `x` (`[..., cols]`, float32) and each of `mats` (sharing the
/// input: q/k/v, gate/up), in one parallel pass. Call only when [`available`].
pub fn matmul_many(x: &Array, mats: &[Operands<'_>]) -> Result<Vec<Array>> {
    let sgemm = sgemm().ok_or_else(|| fail("no cblas_sgemm in this process".into()))?;
    super::qmv::on_host(x, mats, |views, xs| Ok(products(sgemm, views, xs)))
}

/// [`matmul_many`] on host rows: `x` is `[n, cols]` float32 (the residual stream of the
/// host prefill, `decoder`'s host path); each output is `[n, rows]`. Call only when
/// [`available`].
pub fn matmul_many_host(x: &[f32], mats: &[Operands<'_>]) -> Result<Vec<Vec<f32>>> {
    let sgemm = sgemm().ok_or_else(|| fail("no cblas_sgemm in this process".into()))?;
    let views = super::qmv::views(mats)?;
    let cols = views.first().map_or(0, |m| m.dims().1);
    if cols == 0 || !x.len().is_multiple_of(cols) || views.iter().any(|m| m.dims().1 != cols) {
        return Err(fail(format!(
            "{} input values are not rows of every weight's input features",
            x.len()
        )));
    }
    Ok(products(sgemm, &views, x))
}

/// A task: matrix `mat`'s weight rows `first..first + rows`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    mat: usize,
    first: usize,
    rows: usize,
}

/// The `[n, rows]` products of `x` (`[n, cols]`) with each matrix.
fn products(sgemm: Sgemm, mats: &[QuantMatrix<'_>], x: &[f32]) -> Vec<Vec<f32>> {
    let cols = mats[0].dims().1;
    let n = x.len() / cols;
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.dims().0]).collect();
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let tiles = tiles(mats);
    tiles.into_par_iter().for_each(|t| {
        TILE.with_borrow_mut(|buffer| {
            let len = t.rows * mats[t.mat].dims().1;
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            tile_product(
                sgemm,
                &mats[t.mat],
                t,
                (x, n),
                &mut buffer[..len],
                ptrs[t.mat].0,
            );
        });
    });
    outs
}

thread_local! {
    /// A rayon thread's tile buffer, kept from call to call: allocating and zeroing it per
    /// tile was 7% of a 37-token prefill (`__memset` in `perf record`), and every row of it
    /// is written by the dequantization before the product reads it.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One tile's product: matrix `m`'s rows `t.first..t.first + t.rows` dequantized into `tile`
/// (`t.rows × cols` values) and multiplied by `x` (`n × cols`) into columns
/// `t.first..t.first + t.rows` of the `[n, rows]` output at `out`.
fn tile_product(
    sgemm: Sgemm,
    m: &QuantMatrix<'_>,
    t: Tile,
    (x, n): (&[f32], usize),
    tile: &mut [f32],
    out: *mut f32,
) {
    let (rows, cols) = m.dims();
    for (j, row) in tile.chunks_exact_mut(cols).enumerate() {
        m.dequantize_row(t.first + j, row);
    }
    // SAFETY: `x` holds `n × cols` values and the tile `t.rows × cols`; the output at `out`
    // holds `n × rows` values, and this task writes only its columns
    // `t.first..t.first + t.rows` of each output row (tiles do not overlap), so the writes
    // of concurrent tasks never meet; the output outlives the parallel loop (`products`).
    unsafe {
        sgemm(
            ROW_MAJOR,
            NO_TRANS,
            TRANS,
            dim(n),
            dim(t.rows),
            dim(cols),
            1.0,
            x.as_ptr(),
            dim(cols),
            tile.as_ptr(),
            dim(cols),
            0.0,
            out.add(t.first),
            dim(rows),
        );
    }
}

/// Row-major `c = alpha · a · bᵀ` (`trans_b`) or `c = alpha · a · b`, single-threaded
/// `cblas_sgemm` on host slices: `a` is `[m, k]`, `b` `[n, k]` (transposed) or `[k, n]`,
/// `c` `[m, n]`, all dense. Errors when `cblas_sgemm` is absent ([`available`] says) or a
/// slice is too short for the shape.
pub(crate) fn sgemm_host(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
) -> Result<()> {
    let f = sgemm().ok_or_else(|| fail("no cblas_sgemm in this process".into()))?;
    if a.len() < m * k || b.len() < n * k || c.len() < m * n {
        return Err(fail(format!(
            "{m}×{n}×{k} product with {}, {} and {} values",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    let (tb, ldb) = if trans_b { (TRANS, k) } else { (NO_TRANS, n) };
    // SAFETY: the slices hold at least the values the shapes address (checked above).
    unsafe {
        f(
            ROW_MAJOR,
            NO_TRANS,
            tb,
            dim(m),
            dim(n),
            dim(k),
            alpha,
            a.as_ptr(),
            dim(k),
            b.as_ptr(),
            dim(ldb),
            0.0,
            c.as_mut_ptr(),
            dim(n),
        );
    }
    Ok(())
}

/// A matrix dimension as BLAS's `int` (shapes come from MLX arrays, whose dimensions are
/// `i32`, so they fit).
fn dim(v: usize) -> libc::c_int {
    libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX)
}

/// The output buffer of one matrix, shared by the tasks that write its disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks write disjoint columns (see `products`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// The tiles of all matrices: about [`TILES_PER_THREAD`] per thread in all, at most
/// [`MAX_TILE_BYTES`] of float32, between [`MIN_TILE_ROWS`] and
/// [`MAX_TILE_ROWS`] rows each, in multiples of 8.
fn tiles(mats: &[QuantMatrix<'_>]) -> Vec<Tile> {
    let total: usize = mats.iter().map(|m| m.dims().0).sum();
    let cols = mats.first().map_or(1, |m| m.dims().1.max(1));
    let fit = (MAX_TILE_BYTES / (4 * cols)) / 8 * 8;
    let per = (total / (rayon::current_num_threads() * TILES_PER_THREAD)).next_multiple_of(8);
    let per = per.min(fit).clamp(MIN_TILE_ROWS, MAX_TILE_ROWS);
    let mut tiles = Vec::new();
    for (mat, m) in mats.iter().enumerate() {
        let rows = m.dims().0;
        for first in (0..rows).step_by(per) {
            tiles.push(Tile {
                mat,
                first,
                rows: per.min(rows - first),
            });
        }
    }
    tiles
}

fn fail(e: String) -> Diagnostic {
    Diagnostic::error(
        crate::diagnostic::code::Engine::HostGemm,
        format!("host prefill GEMM: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use mlx_rs::ops::{dequantize, quantize};
    use mlx_rs::Array;

    use super::*;
    use crate::engine::tests::values;

    /// Matches MLX's `x · dequantize(W)ᵀ` for 4/8 bits and groups of 32/64, with a row count
    /// that does not divide into the tiles and several matrices at once.
    #[test]
    fn matches_mlx_dequantized_matmul() {
        if !available() {
            panic!("host GEMM unavailable: no AVX2/FMA, no cblas_sgemm, or RMLX_HOST_GEMM=0");
        }
        let (n, cols) = (70, 128);
        let x = Array::from_slice(&values(n * cols, 1), &[n as i32, cols as i32]);
        for (bits, group) in [(4, 32), (8, 64), (4, 64), (8, 32)] {
            let ws: Vec<_> = [200, 72]
                .iter()
                .enumerate()
                .map(|(i, &rows)| {
                    let w = Array::from_slice(
                        &values(rows * cols, 7 + i as u32),
                        &[rows as i32, cols as i32],
                    );
                    quantize(&w, group, bits).expect("quantize")
                })
                .collect();
            let ops: Vec<Operands<'_>> =
                ws.iter().map(|(w, s, b)| (w, s, b, bits, group)).collect();
            let ys = matmul_many(&x, &ops).expect("host gemm");
            for ((w, s, b), y) in ws.iter().zip(ys) {
                let d = dequantize(w, s, Some(b), group, bits).expect("dequantize");
                let want = x.matmul(d.t()).expect("matmul");
                assert_eq!(y.shape(), want.shape());
                let (y, want) = (y.as_slice::<f32>(), want.as_slice::<f32>());
                let err = y
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "{bits}-bit g{group}: max error {err}");
            }
        }
    }
}
