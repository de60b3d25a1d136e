//! The AMX kernels of `engine::qmv`: affine 4- and 8-bit weights against one to five float32
//! inputs per pass over the weights, on processors with AMX-TILE and AMX-INT8 whose kernel
//! grants the tile data (chosen at run time by `qmv::family`).
//!
//! Arithmetic: MLX's affine factoring gives each output
//! `Σ_g s[g] · Σ_{k∈g} q[k] · x[k] + b[g] · Σ_{k∈g} x[k]`. The integer weights `q` (0–15 or
//! 0–255) are the unsigned bytes of `TDPBSUD`; each input is written, per weight group, as
//! three signed 8-bit limbs `x ≈ a₁·S₁ + a₂·S₂ + a₃·S₃` (`S₁ = max|x|/127` over the group,
//! `S₂ = S₁/254`, `S₃ = S₂/254`, each limb the rounded remainder of the ones before), so the
//! representation error is at most `S₃/2 ≈ 6·10⁻⁸ · max|x|` of the group — float32's
//! rounding of the group's largest value. The tile unit sums `a · q` exactly in int32, and
//! the float32 epilogue folds each group in per input: `t = C₃S₃ + C₂S₂ + C₁S₁`, then
//! `acc += s · t + b · Σx` (the bias on the exact float Σx of the float kernels).
//!
//! Tiles (lanes = weight rows): A = the limbs, row `3i + l` = input `i`'s limb `l`, T bytes
//! (T = 64, or 32 for groups that are not a multiple of 64) of the group's values in the
//! weights' column order (4-bit rows unpacked per T columns to [low nibbles, high nibbles],
//! the inputs' values reordered alike), prepared once per call; B = 16 weight rows in
//! `TDPBSUD`'s layout (T/4 rows of 16 weight rows × 4 consecutive bytes: a 16 × 16 transpose
//! of 32-bit elements per 64 columns), read from the matrix's [`Layout`] — made once, kept
//! by the caller: 8-bit bytes in place, 4-bit nibbles unpacked per round — or, without one,
//! transposed in registers while a block's span of up to [`SPAN`] columns is unpacked, row
//! after row (the same bytes either way); C = 3 × inputs rows of 16 int32 lanes, one
//! lane per weight row, one C tile per group of a round of four groups (tiles 4–7). The fold
//! costs a few vector operations per (group, input) — the weight rows' scales and biases
//! gathered once per group — and one 16-lane accumulator per input holds the block's results.
//!
//! Why an input's result does not depend on the others: every row of C is computed from its
//! own row of A; an input's limbs and scales depend on that input alone; the fold takes each
//! input's C rows with the same operations in the same order whatever the other inputs. A
//! batch of more than five inputs takes several passes.

use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::QuantMatrix;

/// Inputs one pass takes at most: three limb rows each in the 16 rows of a tile.
pub(super) const BLOCK: usize = 5;

/// Weight rows per block (B tile columns, C lanes).
pub(super) const ROWS: usize = 16;

/// Columns of weights unpacked together at most (a span of rounds, row after row): the two
/// spans of B tiles (2 × 768 × 16 bytes) and the inputs' limbs stay within L1.
const SPAN: usize = 768;

/// Lanes of a C tile row (one per weight row).
const COLS: usize = 16;

/// Bytes of a B or C tile row (16 × 4).
const ROW_BYTES: usize = 64;

/// Groups whose products one round of tile operations computes, each in its own C tile.
const ROUND: usize = 4;

/// One cache line: the unit of the buffers the tiles load and store. A tile row that
/// crosses a line costs seven times as much (`tileloadd` of 16 rows of 64 bytes: 18 ns at
/// an offset of 16 bytes, 2.6 ns aligned, measured here).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `n` zeroed lines.
fn lines(n: usize) -> Vec<Line> {
    vec![Line([0; 64]); n]
}

/// A round's C tiles, stored as up to 16 rows (3 × inputs) of 16 int32 each, line-aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Products([[[i32; COLS]; ROWS]; ROUND]);

/// Whether this process may run the AMX kernels: the processor has AMX-TILE, AMX-INT8,
/// AVX-512F/BW, and the kernel granted this process the tile data (`arch_prctl`). Asked
/// once per process; the error says what is missing.
pub(super) fn available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(detect).clone()
}

fn detect() -> Result<(), String> {
    if !std::arch::is_x86_feature_detected!("avx512f")
        || !std::arch::is_x86_feature_detected!("avx512bw")
    {
        return Err("no AVX-512F/BW on this processor".into());
    }
    let leaf7 = __cpuid_count(7, 0);
    let (tile, int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
    if !(tile && int8) {
        return Err("no AMX-TILE and AMX-INT8 on this processor".into());
    }
    request_tile_data()
}

/// Asks the kernel for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`):
/// Linux grants it per process, once, before any thread uses a tile.
fn request_tile_data() -> Result<(), String> {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this request only changes the process's permitted extended state.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("the kernel did not grant the AMX tile data ({e})"));
    }
    Ok(())
}

/// `LDTILECFG`'s 64-byte layout (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Tiles 0–1: A (`m` limb rows of `t` bytes); 2–3: B (`t / 4` rows of 64 bytes); 4–7: C
    /// (`m` rows of 64 bytes).
    const fn new(t: usize, m: usize) -> Self {
        let (a, b, c) = (t as u16, ROW_BYTES as u16, ROW_BYTES as u16);
        let (b_rows, m) = ((t / 4) as u8, m as u8);
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [a, a, b, b, c, c, c, c, 0, 0, 0, 0, 0, 0, 0, 0],
            rows: [m, m, b_rows, b_rows, m, m, m, m, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }
}

/// The tiles configured on this thread for the life of the value, released when it drops
/// (a context switch then saves no tile data).
struct Tiles;

impl Tiles {
    /// Tiles of `t` columns of limbs for `m` limb rows.
    ///
    /// # Safety
    /// [`available`] must have returned `Ok`.
    unsafe fn configure(t: usize, m: usize) -> Tiles {
        let config = TileConfig::new(t, m);
        asm!("ldtilecfg [{}]", in(reg) &config, options(nostack));
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: only a configured `Tiles` exists, so AMX is available.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// The columns of a tile: 64, or 32 where the group is not a multiple of 64.
fn tile_cols(group: usize) -> usize {
    if group.is_multiple_of(64) {
        64
    } else {
        32
    }
}

/// Up to [`BLOCK`] inputs prepared for the tiles.
pub(super) struct Inputs {
    /// A tiles: row `3i + l` (of `cols` bytes) holds input `i`'s limb `l` at every column,
    /// in the weights' column order; a tile of columns `c..c + T` starts at byte `c`.
    limbs: Vec<Line>,
    /// Per group, per input: the limb scales `S₁, S₂, S₃`.
    scales: Vec<[[f32; 3]; BLOCK]>,
    /// Per group, per input: Σx.
    sums: Vec<[f32; BLOCK]>,
    /// Bytes between limb rows (the matrix's columns).
    stride: usize,
    /// How many inputs (1 to [`BLOCK`]).
    count: usize,
}

/// The limb scales of a group whose largest magnitude is `max`, and their reciprocals.
#[cfg(test)]
fn limb_scales(max: f32) -> ([f32; 3], [f32; 3]) {
    let s1 = max / 127.0;
    let s = [s1, s1 / 254.0, s1 / (254.0 * 254.0)];
    let inv = s.map(|s| {
        if s > 0.0 && s.is_finite() {
            1.0 / s
        } else {
            0.0
        }
    });
    (s, inv)
}

/// The largest of the 16 lanes of `v` (none NaN). Not `_mm512_reduce_max_ps`: its generic
/// reduction keeps NaN semantics lane by lane (a scalar chain, most of this preparation's
/// time in `perf`).
#[target_feature(enable = "avx512f,avx2")]
#[inline]
unsafe fn lane_max(v: __m512) -> f32 {
    let quarters = [
        _mm512_extractf32x4_ps::<0>(v),
        _mm512_extractf32x4_ps::<1>(v),
        _mm512_extractf32x4_ps::<2>(v),
        _mm512_extractf32x4_ps::<3>(v),
    ];
    let m = _mm_max_ps(
        _mm_max_ps(quarters[0], quarters[1]),
        _mm_max_ps(quarters[2], quarters[3]),
    );
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ps(m, _mm_shuffle_ps::<0b01>(m, m)))
}

/// [`limb_scales`] of every group of `x` (a whole number of groups of a multiple of 16
/// values), sixteen groups per vector operation: the same IEEE divisions, so the same bits
/// (test `vector_limb_scales_are_the_scalar_ones`). The largest magnitude skips NaNs, as
/// `f32::max` does (`vmaxps` returns its second operand where the first is NaN).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn group_limb_scales(x: &[f32], group: usize) -> Vec<([f32; 3], [f32; 3])> {
    debug_assert!(group.is_multiple_of(16) && x.len().is_multiple_of(group));
    let groups = x.len() / group;
    let mut maxes = vec![0f32; groups.next_multiple_of(16)];
    for (m, xg) in maxes.iter_mut().zip(x.chunks_exact(group)) {
        let mut acc = _mm512_setzero_ps();
        for c in xg.chunks_exact(16) {
            acc = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(c.as_ptr())), acc);
        }
        *m = lane_max(acc);
    }
    let (zero, inf, one) = (
        _mm512_setzero_ps(),
        _mm512_set1_ps(f32::INFINITY),
        _mm512_set1_ps(1.0),
    );
    let mut out = Vec::with_capacity(maxes.len());
    for m in maxes.chunks_exact(16) {
        let s1 = _mm512_div_ps(_mm512_loadu_ps(m.as_ptr()), _mm512_set1_ps(127.0));
        let s = [
            s1,
            _mm512_div_ps(s1, _mm512_set1_ps(254.0)),
            _mm512_div_ps(s1, _mm512_set1_ps(254.0 * 254.0)),
        ];
        let inv = s.map(|v| {
            let usable = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, zero)
                & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, inf);
            _mm512_maskz_div_ps(usable, one, v)
        });
        let [s, inv] = [s, inv].map(|v| std::mem::transmute::<[__m512; 3], [[f32; 16]; 3]>(v));
        for k in 0..16 {
            out.push((
                [s[0][k], s[1][k], s[2][k]],
                [inv[0][k], inv[1][k], inv[2][k]],
            ));
        }
    }
    out.truncate(groups);
    out
}

impl Inputs {
    /// `xs` (1 to [`BLOCK`] rows of `m.cols` values) for matrix `m`.
    ///
    /// # Safety
    /// [`available`] must have returned `Ok` (AVX-512F/BW); each of `xs` holds `m.cols`
    /// values.
    pub(super) unsafe fn new(xs: &[&[f32]], m: &QuantMatrix<'_>) -> Self {
        debug_assert!((1..=BLOCK).contains(&xs.len()));
        debug_assert!(xs.iter().all(|x| x.len() == m.cols));
        let groups = m.cols / m.group;
        let mut inputs = Inputs {
            limbs: lines((3 * xs.len() * m.cols).div_ceil(64)),
            scales: vec![[[0f32; 3]; BLOCK]; groups],
            sums: vec![[0f32; BLOCK]; groups],
            stride: m.cols,
            count: xs.len(),
        };
        for (i, x) in xs.iter().enumerate() {
            let scales = group_limb_scales(x, m.group);
            for ((g, xg), scales) in x.chunks_exact(m.group).enumerate().zip(scales) {
                inputs.scales[g][i] = scales.0;
                inputs.sums[g][i] = super::lane_sum(xg);
                let row = inputs.limbs.as_mut_ptr().cast::<i8>();
                let at = 3 * i * m.cols + g * m.group;
                group_limbs(xg, m.bits, scales, (row.add(at), m.cols));
            }
        }
        inputs
    }
}

/// One group's values `xg` as limbs in the A rows from `a` (limb 1's row at the group's first
/// column; limb `l`'s row `l · stride` bytes on): per tile of T values in the weights' column
/// order, per 16 of them, the three limbs of each (see [`limbs16`]).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn group_limbs(
    xg: &[f32],
    bits: usize,
    (s, inv): ([f32; 3], [f32; 3]),
    (a, stride): (*mut i8, usize),
) {
    let t = tile_cols(xg.len());
    let s = s.map(|v| _mm512_set1_ps(v));
    let inv = inv.map(|v| _mm512_set1_ps(v));
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    let x = xg.as_ptr();
    for c0 in (0..xg.len()).step_by(t) {
        let tile = a.add(c0);
        for h in (0..t).step_by(32) {
            let (lo, hi) = (
                _mm512_loadu_ps(x.add(c0 + h)),
                _mm512_loadu_ps(x.add(c0 + h + 16)),
            );
            // Positions p..p + 16 of the tile.
            let (first, second, p1, p2) = if bits == 4 {
                let e = _mm512_permutex2var_ps(lo, even, hi);
                let o = _mm512_permutex2var_ps(lo, odd, hi);
                (e, o, h / 2, t / 2 + h / 2)
            } else {
                (lo, hi, h, h + 16)
            };
            limbs16(first, (s, inv), (tile.add(p1), stride));
            limbs16(second, (s, inv), (tile.add(p2), stride));
        }
    }
}

/// The three limbs of 16 values (`v ≈ Σ a_l · S_l`: each the remainder of the ones
/// before — a fused multiply-add, so rounded once — times `1/S_l`, rounded to nearest,
/// clamped to ±127, which only a rounded scale reaches): limb `l`'s 16 bytes at
/// `dst + l · stride`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn limbs16(
    v: __m512,
    (s, inv): ([__m512; 3], [__m512; 3]),
    (dst, stride): (*mut i8, usize),
) {
    let (top, bottom) = (_mm512_set1_ps(127.0), _mm512_set1_ps(-127.0));
    let mut rest = v;
    for l in 0..3 {
        let a = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(rest, inv[l]),
        );
        let a = _mm512_max_ps(_mm512_min_ps(a, top), bottom);
        rest = _mm512_fnmadd_ps(a, s[l], rest);
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(a));
        _mm_storeu_si128(dst.add(l * stride).cast(), bytes);
    }
}

/// Weight rows `first..first + rows` of `m` against `x`: `out` is the task's `[rows, n]`
/// block, input `k` of `x` written to column `start + k` ([`Dest::RowsN`]), or each input's
/// part of those rows ([`Dest::Inputs`]). With `laid` (`m`'s [`Layout`]) the tiles read the
/// weights from there (in place, or unpacked per round from nibbles); without, each call
/// transposes them.
///
/// # Safety
/// [`available`] must have returned `Ok`; `x` prepared for `m`; `laid` made from `m`;
/// `first` a multiple of [`ROWS`] and `first + rows ≤ m.rows`; `out` holds `rows · n` values
/// (or `n` parts of `rows` values) and `start + x.count ≤ n`.
pub(super) unsafe fn rows(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    laid: Option<&Layout>,
    at: (usize, usize, usize, usize),
    out: &mut Dest<'_, '_>,
) {
    let _tiles = Tiles::configure(tile_cols(m.group), 3 * x.count);
    debug_assert!(laid.is_none_or(|l| l.fits(m) && at.0.is_multiple_of(ROWS)));
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // Two spans of B rows: 16 bytes per column.
    let need = 2 * COLS * (ROUND * m.group).max(SPAN) / 4;
    if scratch.len() < need {
        scratch = lines(need);
    }
    // SAFETY: lines are plain bytes.
    let bytes = std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), need * 64);
    if m.bits == 8 {
        run::<8>(m, x, at, out, (laid, bytes));
    } else {
        run::<4>(m, x, at, out, (laid, bytes));
    }
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
}

thread_local! {
    /// The B tiles of [`rows`], two spans' worth, kept by each thread across calls (every
    /// byte a tile reads is written first in the same call).
    static SCRATCH: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`rows`] for `BITS`-bit weights (`BITS` only matters to a transpose): blocks of 16 rows,
/// each in rounds of up to [`ROUND`] groups, pipelined over the whole task: while the tile
/// unit multiplies round `k`, the vector units fold round `k - 1`'s products (stored to the
/// other half of `c`) and prepare round `k + 1`'s B tiles: in place in a byte layout, or in
/// the other half of the scratch — unpacked from a nibble layout ([`Layout::source`]), or
/// without a layout transposed (the last round of a span transposes the next span of the
/// block, or the next block's first, see [`span_source`]); and the next block's bytes
/// (packed, or laid out) are asked of the cache, a share per round.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn run<const BITS: usize>(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    (first, rows, start, n): (usize, usize, usize, usize),
    out: &mut Dest<'_, '_>,
    (laid, scratch): (Option<&Layout>, &mut [u8]),
) {
    let groups = m.cols / m.group;
    let per_round = groups.div_ceil(groups.div_ceil(ROUND));
    let rounds = groups.div_ceil(per_round);
    // Rounds transposed together, row after row (a span of at most `SPAN` columns).
    let span_rounds = (SPAN / (per_round * m.group)).clamp(1, rounds);
    let spans = rounds.div_ceil(span_rounds);
    let span_groups = span_rounds * per_round;
    let half = COLS * span_groups * m.group;
    let place = |k: usize| {
        let b = k / rounds * ROWS;
        let g0 = k % rounds * per_round;
        Round {
            rows: (first + b, ROWS.min(rows - b)),
            g0,
            count: per_round.min(groups - g0),
        }
    };
    let total = rows.div_ceil(ROWS) * rounds;
    let mut acc = [_mm512_setzero_ps(); BLOCK];
    let mut c = [Products([[[0i32; COLS]; ROWS]; ROUND]); 2];
    let scratch = scratch.as_mut_ptr();
    let source = |k: usize| {
        let round = place(k);
        match laid {
            Some(laid) => {
                let to = scratch.add(k % 2 * ROUND * m.group * COLS);
                laid.source(m, (round.rows.0, round.g0, round.count), to)
            }
            None => {
                let parity = k / rounds * spans + k % rounds / span_rounds;
                let to = scratch.add(parity % 2 * half);
                span_source::<BITS>(m, round.rows, (round.g0, span_groups), to)
            }
        }
    };
    let mut src = source(0);
    let mut finish = |k: usize, c: &Products, acc: &mut [__m512; BLOCK]| {
        let round = place(k);
        fold(m, x, (laid, &round), &c.0[..round.count], acc);
        if round.g0 + round.count == groups {
            let (row0, live) = round.rows;
            write_block(acc, (row0 - first, live), x.count, out, (n, start));
            *acc = [_mm512_setzero_ps(); BLOCK];
        }
    };
    for k in 0..total {
        let round = place(k);
        products(&src, m.group, x, round.g0, round.count);
        if k > 0 {
            finish(k - 1, &c[(k - 1) % 2], &mut acc);
        }
        if k + 1 < total {
            src = source(k + 1);
        }
        let share = (k % rounds, rounds);
        match laid {
            Some(laid) => laid.prefetch_share(m, round.rows.0 + ROWS, share),
            None => prefetch_share(m, round.rows.0 + ROWS, share),
        }
        store_products(round.count, &mut c[k % 2]);
    }
    finish(total - 1, &c[(total - 1) % 2], &mut acc);
}

/// A round of [`run`]: its block (first row, real rows), first group and group count.
struct Round {
    rows: (usize, usize),
    g0: usize,
    count: usize,
}

/// A round's groups folded into `acc` (one 16-lane accumulator per input, a lane per weight
/// row): per group `g` and input `i`, `t = C[3i+2]·S₃ + C[3i+1]·S₂ + C[3i]·S₁` (smallest
/// first), then `acc[i] += s[·, g] · t + b[·, g] · Σx`, with the 16 rows' scales and biases
/// read once per group — from the layout's line, or gathered from the matrix (a partial
/// block repeats its last row; the same values either way).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn fold(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    (laid, round): (Option<&Layout>, &Round),
    c: &[[[i32; COLS]; ROWS]],
    acc: &mut [__m512; BLOCK],
) {
    let groups = m.cols / m.group;
    let (row0, live) = round.rows;
    let offsets: [i32; ROWS] = std::array::from_fn(|r| (r.min(live - 1) * groups) as i32);
    let offsets = _mm512_loadu_si512(offsets.as_ptr().cast());
    let mut a = *acc;
    for (j, cj) in c.iter().enumerate() {
        let g = round.g0 + j;
        let at = row0 * groups + g;
        let (s, b) = match laid {
            Some(laid) => laid.terms_at(m, row0, g),
            None => (
                _mm512_i32gather_ps::<4>(offsets, m.scales.as_ptr().add(at).cast()),
                _mm512_i32gather_ps::<4>(offsets, m.biases.as_ptr().add(at).cast()),
            ),
        };
        let scales = x.scales.get_unchecked(g);
        let sums = x.sums.get_unchecked(g);
        for (i, a) in a.iter_mut().enumerate().take(x.count) {
            let limb =
                |l: usize| _mm512_cvtepi32_ps(_mm512_loadu_si512(cj[3 * i + l].as_ptr().cast()));
            let [s1, s2, s3] = scales[i].map(|v| _mm512_set1_ps(v));
            let t = _mm512_mul_ps(limb(2), s3);
            let t = _mm512_fmadd_ps(limb(1), s2, t);
            let t = _mm512_fmadd_ps(limb(0), s1, t);
            *a = _mm512_fmadd_ps(t, s, *a);
            *a = _mm512_fmadd_ps(b, _mm512_set1_ps(sums[i]), *a);
        }
    }
    *acc = a;
}

/// Share `j` of `shares` of the block of 16 rows from `row0` — its packed bytes, and with
/// the first share its scales and biases — asked of the cache, in address order (the rows of
/// a block are contiguous: one stream, which the tiles' 16-row reads would not make).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn prefetch_share(m: &QuantMatrix<'_>, row0: usize, share: (usize, usize)) {
    if row0 >= m.rows {
        return;
    }
    let end = (row0 + ROWS).min(m.rows);
    let row_bytes = m.cols * m.bits / 8;
    let from = m.packed.as_ptr().add(row0 * row_bytes);
    prefetch_bytes(from, (end - row0) * row_bytes, share);
    prefetch_terms(m, row0, share);
}

/// Share `j` of `shares` of the `len` bytes from `from` asked of the cache, in address order.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn prefetch_bytes(from: *const u8, len: usize, (j, shares): (usize, usize)) {
    let lines = len.div_ceil(64);
    let (a, b) = (lines * j / shares, lines * (j + 1) / shares);
    for line in a..b {
        _mm_prefetch::<_MM_HINT_T0>(from.add(64 * line).cast());
    }
}

/// With the first share (`j == 0`), the scales and biases of the block of 16 rows from
/// `row0` (< `m.rows`) asked of the cache.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn prefetch_terms(m: &QuantMatrix<'_>, row0: usize, (j, _): (usize, usize)) {
    let end = (row0 + ROWS).min(m.rows);
    if j == 0 {
        let groups = m.cols / m.group;
        for p in [m.scales.as_ptr(), m.biases.as_ptr()] {
            let (from, to) = (row0 * groups, end * groups);
            for k in (from..to).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(p.add(k).cast());
            }
        }
    }
}

/// Where [`rows`] writes its products.
pub(super) enum Dest<'a, 'b> {
    /// The task's `[rows, n]` block: input `i`'s row `r` at `r · n + start + i`.
    RowsN(&'a mut [f32]),
    /// Input `i`'s rows in `parts[start + i]`, one value per row of the task.
    Inputs(&'a mut [&'b mut [MaybeUninit<f32>]]),
}

/// A finished block's outputs: input `i`'s lane `r` — the task's row `row + r` — for the
/// `live` real rows, to `out` (with parts, sixteen lanes in one store).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn write_block(
    acc: &[__m512; BLOCK],
    (row, live): (usize, usize),
    count: usize,
    out: &mut Dest<'_, '_>,
    (n, start): (usize, usize),
) {
    for (i, v) in acc.iter().take(count).enumerate() {
        match out {
            Dest::RowsN(out) => {
                let mut lanes = [0f32; ROWS];
                _mm512_storeu_ps(lanes.as_mut_ptr(), *v);
                for (r, lane) in lanes.iter().take(live).enumerate() {
                    out[(row + r) * n + start + i] = *lane;
                }
            }
            Dest::Inputs(parts) => {
                let to = &mut parts[start + i][row..row + live];
                let mask: __mmask16 = if live == ROWS {
                    u16::MAX
                } else {
                    (1u16 << live) - 1
                };
                // SAFETY: `to` holds `live` ≤ 16 values; the mask stores only those lanes.
                _mm512_mask_storeu_ps(to.as_mut_ptr().cast::<f32>(), mask, *v);
            }
        }
    }
}

/// Where a round's B tiles are read: its first group's first B row in the scratch half its
/// span was transposed to, or in the matrix's [`Layout`] (B rows of 64 bytes, 4 columns
/// each, contiguous across the span or the whole row).
struct Source {
    base: *const u8,
}

/// A matrix's weights kept in the B tiles' layout, so that [`rows`] does not transpose the
/// packed weights on every call: per block of 16 weight rows (a partial last block repeats
/// its last row), the `cols / 4` B rows of 64 bytes that [`transpose_span`] makes of all its
/// columns at once, block after block in row order — the order the kernel streams them.
/// 8-bit weights are kept as those bytes (as large as the packed weights) and read in place.
/// 4-bit ones are kept as nibbles by default (as large as the packed weights: `TDPBSUD`
/// reads whole bytes, so each round's B rows are unpacked into the scratch, two vector
/// operations per 64 bytes, where the transpose took about ten); [`Layout::unpacked`] keeps
/// them as bytes, twice the packed size, read in place (measured slower: BENCHMARKS.md,
/// round 14). In a nibble layout each tile's `T / 8` rows of 64 bytes hold B row `p` in
/// the low nibbles and B row `p + T / 8` in the high ones. The scales and biases are kept
/// too, per (block, group) the 16 rows' values in one line as float16 where every value of
/// the matrix is one exactly (MLX's checkpoints store them so; the host path widens them to
/// float32 at load), else in two lines as float32: read with one load instead of two
/// gathers, and a third of the streamed bytes at groups of 32 becomes a fifth. Built once
/// per matrix by the caller (`qmv::lay_out_in`).
pub(super) struct Layout {
    /// The blocks, line-aligned.
    tiles: Vec<Line>,
    /// Per block, per group: the 16 rows' scales and biases ([`terms`]).
    terms: Vec<Line>,
    /// Lines per (block, group) in `terms`: 1 (float16) or 2 (float32).
    term_lines: usize,
    /// The matrix it was made from: rows, cols, bits, group.
    shape: (usize, usize, usize, usize),
    /// Whether 4-bit weights are kept as nibbles (two B rows per 64 bytes).
    nibbles: bool,
}

impl Layout {
    /// `m`'s weights laid out for the tiles: 4-bit weights as nibbles.
    ///
    /// # Safety
    /// [`available`] must have returned `Ok` (AVX-512F/BW).
    pub(super) unsafe fn new(m: &QuantMatrix<'_>) -> Layout {
        Self::make(m, m.bits == 4)
    }

    /// `m`'s weights laid out for the tiles, one byte each (a measurement of the byte
    /// layout against the nibbles of [`Layout::new`]).
    ///
    /// # Safety
    /// As [`Layout::new`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) unsafe fn unpacked(m: &QuantMatrix<'_>) -> Layout {
        Self::make(m, false)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn make(m: &QuantMatrix<'_>, nibbles: bool) -> Layout {
        let block = ROWS * m.cols;
        let blocks = m.rows.div_ceil(ROWS);
        let kept = if nibbles { block / 2 } else { block };
        let mut tiles = lines(blocks * kept / 64);
        let mut bytes = lines(block / 64);
        let base = tiles.as_mut_ptr().cast::<u8>();
        for b in 0..blocks {
            let rows = (b * ROWS, ROWS.min(m.rows - b * ROWS));
            let dst = base.add(b * kept);
            let to = if nibbles {
                bytes.as_mut_ptr().cast()
            } else {
                dst
            };
            match m.bits {
                8 => transpose_span::<8>(m, rows, (0, m.cols), to),
                _ => transpose_span::<4>(m, rows, (0, m.cols), to),
            }
            if nibbles {
                pack_nibbles(&bytes, tile_cols(m.group), dst);
            }
        }
        let (terms, term_lines) = match terms::<true>(m) {
            Some(half) => (half, 1),
            None => (
                terms::<false>(m).expect("float32 lines hold every scale and bias"),
                2,
            ),
        };
        Layout {
            tiles,
            terms,
            term_lines,
            shape: (m.rows, m.cols, m.bits, m.group),
            nibbles,
        }
    }

    /// The scales and biases of the 16 rows from `row0` (a multiple of 16) in group `g`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    #[inline]
    unsafe fn terms_at(&self, m: &QuantMatrix<'_>, row0: usize, g: usize) -> (__m512, __m512) {
        let groups = m.cols / m.group;
        let at = (row0 / ROWS * groups + g) * self.term_lines;
        let line = self.terms.as_ptr().add(at).cast::<u8>();
        if self.term_lines == 1 {
            let v = _mm512_load_si512(line.cast());
            let s = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
            let b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v));
            return (s, b);
        }
        let s = _mm512_load_ps(line.cast());
        (s, _mm512_load_ps(line.add(64).cast()))
    }

    /// Whether this layout was made from a matrix of `m`'s shape and format.
    pub(super) fn fits(&self, m: &QuantMatrix<'_>) -> bool {
        self.shape == (m.rows, m.cols, m.bits, m.group)
    }

    /// Whether the scales and biases are kept as float16.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn half_terms(&self) -> bool {
        self.term_lines == 1
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        (self.tiles.len() + self.terms.len()) * 64
    }

    /// Bytes per column of a block of 16 rows: 16, or 8 as nibbles.
    fn column_bytes(&self) -> usize {
        if self.nibbles {
            COLS / 2
        } else {
            COLS
        }
    }

    /// The B rows of groups `g0..g0 + count` of the block of 16 rows from `row0` (a multiple
    /// of 16): in place, or unpacked from nibbles to `scratch` (a line-aligned round's
    /// worth: 16 bytes per column).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    #[inline]
    unsafe fn source(
        &self,
        m: &QuantMatrix<'_>,
        (row0, g0, count): (usize, usize, usize),
        scratch: *mut u8,
    ) -> Source {
        let per = self.column_bytes();
        let from = self.tiles.as_ptr().cast::<u8>();
        let from = from.add(row0 * m.cols * per / COLS + g0 * m.group * per);
        if !self.nibbles {
            return Source { base: from };
        }
        unpack_nibbles(from, (count * m.group / 8, tile_cols(m.group)), scratch);
        Source { base: scratch }
    }

    /// Share `j` of `shares` of the block of 16 rows from `row0` (a multiple of 16) — its
    /// laid-out bytes, and with the first share its scales and biases — asked of the cache.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    #[inline]
    unsafe fn prefetch_share(&self, m: &QuantMatrix<'_>, row0: usize, share: (usize, usize)) {
        if row0 >= m.rows {
            return;
        }
        let per = self.column_bytes();
        let from = self.tiles.as_ptr().cast::<u8>();
        let from = from.add(row0 * m.cols * per / COLS);
        prefetch_bytes(from, m.cols * per, share);
        let lines = m.cols / m.group * self.term_lines;
        let terms = self.terms.as_ptr().add(row0 / ROWS * lines).cast::<u8>();
        prefetch_bytes(terms, lines * 64, share);
    }
}

/// [`Layout`]'s scales and biases of `m`: per block of 16 rows (a partial one repeating its
/// last row), per group, the 16 scales then the 16 biases — as float16 in one line
/// (`HALF`; `None` unless every value converts to float16 and back to the same bits), or as
/// float32 in two.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn terms<const HALF: bool>(m: &QuantMatrix<'_>) -> Option<Vec<Line>> {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let groups = m.cols / m.group;
    let per = if HALF { 1 } else { 2 };
    let mut out = lines(m.rows.div_ceil(ROWS) * groups * per);
    let same = |h: __m256i, v: __m512| {
        let back = _mm512_castps_si512(_mm512_cvtph_ps(h));
        _mm512_cmpeq_epi32_mask(back, _mm512_castps_si512(v)) == 0xffff
    };
    for (k, line) in out.chunks_exact_mut(per).enumerate() {
        let (b, g) = (k / groups, k % groups);
        let row = |r: usize| (b * ROWS + r).min(m.rows - 1) * groups + g;
        let s: [f32; ROWS] = std::array::from_fn(|r| m.scales[row(r)]);
        let bias: [f32; ROWS] = std::array::from_fn(|r| m.biases[row(r)]);
        let (s, bias) = (_mm512_loadu_ps(s.as_ptr()), _mm512_loadu_ps(bias.as_ptr()));
        if !HALF {
            _mm512_store_ps(line[0].0.as_mut_ptr().cast(), s);
            _mm512_store_ps(line[1].0.as_mut_ptr().cast(), bias);
            continue;
        }
        let (hs, hb) = (
            _mm512_cvtps_ph::<NEAREST>(s),
            _mm512_cvtps_ph::<NEAREST>(bias),
        );
        if !(same(hs, s) && same(hb, bias)) {
            return None;
        }
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hs), hb);
        _mm512_store_si512(line[0].0.as_mut_ptr().cast(), v);
    }
    Some(out)
}

/// A block's B rows (`bytes`, tiles of `t / 4` rows of 64 bytes) as nibbles at `dst`: per
/// tile, row `p < t / 8` of 64 bytes = B row `p` | B row `p + t / 8` << 4.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn pack_nibbles(bytes: &[Line], t: usize, dst: *mut u8) {
    let half = t / 8;
    for (k, tile) in bytes.chunks_exact(2 * half).enumerate() {
        for p in 0..half {
            let lo = _mm512_load_si512(tile[p].0.as_ptr().cast());
            let hi = _mm512_load_si512(tile[p + half].0.as_ptr().cast());
            let v = _mm512_or_si512(lo, _mm512_slli_epi16::<4>(hi));
            _mm512_store_si512(dst.add((k * half + p) * ROW_BYTES).cast(), v);
        }
    }
}

/// `rows` nibble rows of 64 bytes from `src` (tiles of `t / 8`, see [`pack_nibbles`])
/// unpacked to B rows at `dst`: per tile, row `p`'s low nibbles to B row `p`, its high
/// nibbles to B row `p + t / 8`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn unpack_nibbles(src: *const u8, (rows, t): (usize, usize), dst: *mut u8) {
    let half = t / 8;
    let nibbles = _mm512_set1_epi8(0x0f);
    for r in 0..rows {
        let (tile, p) = (r / half, r % half);
        let v = _mm512_load_si512(src.add(r * ROW_BYTES).cast());
        let lo = _mm512_and_si512(v, nibbles);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibbles);
        let at = dst.add((2 * tile * half + p) * ROW_BYTES);
        _mm512_store_si512(at.cast(), lo);
        _mm512_store_si512(at.add(half * ROW_BYTES).cast(), hi);
    }
}

/// The B tiles of groups `g0..` of the 16 rows from `first` (`live` real; a partial block
/// repeats its last row) in `dst`: the first round of a span (`span_groups` groups, [`SPAN`]
/// columns at most) transposes the span's columns of all 16 rows ([`transpose_span`]).
/// Why whole blocks: read a round's columns at a time, 16 rows apart, the weights escape the
/// hardware prefetchers, and streamed from memory (a decode step's 84 MB) the pass was 20–30%
/// slower than the AVX-512 kernels' row-ordered reads; in address order it is not
/// (BENCHMARKS.md, round 12, `amx12b`).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn span_source<const BITS: usize>(
    m: &QuantMatrix<'_>,
    rows: (usize, usize),
    (g0, span_groups): (usize, usize),
    dst: *mut u8,
) -> Source {
    let s0 = g0 / span_groups * span_groups;
    if g0 == s0 {
        let c0 = s0 * m.group;
        let cols = (span_groups * m.group).min(m.cols - c0);
        transpose_span::<BITS>(m, rows, (c0, cols), dst);
    }
    Source {
        base: dst.add((g0 - s0) * m.group * COLS),
    }
}

/// Columns `c0..c0 + cols` of the 16 rows from `first` as B rows at `dst`: per 64 columns,
/// each row unpacked to 64 bytes ([`chunk`]), the 16 × 16 32-bit elements transposed, B row
/// `k` = every row's bytes `4k..4k + 4` (16 B rows; 8 for a trailing 32 columns).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn transpose_span<const BITS: usize>(
    m: &QuantMatrix<'_>,
    (first, live): (usize, usize),
    (c0, cols): (usize, usize),
    dst: *mut u8,
) {
    let row_bytes = m.cols * BITS / 8;
    let t = tile_cols(m.group);
    let packed = m.packed.as_ptr();
    let src: [*const u8; ROWS] =
        std::array::from_fn(|r| packed.add((first + r.min(live - 1)) * row_bytes + c0 * BITS / 8));
    for c in (0..cols).step_by(64) {
        let width = (cols - c).min(64);
        let v = std::array::from_fn(|r| chunk::<BITS>(src[r].add(c * BITS / 8), t, width));
        let b = transpose16(v);
        for (k, row) in b.iter().take(width / 4).enumerate() {
            _mm512_store_si512(dst.add((c / 4 + k) * ROW_BYTES).cast(), *row);
        }
    }
}

/// `width` (64, or 32 at the end of a row) weights from `src` as bytes, zeros past `width`:
/// 8 bits as they are; 4 bits per tile of `t` columns the low nibbles then the high nibbles
/// (the tile's packed bytes shifted right by 0 or 4, masked to nibbles).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn chunk<const BITS: usize>(src: *const u8, t: usize, width: usize) -> __m512i {
    if BITS == 8 {
        return if width == 64 {
            _mm512_loadu_si512(src.cast())
        } else {
            _mm512_zextsi256_si512(_mm256_loadu_si256(src.cast()))
        };
    }
    let nibbles = _mm512_set1_epi8(0x0f);
    if t == 64 {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(src.cast()));
        let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
        return _mm512_and_si512(_mm512_srlv_epi64(v, shifts), nibbles);
    }
    // Tiles of 32: each 16 packed bytes in two 128-bit lanes, the second shifted by 4.
    let v = if width == 64 {
        _mm512_castsi256_si512(_mm256_loadu_si256(src.cast()))
    } else {
        _mm512_zextsi128_si512(_mm_loadu_si128(src.cast()))
    };
    let v = _mm512_shuffle_i64x2::<0b01_01_00_00>(v, v);
    let shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    _mm512_and_si512(_mm512_srlv_epi64(v, shifts), nibbles)
}

/// The 16 × 16 32-bit elements of `r` transposed: element `k` of row `n` becomes element `n`
/// of row `k` (32-bit, then 64-bit interleaves within 128-bit lanes, then two 128-bit lane
/// shuffles).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let t: [__m512i; 16] = std::array::from_fn(|k| {
        let (a, b) = (r[k & !1], r[k | 1]);
        if k % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4j + c], lane L: rows 4j..4j + 4 of column 4L + c.
    let u: [__m512i; 16] = std::array::from_fn(|k| {
        let (j, c) = (k / 4, k % 4);
        let (a, b) = (t[4 * j + c / 2], t[4 * j + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v0, w0);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(v1, w1);
    }
    out
}

/// One tile product: A (the limbs at `$a`, rows `$sa` bytes apart) into tile `$ta`, B (at
/// `$b`, 64-byte rows) into tile `$tb`, their signed × unsigned product added to C tile `$tc`.
macro_rules! step {
    ($ta:literal, $tb:literal, $tc:literal, $a:expr, $sa:expr, $b:expr) => {
        asm!(
            concat!("tileloadd tmm", $ta, ", [{a} + {sa}*1]"),
            concat!("tileloadd tmm", $tb, ", [{b} + {sb}*1]"),
            concat!("tdpbsud tmm", $tc, ", tmm", $ta, ", tmm", $tb),
            a = in(reg) $a,
            sa = in(reg) $sa,
            b = in(reg) $b,
            sb = in(reg) ROW_BYTES,
            options(nostack),
        )
    };
}

/// C tile `$tc` stored to `$c` (rows of 64 bytes).
macro_rules! store {
    ($tc:literal, $c:expr) => {
        asm!(
            concat!("tilestored [{c} + {s}*1], tmm", $tc),
            c = in(reg) $c,
            s = in(reg) ROW_BYTES,
            options(nostack),
        )
    };
}

/// The integer sums of groups `g0..g0 + count` (≤ [`ROUND`]) for the 16 rows of `src`:
/// `C_j = Σ_t A_{j,t} · B_{j,t}` over group `j`'s tiles, in C tile `4 + j`. Consecutive
/// products go to different C tiles; loads alternate between two A and two B tiles.
#[inline(always)]
unsafe fn products(src: &Source, group: usize, x: &Inputs, g0: usize, count: usize) {
    let t = tile_cols(group);
    let tiles = group / t;
    asm!(
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        "tilezero tmm7",
        options(nostack, nomem)
    );
    let limbs = x.limbs.as_ptr().cast::<u8>();
    let sa = x.stride;
    for u in 0..tiles {
        for j in 0..count {
            let a = limbs.add((g0 + j) * group + t * u);
            let b = src.base.add((j * group + t * u) * COLS);
            match (j, u % 2) {
                (0, 0) => step!(0, 2, 4, a, sa, b),
                (1, 0) => step!(1, 3, 5, a, sa, b),
                (2, 0) => step!(0, 2, 6, a, sa, b),
                (3, 0) => step!(1, 3, 7, a, sa, b),
                (0, _) => step!(1, 3, 4, a, sa, b),
                (1, _) => step!(0, 2, 5, a, sa, b),
                (2, _) => step!(1, 3, 6, a, sa, b),
                _ => step!(0, 2, 7, a, sa, b),
            }
        }
    }
}

/// C tiles `4..4 + count` stored to `c`.
#[inline(always)]
unsafe fn store_products(count: usize, c: &mut Products) {
    for (j, cj) in c.0.iter_mut().enumerate().take(count) {
        match j {
            0 => store!(4, cj.as_mut_ptr()),
            1 => store!(5, cj.as_mut_ptr()),
            2 => store!(6, cj.as_mut_ptr()),
            _ => store!(7, cj.as_mut_ptr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized limb scales are the scalar ones, bit for bit: ordinary groups, a
    /// group of zeros, tiny and huge magnitudes, an infinity, NaNs (skipped by the largest
    /// magnitude), group counts that end in a partial vector of sixteen.
    #[test]
    fn vector_limb_scales_are_the_scalar_ones() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("vector_limb_scales_are_the_scalar_ones: no AVX-512F here: NOT tested");
            return;
        }
        for (group, groups) in [(32, 1), (32, 18), (64, 9), (96, 5), (128, 33)] {
            let mut x: Vec<f32> = (0..group * groups)
                .map(|i| ((i as f32) * 0.618).sin() * (1.0 + (i % 7) as f32) * 1e-2)
                .collect();
            x[..group].iter_mut().for_each(|v| *v = 0.0);
            if groups > 4 {
                x[group + 3] = f32::NAN;
                x[2 * group + 1] = f32::INFINITY;
                x[3 * group + 5] = -3.0e38;
                x[4 * group..5 * group].iter_mut().for_each(|v| *v *= 1e-36);
            }
            // SAFETY: AVX-512F is present (checked above); `x` holds `groups` whole groups.
            let vector = unsafe { group_limb_scales(&x, group) };
            assert_eq!(vector.len(), groups);
            for (g, (xg, got)) in x.chunks_exact(group).zip(vector).enumerate() {
                let max = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
                let want = limb_scales(max);
                let bits =
                    |(s, i): ([f32; 3], [f32; 3])| (s.map(f32::to_bits), i.map(f32::to_bits));
                assert_eq!(bits(got), bits(want), "group {g} of {groups}, g{group}");
            }
        }
    }
}
