//! The AVX-512 float kernels of `engine::qmv`: one weight row of affine 4- or 8-bit values
//! against one to four float32 inputs, on processors with AVX-512F (chosen at run time by
//! [`super::family`]; the AVX2 kernels stay for every other x86-64 processor).
//!
//! Layout: every 16 columns are one 16-lane vector. The weights of 16 columns are unpacked
//! once per row and scaled by their group's scale (`w = float(q) · scale`), then met by each
//! input in a fused multiply-add. Each input has four accumulator chains: per 32 columns
//! (`block = c / 32`) the chains `2 · (block % 2)` and `2 · (block % 2) + 1` take the first
//! and the last 16 columns. All four chains of up to four inputs run in one pass over the
//! row (16 accumulators of the 32 vector registers), each step's chain a constant so that
//! they stay in registers.
//!
//! Why an input's result does not depend on the others: every chain of an input adds the
//! same products in column order whatever `N` is; the bias term is the same per-input
//! sequence of vector multiply-adds; the chains and bias are combined as
//! `((c0 + c1) + (c2 + c3)) + bias`; and the lanes are summed by one fixed tree ([`hsum4`])
//! applied lane-wise, whatever the other slots of the tree hold. Only the order of memory
//! reads and which registers hold what differ between `N`s.
//!
//! 4 bits use [`Prepared`]'s layout of the AVX2 kernels (per 16 columns the 8 even ones,
//! then the 8 odd ones divided by 16): the 8 packed bytes of 16 columns are broadcast to
//! both halves of a 128-bit register, zero-extended to 16 lanes and masked with `0x0f` in
//! lanes 0–7 (low nibbles) and `0xf0` in lanes 8–15 (high nibbles in place, 16 × their
//! value), so one vector meets the input's 16 columns as laid out.
//!
//! With VBMI ([`dot_q4_table`], chosen by `super::f32_kernel`) the 4-bit weights are looked
//! up instead: per 32 columns a table of the 16 values `q · scale`, and per 16 columns one
//! `vpmultishiftqb` that brings each lane's nibble of the 8 packed bytes into the lane's low
//! four bits (high nibbles shifted down, the input's odd columns as they are:
//! `super::Nibbles::Shifted`) and one `vpermps` that reads the table with them — two
//! operations where the conversion takes four (zero-extend, mask, convert, scale). The
//! table holds exactly the products the conversion makes, and the chains and sums are the
//! same, so both give the same bits.

use std::arch::x86_64::*;

use super::{Nibbles, Prepared, Row};

/// Four chains of 16 lanes per input.
type Chains<const N: usize> = [[__m512; 4]; N];

/// Float32 inputs against 8-bit weights (see the module documentation).
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be present; `row` must be a whole row of a checked
/// [`super::QuantMatrix`] with `group` columns per scale, and each input prepared for it.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn dot_q8<const N: usize>(group: usize, row: Row<'_>, xs: [&Prepared; N]) -> [f32; N] {
    dot::<8, N>(group, row, xs)
}

/// Float32 inputs against 4-bit weights (see the module documentation).
///
/// # Safety
/// As [`dot_q8`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn dot_q4<const N: usize>(group: usize, row: Row<'_>, xs: [&Prepared; N]) -> [f32; N] {
    dot::<4, N>(group, row, xs)
}

/// Float32 inputs against 4-bit weights, each nibble looked up in a table of `q · scale`
/// (see the module documentation); the inputs prepared with [`Nibbles::Shifted`].
///
/// # Safety
/// As [`dot_q8`], and AVX-512 VBMI must be present.
#[target_feature(enable = "avx512f,avx512vbmi,avx2,fma")]
pub unsafe fn dot_q4_table<const N: usize>(
    group: usize,
    row: Row<'_>,
    xs: [&Prepared; N],
) -> [f32; N] {
    debug_assert!(
        xs.iter().all(|x| x.nibbles == Nibbles::Shifted)
            && super::float_layout_ok(group, 4, row, &xs)
    );
    let acc = table_chains::<N>(group, row.0, row.1, xs.map(|x| x.x.as_ptr()));
    finish(acc, row.2, xs)
}

/// [`chains`] for [`dot_q4_table`]: the same blocks in the same chains, each block's weights
/// looked up in its group's table.
#[target_feature(enable = "avx512f,avx512vbmi,avx2,fma")]
#[inline]
unsafe fn table_chains<const N: usize>(
    group: usize,
    packed: &[u8],
    scales: &[f32],
    xp: [*const f32; N],
) -> Chains<N> {
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    let blocks = Blocks::new(group, scales);
    let values = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let shifts = _mm512_loadu_si512(NIBBLE_SHIFTS.as_ptr().cast());
    let p = packed.as_ptr();
    for b in (0..blocks.count).step_by(2) {
        let table = _mm512_mul_ps(values, blocks.scale(b));
        table_step::<N>(p, 32 * b, 0, (table, shifts), xp, &mut acc);
        table_step::<N>(p, 32 * b + 16, 1, (table, shifts), xp, &mut acc);
        if b + 1 < blocks.count {
            let table = _mm512_mul_ps(values, blocks.scale(b + 1));
            table_step::<N>(p, 32 * (b + 1), 2, (table, shifts), xp, &mut acc);
            table_step::<N>(p, 32 * (b + 1) + 16, 3, (table, shifts), xp, &mut acc);
        }
    }
    acc
}

/// `vpmultishiftqb`'s bit offsets: dword lane `i` takes the 8 bits from bit `8i` (lanes 0–7:
/// byte `i`, its low nibble in the lane's low four bits) or `8(i − 8) + 4` (lanes 8–15: byte
/// `i − 8`'s high nibble) of the 8 packed bytes, in its lowest byte; `vpermps` reads only
/// those four bits. Two lanes per 64-bit word (the other bytes' offsets are unused).
static NIBBLE_SHIFTS: [u64; 8] = {
    let mut words = [0u64; 8];
    let mut w = 0;
    while w < 8 {
        words[w] = nibble_shift(2 * w) | nibble_shift(2 * w + 1) << 32;
        w += 1;
    }
    words
};

/// The bit offset of dword lane `i`'s nibble in 8 packed bytes ([`NIBBLE_SHIFTS`]).
const fn nibble_shift(i: usize) -> u64 {
    (if i < 8 { 8 * i } else { 8 * (i - 8) + 4 }) as u64
}

/// Chain `k` at columns `at..at + 16` for every input, the weights looked up in `table`.
#[target_feature(enable = "avx512f,avx512vbmi,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn table_step<const N: usize>(
    p: *const u8,
    at: usize,
    k: usize,
    (table, shifts): (__m512, __m512i),
    xp: [*const f32; N],
    acc: &mut Chains<N>,
) {
    let bytes = _mm512_set1_epi64((p.add(at / 2) as *const i64).read_unaligned());
    let w = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(shifts, bytes), table);
    for i in 0..N {
        acc[i][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp[i].add(at)), acc[i][k]);
    }
}

/// [`dot_q8`] or [`dot_q4`] (`BITS`).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn dot<const BITS: usize, const N: usize>(
    group: usize,
    (packed, scales, biases): Row<'_>,
    xs: [&Prepared; N],
) -> [f32; N] {
    debug_assert!(super::float_layout_ok(
        group,
        BITS,
        (packed, scales, biases),
        &xs
    ));
    let xp = xs.map(|x| x.x.as_ptr());
    let acc = chains::<BITS, N>(group, packed, scales, xp);
    finish(acc, biases, xs)
}

/// The four chains over a whole row, block by block in column order: even 32-column blocks
/// in chains 0 and 1, odd ones in chains 2 and 3. The chain of every step is a constant (an
/// index computed at run time kept the accumulators in memory: BENCHMARKS.md, round 10).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn chains<const BITS: usize, const N: usize>(
    group: usize,
    packed: &[u8],
    scales: &[f32],
    xp: [*const f32; N],
) -> Chains<N> {
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    let blocks = Blocks::new(group, scales);
    for b in (0..blocks.count).step_by(2) {
        block::<BITS, N, 0>(packed.as_ptr(), blocks.scale(b), 32 * b, xp, &mut acc);
        if b + 1 < blocks.count {
            block::<BITS, N, 1>(
                packed.as_ptr(),
                blocks.scale(b + 1),
                32 * (b + 1),
                xp,
                &mut acc,
            );
        }
    }
    acc
}

/// A row's 32-column blocks and their groups' scales.
struct Blocks<'a> {
    /// Blocks in the row.
    count: usize,
    /// The row's scales, one per group.
    scales: &'a [f32],
    /// Blocks per group (≥ 1).
    per_group: usize,
}

impl<'a> Blocks<'a> {
    fn new(group: usize, scales: &'a [f32]) -> Self {
        let per_group = group / 32;
        Blocks {
            count: scales.len() * per_group,
            scales,
            per_group,
        }
    }

    /// The scale of block `b`'s group, in every lane (a shift, not a division, for groups
    /// of a power of two blocks).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn scale(&self, b: usize) -> __m512 {
        let g = if self.per_group.is_power_of_two() {
            b >> self.per_group.trailing_zeros()
        } else {
            b / self.per_group
        };
        _mm512_set1_ps(*self.scales.get_unchecked(g))
    }
}

/// Block `PARITY` of a pair (columns `c..c + 32`): chains `2 · PARITY` and `2 · PARITY + 1`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block<const BITS: usize, const N: usize, const PARITY: usize>(
    p: *const u8,
    s: __m512,
    c: usize,
    xp: [*const f32; N],
    acc: &mut Chains<N>,
) {
    step::<BITS, N>(p, c, 2 * PARITY, s, xp, acc);
    step::<BITS, N>(p, c + 16, 2 * PARITY + 1, s, xp, acc);
}

/// Chain `k` at columns `at..at + 16` for every input.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn step<const BITS: usize, const N: usize>(
    p: *const u8,
    at: usize,
    k: usize,
    s: __m512,
    xp: [*const f32; N],
    acc: &mut Chains<N>,
) {
    let w = _mm512_mul_ps(_mm512_cvtepi32_ps(weights::<BITS>(p, at)), s);
    for i in 0..N {
        acc[i][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp[i].add(at)), acc[i][k]);
    }
}

/// The integer weights of columns `at..at + 16` in 16 lanes, in [`Prepared`]'s order.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn weights<const BITS: usize>(p: *const u8, at: usize) -> __m512i {
    if BITS == 8 {
        return _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(at) as *const __m128i));
    }
    let nibbles = _mm512_setr_epi32(
        0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0,
        0xf0,
    );
    let bytes = _mm_set1_epi64x((p.add(at / 2) as *const i64).read_unaligned());
    _mm512_and_si512(_mm512_cvtepu8_epi32(bytes), nibbles)
}

/// Each input's total: `((c0 + c1) + (c2 + c3)) + bias` lane-wise, where `bias` is
/// `Σ_g bias[g] · Σx[g]` over 16 groups per multiply-add (the last, partial vector through a
/// masked load, zeros past the row's groups), then the lanes of all inputs summed together by
/// [`hsum4`]. Every input takes the same operations whatever `N` is (≤ 4).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn finish<const N: usize>(acc: Chains<N>, biases: &[f32], xs: [&Prepared; N]) -> [f32; N] {
    debug_assert!(xs.iter().all(|x| x.group_sums.len() == biases.len()));
    let (b, groups) = (biases.as_ptr(), biases.len());
    let sums = xs.map(|x| x.group_sums.as_ptr());
    let mut bias = [_mm512_setzero_ps(); N];
    for k in (0..groups).step_by(16) {
        let live = groups - k;
        let mask: __mmask16 = if live >= 16 { 0xffff } else { (1 << live) - 1 };
        let bk = _mm512_maskz_loadu_ps(mask, b.add(k));
        for i in 0..N {
            let x = _mm512_maskz_loadu_ps(mask, sums[i].add(k));
            bias[i] = _mm512_fmadd_ps(bk, x, bias[i]);
        }
    }
    let mut lanes = [_mm512_setzero_ps(); 4];
    for i in 0..N {
        let [a0, a1, a2, a3] = acc[i];
        let chains = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        lanes[i] = _mm512_add_ps(chains, bias[i]);
    }
    let totals = hsum4(lanes);
    std::array::from_fn(|i| totals[i])
}

/// The lane sums of four vectors, each by the same tree whatever the others hold: lanes
/// `j + (j + 8)` (256-bit halves), then `+ (j + 4)` (128-bit quarters), then `+ (j + 2)`,
/// then `+ (j + 1)` — every step a lane-wise add of two rearranged vectors.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn hsum4(v: [__m512; 4]) -> [f32; 4] {
    let (h01, h23) = (halves(v[0], v[1]), halves(v[2], v[3]));
    // Blocks [v0 v1 v2 v3], each the sum of its vector's two 128-bit quarter pairs.
    let q = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(h01, h23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(h01, h23),
    );
    let q = _mm512_add_ps(q, _mm512_permute_ps::<0b01_00_11_10>(q));
    let q = _mm512_add_ps(q, _mm512_permute_ps::<0b10_11_00_01>(q));
    let mut all = [0f32; 16];
    _mm512_storeu_ps(all.as_mut_ptr(), q);
    [all[0], all[4], all[8], all[12]]
}

/// 128-bit blocks `[a0 + a2, a1 + a3, b0 + b2, b1 + b3]`: each vector's 256-bit halves summed.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn halves(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    )
}
