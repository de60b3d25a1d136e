//! The AMX kernels of `engine::qmv`: affine 4- and 8-bit weights against one to five float32
//! inputs per pass over the weights, on processors with AMX-TILE and AMX-INT8 whose kernel
//! grants the tile data (chosen at run time by `qmv::family`).
//!
//! Arithmetic: MLX's affine factoring gives each output
//! `Σ_g s[g] · Σ_{k∈g} q[k] · x[k] + b[g] · Σ_{k∈g} x[k]`. The integer weights `q` (0–15 or
//! 0–255) are the unsigned bytes of `TDPBUSD`; each input is written, per weight group, as
//! three signed 8-bit limbs `x ≈ a₁·S₁ + a₂·S₂ + a₃·S₃` (`S₁ = max|x|/127` over the group,
//! `S₂ = S₁/254`, `S₃ = S₂/254`, each limb the rounded remainder of the ones before), so the
//! representation error is at most `S₃/2 ≈ 6·10⁻⁸ · max|x|` of the group — float32's
//! rounding of the group's largest value. The tile unit sums `q · a` exactly in int32, and
//! the float32 epilogue folds each group in: `acc += s · (S ⊙ C) + b · Σx` (the bias on the
//! exact float Σx of the float kernels).
//!
//! Tiles: A = 16 weight rows × T columns (T = 64, or 32 for groups that are not a multiple
//! of 64) as unsigned bytes — 8-bit rows read in place, 4-bit rows unpacked per T columns to
//! [low nibbles, high nibbles] (the inputs' values reordered alike), up to [`SPAN`] columns of
//! 16 rows at a time, row after row; B = the inputs' limbs in
//! `TDPBUSD`'s layout (T/4 rows of 16 columns × 4 bytes; input `i`'s limb `l` in column
//! `3i + l`), prepared once per call; C = 16 rows × 16 int32 columns, one C tile per group of
//! a round of four groups (tiles 4–7).
//! Groups of 32 with one or two inputs are *paired* ([`paired`]): A = 16 rows × 64 columns
//! covering two groups, B = both groups' limbs, group `2p`'s in columns 0–7 and `2p + 1`'s in
//! 8–15 (zeros in the other group's K rows), so one `TDPBUSD` of K = 64 gives both groups'
//! sums in one C tile (rounds of up to four pairs; a trailing unpaired group meets zero
//! limbs); the fold moves the upper half down to meet the odd group's scales, so every lane
//! takes the unpaired fold's operations in the same order — the same bits. Three to five
//! inputs take 32-column tiles as before (their 15 limb columns leave no room for halves).
//!
//! Why an input's result does not depend on the others: every column of C is computed from
//! its own column of B; an input's limbs and scales depend on that input alone; the fold
//! and the final sums are lane-wise. A batch of more than five inputs takes several passes.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::QuantMatrix;

/// Inputs one pass takes at most: three limb columns each in the 16 of a tile.
pub(super) const BLOCK: usize = 5;

/// Whether `count` inputs against groups of `group` columns are multiplied two groups at a
/// time, one 64-column tile product per pair (groups of 32, one or two inputs): B holds
/// each group's limbs in its own half of the columns (group `2p` in columns 0–7, `2p + 1`
/// in 8–15; zero in the other group's K rows), so one `TDPBUSD` of K = 64 gives both
/// groups' sums side by side in one C tile — half the tile loads, C stores and C rows to
/// fold of a 32-column tile per group. Three to five inputs (15 of the 16 columns) leave no
/// room for the halves and take the 32-column tiles; [`fold_paired`] folds each lane with
/// the same operations in the same order as [`fold`], so a result does not depend on how
/// many inputs share its pass.
fn paired(group: usize, count: usize) -> bool {
    group == 32 && count <= 2 && !unpaired_here()
}

#[cfg(test)]
thread_local! {
    /// Test-only, per thread: groups of 32 as round 12 ran them for any count (a 32-column
    /// tile per group), for the measurements that compare the two.
    pub(super) static UNPAIRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread's test asked for groups of 32 unpaired ([`UNPAIRED`]).
fn unpaired_here() -> bool {
    #[cfg(test)]
    {
        UNPAIRED.with(std::cell::Cell::get)
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// Weight rows per tile (A and C rows).
pub(super) const ROWS: usize = 16;

/// Columns of 4-bit weights unpacked together at most (a span of rounds, row after row): the
/// two spans of scratch (2 × 16 × 768 bytes) and an input's limbs stay within L1.
const SPAN: usize = 768;

/// Columns of the B and C tiles.
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

/// A round's C tiles, stored as 16 rows of 16 int32 each, line-aligned.
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
    /// Tiles 0–1: A (16 rows of `t` bytes); 2–3: B (`t / 4` rows of 64 bytes); 4–7: C (16
    /// rows of 64 bytes).
    const fn new(t: usize) -> Self {
        let (a, b, c) = (t as u16, ROW_BYTES as u16, ROW_BYTES as u16);
        let b_rows = (t / 4) as u8;
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [a, a, b, b, c, c, c, c, 0, 0, 0, 0, 0, 0, 0, 0],
            rows: [
                16, 16, b_rows, b_rows, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        }
    }
}

static CONFIG_64: TileConfig = TileConfig::new(64);
static CONFIG_32: TileConfig = TileConfig::new(32);

/// The tiles configured on this thread for the life of the value, released when it drops
/// (a context switch then saves no tile data).
struct Tiles;

impl Tiles {
    /// # Safety
    /// [`available`] must have returned `Ok`.
    unsafe fn configure(t: usize) -> Tiles {
        let config = if t == 64 { &CONFIG_64 } else { &CONFIG_32 };
        asm!("ldtilecfg [{}]", in(reg) config, options(nostack));
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
    /// B tiles, `cols / 4` rows of 64 bytes: row `r` of tile `j` (columns `jT..jT + T`)
    /// holds, in column `3i + l`, input `i`'s limb `l` at the tile's positions
    /// `4r..4r + 4`.
    limbs: Vec<Line>,
    /// Per group, 16 lanes: the limb scale `S_l` of input `i` in lane `3i + l`.
    scales: Vec<[f32; COLS]>,
    /// Per group, 16 lanes: Σx of input `i` in lane `3i`, zero elsewhere.
    sums: Vec<[f32; COLS]>,
    /// How many inputs (1 to [`BLOCK`]).
    count: usize,
    /// Whether laid out for [`paired`] tiles.
    paired: bool,
}

/// The limb scales of a group whose largest magnitude is `max`, and their reciprocals.
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

impl Inputs {
    /// `xs` (1 to [`BLOCK`] rows of `m.cols` values) for matrix `m`.
    ///
    /// # Safety
    /// [`available`] must have returned `Ok` (AVX-512F/BW); each of `xs` holds `m.cols`
    /// values.
    pub(super) unsafe fn new(xs: &[&[f32]], m: &QuantMatrix<'_>) -> Self {
        debug_assert!((1..=BLOCK).contains(&xs.len()));
        debug_assert!(xs.iter().all(|x| x.len() == m.cols));
        if paired(m.group, xs.len()) {
            return Self::paired(xs, m);
        }
        let groups = m.cols / m.group;
        let mut inputs = Inputs {
            limbs: lines(m.cols / 4),
            scales: vec![[0f32; COLS]; groups],
            sums: vec![[0f32; COLS]; groups],
            count: xs.len(),
            paired: false,
        };
        for (i, x) in xs.iter().enumerate() {
            for (g, xg) in x.chunks_exact(m.group).enumerate() {
                let max = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
                let scales = limb_scales(max);
                inputs.scales[g][3 * i..3 * i + 3].copy_from_slice(&scales.0);
                inputs.sums[g][3 * i] = super::lane_sum(xg);
                let b = inputs
                    .limbs
                    .as_mut_ptr()
                    .cast::<i8>()
                    .add(g * m.group / 4 * ROW_BYTES);
                group_limbs(xg, m.bits, scales, b.add(4 * 3 * i));
            }
        }
        inputs
    }

    /// [`Inputs::new`] for [`paired`] tiles: input `i`'s limb `l` of group `g` in B column
    /// `8 · (g % 2) + 3i + l`, 16 B rows per pair of groups (the K rows of a trailing
    /// unpaired group's missing partner stay zero); `scales` and `sums` as unpaired, per
    /// group from lane `3i`.
    ///
    /// # Safety
    /// As [`Inputs::new`].
    unsafe fn paired(xs: &[&[f32]], m: &QuantMatrix<'_>) -> Self {
        let groups = m.cols / m.group;
        let mut inputs = Inputs {
            limbs: lines(groups.div_ceil(2) * ROWS),
            scales: vec![[0f32; COLS]; groups],
            sums: vec![[0f32; COLS]; groups],
            count: xs.len(),
            paired: true,
        };
        for (i, x) in xs.iter().enumerate() {
            for (g, xg) in x.chunks_exact(m.group).enumerate() {
                let max = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
                let scales = limb_scales(max);
                inputs.scales[g][3 * i..3 * i + 3].copy_from_slice(&scales.0);
                inputs.sums[g][3 * i] = super::lane_sum(xg);
                let b = inputs.limbs.as_mut_ptr().cast::<i8>();
                let at = g * m.group / 4 * ROW_BYTES + 4 * (8 * (g % 2) + 3 * i);
                group_limbs(xg, m.bits, scales, b.add(at));
            }
        }
        inputs
    }

    /// C tiles of a round of `count` groups: one per group, or per pair.
    fn c_tiles(&self, count: usize) -> usize {
        if self.paired {
            count.div_ceil(2)
        } else {
            count
        }
    }

    /// Groups a round of [`run`] takes: up to [`ROUND`] C tiles, rounds of equal size (9
    /// groups: 3 + 3 + 3, not 4 + 4 + 1); paired, a whole number of pairs.
    fn round_groups(&self, groups: usize) -> usize {
        if !self.paired {
            return groups.div_ceil(groups.div_ceil(ROUND));
        }
        let pairs = groups.div_ceil(2);
        2 * pairs.div_ceil(pairs.div_ceil(ROUND))
    }
}

/// One group's values `xg` as limbs in the B tiles from `b` (the group's first row, at the
/// input's first column): per tile of T values in A's column order, per 16 of them, the
/// three limbs of each (see [`limbs16`]).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn group_limbs(xg: &[f32], bits: usize, (s, inv): ([f32; 3], [f32; 3]), b: *mut i8) {
    let t = tile_cols(xg.len());
    let s = s.map(|v| _mm512_set1_ps(v));
    let inv = inv.map(|v| _mm512_set1_ps(v));
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    let x = xg.as_ptr();
    for c0 in (0..xg.len()).step_by(t) {
        let tile = b.add(c0 / 4 * ROW_BYTES);
        for h in (0..t).step_by(32) {
            let (lo, hi) = (
                _mm512_loadu_ps(x.add(c0 + h)),
                _mm512_loadu_ps(x.add(c0 + h + 16)),
            );
            // Positions p..p + 16 of the tile (16 values: 4 B rows).
            let (first, second, p1, p2) = if bits == 4 {
                let e = _mm512_permutex2var_ps(lo, even, hi);
                let o = _mm512_permutex2var_ps(lo, odd, hi);
                (e, o, h / 2, t / 2 + h / 2)
            } else {
                (lo, hi, h, h + 16)
            };
            limbs16(first, (s, inv), tile.add(p1 / 4 * ROW_BYTES));
            limbs16(second, (s, inv), tile.add(p2 / 4 * ROW_BYTES));
        }
    }
}

/// The three limbs of 16 values (`v ≈ Σ a_l · S_l`: each the remainder of the ones
/// before — a fused multiply-add, so rounded once — times `1/S_l`, rounded to nearest,
/// clamped to ±127, which only a rounded scale reaches) written as 4 B rows from `dst`,
/// limb `l` in the row's column `l` (4 bytes: 4 positions).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn limbs16(v: __m512, (s, inv): ([__m512; 3], [__m512; 3]), dst: *mut i8) {
    let (top, bottom) = (_mm512_set1_ps(127.0), _mm512_set1_ps(-127.0));
    let mut rest = v;
    for l in 0..3 {
        let a = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(rest, inv[l]),
        );
        let a = _mm512_max_ps(_mm512_min_ps(a, top), bottom);
        rest = _mm512_fnmadd_ps(a, s[l], rest);
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(a));
        let mut quads = [0u32; 4];
        _mm_storeu_si128(quads.as_mut_ptr().cast(), bytes);
        for (r, q) in quads.into_iter().enumerate() {
            dst.add(r * ROW_BYTES + 4 * l)
                .cast::<u32>()
                .write_unaligned(q);
        }
    }
}

/// Weight rows `first..first + rows` of `m` against `x`: `out` is the task's `[rows, n]`
/// block, input `k` of `x` written to column `start + k`.
///
/// # Safety
/// [`available`] must have returned `Ok`; `x` prepared for `m`; `first + rows ≤ m.rows`;
/// `out` holds `rows · n` values and `start + x.count ≤ n`.
pub(super) unsafe fn rows(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    at: (usize, usize, usize, usize),
    out: &mut [f32],
) {
    let _tiles = Tiles::configure(if x.paired { 64 } else { tile_cols(m.group) });
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let need = 2 * ROWS * (ROUND * m.group).max(SPAN) / 64;
    if scratch.len() < need {
        scratch = lines(need);
    }
    // SAFETY: lines are plain bytes.
    let bytes = std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), need * 64);
    match (m.bits, x.paired) {
        (8, false) => run::<8, false>(m, x, at, out, bytes),
        (8, true) => run::<8, true>(m, x, at, out, bytes),
        (_, false) => run::<4, false>(m, x, at, out, bytes),
        (_, true) => run::<4, true>(m, x, at, out, bytes),
    }
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
}

thread_local! {
    /// The unpacked A tiles of [`rows`], two spans' worth (4 bits) or two rounds' (8 bits),
    /// kept by each thread across calls (every byte a tile reads is written first in the
    /// same call, but for the 32 columns past a trailing unpaired group of [`paired`] tiles:
    /// in the buffer, left from an earlier call, and met by zero limbs).
    static SCRATCH: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`rows`] for `BITS`-bit weights: blocks of 16 rows, each in rounds of up to [`ROUND`]
/// groups, pipelined over the whole task: while the tile unit multiplies round `k`, the
/// vector units fold round `k - 1`'s products (stored to the other half of `c`) and prepare
/// round `k + 1` in the other half of `scratch` (4 bits: the last round of a span unpacks
/// the next span of the block, or the next block's first, see [`round_source`]), and the next
/// block's bytes are asked of the cache, a share per round.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn run<const BITS: usize, const PAIRED: bool>(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    (first, rows, start, n): (usize, usize, usize, usize),
    out: &mut [f32],
    scratch: &mut [u8],
) {
    let groups = m.cols / m.group;
    let per_round = x.round_groups(groups);
    let rounds = groups.div_ceil(per_round);
    // 4 bits: rounds unpacked together, row after row (a span of at most `SPAN` columns).
    let span_rounds = (SPAN / (per_round * m.group)).clamp(1, rounds);
    let spans = rounds.div_ceil(span_rounds);
    let span_groups = if BITS == 4 {
        span_rounds * per_round
    } else {
        per_round
    };
    let half = ROWS * span_groups.max(ROUND) * m.group;
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
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let mut c = [Products([[[0i32; COLS]; ROWS]; ROUND]); 2];
    let mut src = round_source::<BITS>(m, place(0).rows, (0, span_groups), scratch.as_mut_ptr());
    let mut finish = |k: usize, c: &Products, acc: &mut [__m512; ROWS]| {
        let round = place(k);
        let tiles = &c.0[..x.c_tiles(round.count)];
        if PAIRED {
            fold_paired(m, x, &round, tiles, acc);
        } else {
            fold(m, x, &round, tiles, acc);
        }
        if round.g0 + round.count == groups {
            let (row0, live) = round.rows;
            let at = (row0 - first) * n;
            write_block(acc, live, x.count, &mut out[at..], n, start);
            *acc = [_mm512_setzero_ps(); ROWS];
        }
    };
    for k in 0..total {
        let round = place(k);
        if PAIRED {
            products_paired(&src, x, round.g0, round.count);
        } else {
            products(&src, m.group, x, round.g0, round.count);
        }
        if k > 0 {
            finish(k - 1, &c[(k - 1) % 2], &mut acc);
        }
        if k + 1 < total {
            let next = place(k + 1);
            let parity = if BITS == 4 {
                (k + 1) / rounds * spans + (k + 1) % rounds / span_rounds
            } else {
                k + 1
            };
            let to = scratch.as_mut_ptr().add(parity % 2 * half);
            src = round_source::<BITS>(m, next.rows, (next.g0, span_groups), to);
        }
        prefetch_share::<BITS>(m, round.rows.0 + ROWS, (k % rounds, rounds));
        store_products(x.c_tiles(round.count), &mut c[k % 2]);
    }
    finish(total - 1, &c[(total - 1) % 2], &mut acc);
}

/// A round of [`run`]: its block (first row, real rows), first group and group count.
struct Round {
    rows: (usize, usize),
    g0: usize,
    count: usize,
}

/// A round's groups folded into `acc`: `acc[r] += s[r, g] · (S_g ⊙ C_g[r]) + b[r, g] · Σx_g`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn fold(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    round: &Round,
    c: &[[[i32; COLS]; ROWS]],
    acc: &mut [__m512; ROWS],
) {
    let groups = m.cols / m.group;
    let (row0, live) = round.rows;
    let at: [usize; ROWS] = std::array::from_fn(|r| (row0 + r.min(live - 1)) * groups);
    let mut a = *acc;
    for (j, cj) in c.iter().enumerate() {
        let g = round.g0 + j;
        let limb_scales = _mm512_loadu_ps(x.scales.get_unchecked(g).as_ptr());
        let sums = _mm512_loadu_ps(x.sums.get_unchecked(g).as_ptr());
        for r in 0..ROWS {
            let s = _mm512_set1_ps(*m.scales.get_unchecked(at[r] + g));
            let b = _mm512_set1_ps(*m.biases.get_unchecked(at[r] + g));
            let sum = _mm512_cvtepi32_ps(_mm512_loadu_si512(cj[r].as_ptr().cast()));
            a[r] = _mm512_fmadd_ps(_mm512_mul_ps(sum, limb_scales), s, a[r]);
            a[r] = _mm512_fmadd_ps(sums, b, a[r]);
        }
    }
    *acc = a;
}

/// [`fold`] for [`paired`] tiles: C tile `j` holds pair `j`'s sums, group `2j` in lanes
/// 0–7 and `2j + 1` in lanes 8–15; the upper half is moved down (exact) to meet the odd
/// group's scales, so every lane takes [`fold`]'s operations, group after group.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn fold_paired(
    m: &QuantMatrix<'_>,
    x: &Inputs,
    round: &Round,
    c: &[[[i32; COLS]; ROWS]],
    acc: &mut [__m512; ROWS],
) {
    let groups = m.cols / m.group;
    let (row0, live) = round.rows;
    for (r, acc) in acc.iter_mut().enumerate() {
        let at = (row0 + r.min(live - 1)) * groups + round.g0;
        let mut a = *acc;
        let term = |a: __m512, sum: __m512, j: usize| {
            let g = round.g0 + j;
            let limb_scales = _mm512_loadu_ps(x.scales.get_unchecked(g).as_ptr());
            let sums = _mm512_loadu_ps(x.sums.get_unchecked(g).as_ptr());
            let s = _mm512_set1_ps(*m.scales.get_unchecked(at + j));
            let b = _mm512_set1_ps(*m.biases.get_unchecked(at + j));
            let a = _mm512_fmadd_ps(_mm512_mul_ps(sum, limb_scales), s, a);
            _mm512_fmadd_ps(sums, b, a)
        };
        for (p, cp) in c.iter().enumerate() {
            let sum = _mm512_cvtepi32_ps(_mm512_loadu_si512(cp[r].as_ptr().cast()));
            a = term(a, sum, 2 * p);
            if 2 * p + 1 < round.count {
                a = term(a, _mm512_shuffle_f32x4::<0xee>(sum, sum), 2 * p + 1);
            }
        }
        *acc = a;
    }
}

/// Share `j` of `shares` of the block of 16 rows from `row0` — its packed bytes, and with
/// the first share its scales and biases — asked of the cache, in address order (the rows of
/// a block are contiguous: one stream, which the tiles' 16-row reads would not make).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn prefetch_share<const BITS: usize>(
    m: &QuantMatrix<'_>,
    row0: usize,
    (j, shares): (usize, usize),
) {
    if row0 >= m.rows {
        return;
    }
    let end = (row0 + ROWS).min(m.rows);
    let row_bytes = m.cols * BITS / 8;
    let (from, to) = (row0 * row_bytes, end * row_bytes);
    let lines = (to - from).div_ceil(64);
    let (a, b) = (lines * j / shares, lines * (j + 1) / shares);
    for line in a..b {
        _mm_prefetch::<_MM_HINT_T0>(m.packed.as_ptr().add(from + 64 * line).cast());
    }
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

/// A finished block's outputs: row `r`'s input `i` is `hi + (mid + lo)` of its three lanes,
/// written to `out[r · n + start + i]`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn write_block(
    acc: &[__m512; ROWS],
    live: usize,
    count: usize,
    out: &mut [f32],
    n: usize,
    start: usize,
) {
    for (r, v) in acc.iter().take(live).enumerate() {
        let mut lanes = [0f32; COLS];
        _mm512_storeu_ps(lanes.as_mut_ptr(), *v);
        for i in 0..count {
            out[r * n + start + i] = lanes[3 * i] + (lanes[3 * i + 1] + lanes[3 * i + 2]);
        }
    }
}

/// Where a round's A tiles are read: the packed rows themselves (8 bits, 16 real rows) or
/// the scratch half they were unpacked to; and the distance between their rows.
struct Source {
    base: *const u8,
    stride: usize,
}

/// The A tiles of groups `g0..` (up to [`ROUND`]) of the 16 rows from `first` (`live`
/// real): 8-bit rows of a whole block in place where their lines are aligned, else copied
/// to `dst`, rows `max(per_round, ROUND) · group` bytes apart; 4-bit rows read from `dst`, where the first
/// round of a span (`per_round` is then the span's groups, [`SPAN`] columns at most) unpacks
/// the span's columns of all 16 rows, row after row (a span's width apart).
/// Why whole blocks: read a round's columns at a time, 16 rows apart, the weights escape the
/// hardware prefetchers, and streamed from memory (a decode step's 84 MB) the pass was 20–30%
/// slower than the AVX-512 kernels' row-ordered reads; in address order it is not
/// (BENCHMARKS.md, round 12, `amx12b`).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn round_source<const BITS: usize>(
    m: &QuantMatrix<'_>,
    (first, live): (usize, usize),
    (g0, per_round): (usize, usize),
    dst: *mut u8,
) -> Source {
    let row_bytes = m.cols * BITS / 8;
    let groups = m.cols / m.group;
    let cols = per_round.min(groups - g0) * m.group;
    let from = g0 * m.group * BITS / 8;
    let packed = m.packed.as_ptr();
    // In place only where every tile row stays inside a cache line (see [`Line`]).
    let aligned = (packed as usize).is_multiple_of(64) && row_bytes.is_multiple_of(64);
    if BITS == 8 && live == ROWS && aligned {
        return Source {
            base: packed.add(first * row_bytes + from),
            stride: row_bytes,
        };
    }
    if BITS == 4 {
        // `per_round` is the span's groups here.
        let t = tile_cols(m.group);
        let s0 = g0 / per_round * per_round;
        let span = per_round * m.group;
        if g0 == s0 {
            let cols = span.min(m.cols - s0 * m.group);
            for r in 0..ROWS {
                let src = packed.add((first + r.min(live - 1)) * row_bytes + s0 * m.group / 2);
                let out = dst.add(r * span);
                if t == 64 {
                    unpack64(src, out, cols);
                } else {
                    unpack32(src, out, cols);
                }
            }
        }
        return Source {
            base: dst.add((g0 - s0) * m.group),
            stride: span,
        };
    }
    // 8 bits, copied: a partial block, or rows not line-aligned (rows `per_round` groups
    // apart at least: a round of pairs may take more than `ROUND` groups).
    let span = per_round.max(ROUND) * m.group;
    for r in 0..ROWS {
        let row = first + r.min(live - 1);
        copy8(packed.add(row * row_bytes + from), dst.add(r * span), cols);
    }
    Source {
        base: dst,
        stride: span,
    }
}

/// `cols` 4-bit weights from `src` as bytes at `dst`, per 64 columns (32 packed bytes) the
/// 32 low nibbles then the 32 high nibbles: the bytes in both 256-bit halves, the upper half
/// shifted right by 4, masked to nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn unpack64(src: *const u8, dst: *mut u8, cols: usize) {
    let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    let nibbles = _mm512_set1_epi8(0x0f);
    for k in (0..cols).step_by(64) {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(src.add(k / 2).cast()));
        let q = _mm512_and_si512(_mm512_srlv_epi64(v, shifts), nibbles);
        _mm512_storeu_si512(dst.add(k).cast(), q);
    }
}

/// `cols` 8-bit weights (a multiple of 32) copied from `src` to `dst` in vector registers: a
/// few lines per row and round, inline, where a `memcpy` call each took 1–4% of a lone step's
/// samples on the 8-bit LM head (its rows are not line-aligned, so not tile rows in place).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn copy8(src: *const u8, dst: *mut u8, cols: usize) {
    let mut k = 0;
    while k + 64 <= cols {
        _mm512_storeu_si512(dst.add(k).cast(), _mm512_loadu_si512(src.add(k).cast()));
        k += 64;
    }
    if k < cols {
        _mm256_storeu_si256(dst.add(k).cast(), _mm256_loadu_si256(src.add(k).cast()));
    }
}

/// [`unpack64`] per 32 columns (16 packed bytes): 16 low nibbles then 16 high nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn unpack32(src: *const u8, dst: *mut u8, cols: usize) {
    let shifts = _mm256_set_epi64x(4, 4, 0, 0);
    let nibbles = _mm256_set1_epi8(0x0f);
    for k in (0..cols).step_by(32) {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(src.add(k / 2).cast()));
        let q = _mm256_and_si256(_mm256_srlv_epi64(v, shifts), nibbles);
        _mm256_storeu_si256(dst.add(k).cast(), q);
    }
}

/// One tile product: A (16 rows at `$a`, `$sa` bytes apart) into tile `$ta`, B (at `$b`)
/// into tile `$tb`, their product added to C tile `$tc`.
macro_rules! step {
    ($ta:literal, $tb:literal, $tc:literal, $a:expr, $sa:expr, $b:expr) => {
        asm!(
            concat!("tileloadd tmm", $ta, ", [{a} + {sa}*1]"),
            concat!("tileloadd tmm", $tb, ", [{b} + {sb}*1]"),
            concat!("tdpbusd tmm", $tc, ", tmm", $ta, ", tmm", $tb),
            a = in(reg) $a,
            sa = in(reg) $sa,
            b = in(reg) $b,
            sb = in(reg) ROW_BYTES,
            options(nostack),
        )
    };
}

/// C tile `$tc` stored to `$c` (16 rows of 64 bytes).
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
    let b_tile = t / 4 * ROW_BYTES;
    asm!(
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        "tilezero tmm7",
        options(nostack, nomem)
    );
    for u in 0..tiles {
        for j in 0..count {
            let a = src.base.add(j * group + t * u);
            let b = x
                .limbs
                .as_ptr()
                .cast::<u8>()
                .add((g0 + j) * group / 4 * ROW_BYTES + u * b_tile);
            let sa = src.stride;
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

/// [`products`] for [`paired`] tiles: pairs `g0 / 2..` of a round of `count` groups, one
/// 64-column A tile and one B tile each, pair `j` into C tile `4 + j`.
#[inline(always)]
unsafe fn products_paired(src: &Source, x: &Inputs, g0: usize, count: usize) {
    asm!(
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        "tilezero tmm7",
        options(nostack, nomem)
    );
    let sa = src.stride;
    for j in 0..count.div_ceil(2) {
        let a = src.base.add(j * 64);
        let b = x
            .limbs
            .as_ptr()
            .cast::<u8>()
            .add((g0 / 2 + j) * ROWS * ROW_BYTES);
        match j {
            0 => step!(0, 2, 4, a, sa, b),
            1 => step!(1, 3, 5, a, sa, b),
            2 => step!(0, 2, 6, a, sa, b),
            _ => step!(1, 3, 7, a, sa, b),
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
