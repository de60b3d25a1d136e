//! The tests of `engine::qmv`: every kernel family against a float64 reference and against
//! each other (bit for bit where the arithmetic is the same), batch independence, the
//! layouts, bad parameters; and the ignored micro-benchmarks (`amx_speed`, `amx_speed_cold`).

use super::*;
use mlx_rs::ops::{quantize, quantized_matmul};

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    xorshift(seed)
        .take(n)
        .map(|s| (s % 20_000) as f32 / 10_000.0 - 1.0)
        .collect()
}

/// The xorshift32 stream from `seed` that [`pseudo_random`] and [`random_bytes`] draw.
fn xorshift(seed: u32) -> impl Iterator<Item = u32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    })
}

/// The host kernel (float activations) against MLX's own quantized_matmul on the same
/// packed weights.
#[test]
fn host_matvec_matches_mlx_quantized_matmul() {
    for (bits, group, rows, cols) in [
        (4, 32, 70, 96),
        (4, 64, 33, 128),
        (8, 32, 65, 64),
        (8, 64, 40, 192),
        (4, 128, 17, 256),
        // Eight groups and more: the vector part of the bias term, with a tail.
        (4, 32, 34, 576),
        (8, 64, 21, 576),
    ] {
        let w = Array::from_slice(
            &pseudo_random(rows * cols, bits as u32 + cols as u32),
            &[rows as i32, cols as i32],
        );
        let (wq, scales, biases) = quantize(&w, group, bits).unwrap();
        // One block of four and three more (a padded block); two alone; a block and one.
        for n in [7, 2, 5] {
            let x = Array::from_slice(&pseudo_random(n * cols, 7), &[1, n as i32, cols as i32]);
            let expect = quantized_matmul(&x, &wq, &scales, &biases, true, group, bits).unwrap();
            let got = matmul_many_as(
                &x,
                &[(&wq, &scales, &biases, bits, group)],
                Activations::F32,
            )
            .unwrap()
            .remove(0);
            assert_eq!(got.shape(), expect.shape());
            let (e, g) = (expect.as_slice::<f32>(), got.as_slice::<f32>());
            for (i, (a, b)) in e.iter().zip(g).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "bits {bits} group {group} inputs {n} row {i}: mlx {a} host {b}"
                );
            }
        }
    }
}

/// A 4-bit `[rows, cols]` weight quantized by MLX in groups of 32, and its operands.
fn quantized(rows: usize, cols: usize) -> (Array, Array, Array) {
    let w = Array::from_slice(&pseudo_random(rows * cols, 5), &[rows as i32, cols as i32]);
    quantize(&w, 32, 4).unwrap()
}

fn rejects(result: Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(d) => assert_eq!(d.code, "rmlx::engine::host-kernel", "{what}: {d:?}"),
        Ok(v) => panic!("{what}: accepted ({v:?})"),
    }
}

/// Every safe entry point checks bits, group size and buffer lengths itself: parameters
/// that would make the kernels read past a buffer are errors, never out-of-bounds reads.
#[test]
fn bad_parameters_are_errors_not_out_of_bounds_reads() {
    let (wq, scales, biases) = quantized(8, 64);
    let x = Array::from_slice(&pseudo_random(64, 1), &[1, 64]);
    // A 4-bit weight described as 2-bit in groups of 64: the scale count fits, and a
    // 4-bit kernel would read twice the row's bytes.
    for (bits, group) in [
        (2, 64),
        (3, 32),
        (0, 32),
        (16, 32),
        (-4, 32),
        (4, 0),
        (4, 16),
        (4, -32),
        (4, 48),
    ] {
        assert!(
            !supports(bits, group, &x, &scales),
            "supports({bits}, {group})"
        );
        rejects(
            matmul_many(&x, &[(&wq, &scales, &biases, bits, group)]),
            &format!("matmul_many bits {bits} group {group}"),
        );
        let host = pseudo_random(64, 2);
        rejects(
            matvec_many_host(&host, &[(&wq, &scales, &biases, bits, group)]),
            &format!("matvec_many_host bits {bits} group {group}"),
        );
    }
    // Inputs whose last dimension is not the weight's input features.
    let wide = Array::from_slice(&pseudo_random(128, 1), &[1, 128]);
    rejects(
        matmul_many(&wide, &[(&wq, &scales, &biases, 4, 32)]),
        "128-wide input",
    );
    let two_rows_flat = Array::from_slice(&pseudo_random(128, 1), &[128]);
    rejects(
        matmul_many(&two_rows_flat, &[(&wq, &scales, &biases, 4, 32)]),
        "flat input",
    );
    rejects(
        matvec_many_host(&[0.0; 32], &[(&wq, &scales, &biases, 4, 32)]),
        "short host input",
    );
    // Scales and biases of another matrix; a weight that is not 2-D.
    let (_, small_scales, small_biases) = quantized(4, 64);
    rejects(
        matmul_many(&x, &[(&wq, &small_scales, &biases, 4, 32)]),
        "short scales",
    );
    rejects(
        matmul_many(&x, &[(&wq, &scales, &small_biases, 4, 32)]),
        "short biases",
    );
    let flat = wq.reshape(&[-1]).unwrap();
    rejects(
        matmul_many(&x, &[(&flat, &scales, &biases, 4, 32)]),
        "1-D weight",
    );
}

/// The AVX2 row dequantization (the prefill GEMM's) gives the scalar reference's bits
/// for every byte value, 4 and 8 bits, groups of 32 and 64.
#[test]
fn simd_dequantize_equals_scalar_bits() {
    if !simd_available() {
        panic!("no AVX2/FMA on this processor: the SIMD dequantization is not tested");
    }
    let (rows, cols) = (3, 256);
    for (bits, group) in [(4, 32), (4, 64), (8, 32), (8, 64)] {
        let packed: Vec<u8> = (0..rows * cols * bits / 8)
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        let groups = rows * cols / group;
        let scales = pseudo_random(groups, 5);
        let biases = pseudo_random(groups, 9);
        let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, bits, group)
            .expect("a valid layout");
        for r in 0..rows {
            let (mut simd, mut scalar) = (vec![0f32; cols], vec![0f32; cols]);
            m.dequantize_row(r, &mut simd);
            m.dequantize_row_scalar(r, &mut scalar);
            let (a, b): (Vec<u32>, Vec<u32>) = (
                simd.iter().map(|v| v.to_bits()).collect(),
                scalar.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(a, b, "{bits}-bit g{group}, row {r}");
        }
    }
}

#[test]
fn quant_matrix_checks_its_layout() {
    let packed = vec![0u8; 4 * 64 / 2];
    let (scales, biases) = (vec![1f32; 8], vec![0f32; 8]);
    let ok = QuantMatrix::new(&packed, &scales, &biases, 4, 64, 4, 32).unwrap();
    assert_eq!(ok.matmul(&pseudo_random(128, 3)).unwrap().len(), 8);
    let bad = [
        (
            "2 bits",
            QuantMatrix::new(&packed, &scales, &biases, 4, 128, 2, 64),
        ),
        (
            "group 16",
            QuantMatrix::new(&packed, &scales, &biases, 4, 64, 4, 16),
        ),
        (
            "group 0",
            QuantMatrix::new(&packed, &scales, &biases, 4, 64, 4, 0),
        ),
        (
            "cols not whole groups",
            QuantMatrix::new(&packed, &scales, &biases, 4, 48, 4, 32),
        ),
        ("no rows", QuantMatrix::new(&[], &[], &[], 0, 64, 4, 32)),
        ("no cols", QuantMatrix::new(&[], &[], &[], 4, 0, 4, 32)),
        (
            "short packed",
            QuantMatrix::new(&packed[1..], &scales, &biases, 4, 64, 4, 32),
        ),
        (
            "8 bits over 4-bit data",
            QuantMatrix::new(&packed, &scales, &biases, 4, 64, 8, 32),
        ),
        (
            "short scales",
            QuantMatrix::new(&packed, &scales[1..], &biases, 4, 64, 4, 32),
        ),
        (
            "short biases",
            QuantMatrix::new(&packed, &scales, &biases[1..], 4, 64, 4, 32),
        ),
        (
            "overflow",
            QuantMatrix::new(&packed, &scales, &biases, usize::MAX, 64, 4, 32),
        ),
    ];
    for (what, result) in bad {
        rejects(result, what);
    }
    rejects(ok.matmul(&[]), "empty input");
    rejects(ok.matmul(&pseudo_random(96, 3)), "input of 1.5 rows");
    rejects(
        QuantMatrix::matmul_many(&[ok], &pseudo_random(63, 3)),
        "63 values",
    );
}

/// The int8 kernels (SIMD and scalar reference) against the float products: the error
/// is the input's int8 rounding (≤ half a step of max|x|/127 per 32 columns), so the
/// bound is that step times Σ|w| over the row; and a row computed with three others
/// equals the same row computed alone, bit for bit.
#[test]
fn int8_activations_match_float_within_the_rounding_bound() {
    for (bits, group, rows, cols) in [
        (4, 32, 9, 96),
        (4, 64, 5, 128),
        (8, 32, 7, 64),
        (8, 128, 3, 256),
    ] {
        let w = Array::from_slice(
            &pseudo_random(rows * cols, bits as u32 + 3),
            &[rows as i32, cols as i32],
        );
        let (wq, scales, biases) = quantize(&w, group, bits).unwrap();
        let m = QuantMatrix::view(&wq, &scales, &biases, bits, group).unwrap();
        let deq = mlx_rs::ops::dequantize(&wq, &scales, &biases, group, bits).unwrap();
        let deq = deq.as_slice::<f32>();
        let xs: Vec<Vec<f32>> = (0..5).map(|i| pseudo_random(cols, 40 + i)).collect();
        let qs: Vec<Quantized> = xs.iter().map(|x| Quantized::new(x, &m)).collect();
        let b = bits as usize;
        let (one, four) = (Quantized::kernel::<1>(b), Quantized::kernel::<4>(b));
        let scalar: (Kernel<Quantized, 1>, Kernel<Quantized, 4>) = if bits == 8 {
            (i8_scalar::<8, 1>, i8_scalar::<8, 4>)
        } else {
            (i8_scalar::<4, 1>, i8_scalar::<4, 4>)
        };
        for r in 0..rows {
            let wr = &deq[r * cols..(r + 1) * cols];
            // SAFETY: layouts checked by `QuantMatrix::view` and `Quantized::new`.
            let together = unsafe { four(m.group, m.row(r), [&qs[0], &qs[1], &qs[2], &qs[3]]) };
            let reference =
                unsafe { (scalar.1)(m.group, m.row(r), [&qs[0], &qs[1], &qs[2], &qs[3]]) };
            for (i, x) in xs.iter().enumerate().take(4) {
                let [alone] = unsafe { one(m.group, m.row(r), [&qs[i]]) };
                let [scalar_alone] = unsafe { (scalar.0)(m.group, m.row(r), [&qs[i]]) };
                assert_eq!(
                    alone.to_bits(),
                    together[i].to_bits(),
                    "bits {bits} row {r}"
                );
                let exact: f32 = wr.iter().zip(x).map(|(a, b)| a * b).sum();
                let bound: f32 = x
                    .chunks(32)
                    .zip(wr.chunks(32))
                    .map(|(xb, wb)| {
                        let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        0.5 * step * wb.iter().map(|v| v.abs()).sum::<f32>()
                    })
                    .sum::<f32>()
                    + 1e-4 * (1.0 + exact.abs());
                for (what, got) in [
                    ("simd", alone),
                    ("scalar", scalar_alone),
                    ("scalar x4", reference[i]),
                ] {
                    assert!(
                        (got - exact).abs() <= bound,
                        "bits {bits} group {group} row {r} input {i} {what}: {got} vs float {exact} (bound {bound})"
                    );
                }
            }
        }
    }
}

/// The SIMD float families this processor runs; a missing one is said on stderr (an
/// AVX2-only processor tests the AVX2 kernels alone).
fn simd_families() -> Vec<Family> {
    assert!(
        simd_available(),
        "no AVX2/FMA on this processor: the SIMD float kernels are not tested"
    );
    if !avx512_available() {
        eprintln!("no AVX-512F on this processor: the AVX-512 float kernels are not tested");
        return vec![Family::Avx2];
    }
    vec![Family::Avx2, Family::Avx512]
}

/// `family`'s kernel for `N` inputs on one weight row: the first `N` of `xs`.
fn block_of<const N: usize>(
    family: Family,
    m: &QuantMatrix<'_>,
    r: usize,
    xs: &[Prepared],
) -> Vec<f32> {
    let kernel = f32_kernel::<N>(family, m.bits);
    let inputs: [&Prepared; N] = std::array::from_fn(|i| &xs[i]);
    // SAFETY: the family is one the processor runs (`simd_families`); layouts checked by
    // `QuantMatrix::new`; `prepare` made each input.
    unsafe { kernel(m.group, m.row(r), inputs) }.to_vec()
}

/// `family`'s results for blocks of two to four inputs, each block the first inputs of
/// `xs`.
fn blocks(family: Family, m: &QuantMatrix<'_>, r: usize, xs: &[Prepared]) -> Vec<Vec<f32>> {
    [block_of::<2>, block_of::<3>, block_of::<4>]
        .iter()
        .map(|f| f(family, m, r, xs))
        .collect()
}

/// A matrix's AMX layout is kept once made and dropped by [`forget_layouts`] (what a
/// dropped model calls), with the reference that kept its weights alive.
#[test]
fn amx_layouts_are_dropped_with_the_models() {
    if !amx_here("amx_layouts_are_dropped_with_the_models") {
        return;
    }
    let w = Array::from_slice(&pseudo_random(64 * 128, 5), &[64, 128]);
    let (wq, scales, biases) = quantize(&w, 32, 4).unwrap();
    let ops = [(&wq, &scales, &biases, 4, 32)];
    let views = views(&ops).unwrap();
    let key = views[0].packed.as_ptr() as usize;
    {
        // Made and held under one lock: a model dropped by another test cannot clear it
        // in between.
        let mut cache = layouts();
        let laid = lay_out_in(&mut cache, &ops, &views);
        assert!(laid[0].fits(&views[0]));
        assert!(cache.contains_key(&key), "a layout made is kept");
    }
    forget_layouts();
    assert!(!layouts().contains_key(&key), "forget_layouts drops it");
}

/// The 4-bit AVX-512 kernel that looks the weights up ([`avx512::dot_q4_table`], inputs
/// with [`Nibbles::Shifted`]) gives the bits of the one that converts them
/// ([`avx512::dot_q4`], [`Nibbles::InPlace`]) for one to four inputs: groups of 32, 64
/// and 128, rows of 128 and 576 columns, every byte value, inputs spanning six decades.
#[test]
fn avx512_table_lookup_gives_the_bits_of_the_conversion() {
    if !vbmi_available() {
        eprintln!("no AVX-512 VBMI on this processor: the table lookup is not tested");
        return;
    }
    for (group, cols) in [(32, 128), (64, 128), (128, 128), (32, 576), (64, 576)] {
        let rows = 6;
        let packed: Vec<u8> = (0..rows * cols / 2).map(|i| (i * 37 % 256) as u8).collect();
        let groups = rows * cols / group;
        let (scales, biases) = (pseudo_random(groups, 3), pseudo_random(groups, 4));
        let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, 4, group).unwrap();
        let x: Vec<Vec<f32>> = (0..4u32)
            .map(|i| {
                let scale = 10f32.powi(i as i32 * 2 - 3);
                pseudo_random(cols, 40 + i)
                    .iter()
                    .map(|v| v * scale)
                    .collect()
            })
            .collect();
        let shifted: Vec<Prepared> = x
            .iter()
            .map(|x| m.prepare_for(x, Nibbles::Shifted))
            .collect();
        let in_place: Vec<Prepared> = x
            .iter()
            .map(|x| m.prepare_for(x, Nibbles::InPlace))
            .collect();
        for r in 0..rows {
            let want = table_and_conversion::<4>(&m, r, &shifted, &in_place);
            assert_eq!(
                want.0, want.1,
                "g{group} {cols} columns row {r}, four inputs"
            );
            let one = table_and_conversion::<1>(&m, r, &shifted[2..], &in_place[2..]);
            assert_eq!(one.0, one.1, "g{group} {cols} columns row {r}, one input");
        }
    }
}

/// Row `r` of `m` against the first `N` inputs through [`avx512::dot_q4_table`] and
/// [`avx512::dot_q4`], as bits.
fn table_and_conversion<const N: usize>(
    m: &QuantMatrix<'_>,
    r: usize,
    shifted: &[Prepared],
    in_place: &[Prepared],
) -> (Vec<u32>, Vec<u32>) {
    let a: [&Prepared; N] = std::array::from_fn(|i| &shifted[i]);
    let b: [&Prepared; N] = std::array::from_fn(|i| &in_place[i]);
    // SAFETY: AVX-512 VBMI checked by the caller; layouts checked by `QuantMatrix::new`.
    let (t, c) = unsafe {
        (
            avx512::dot_q4_table::<N>(m.group, m.row(r), a),
            avx512::dot_q4::<N>(m.group, m.row(r), b),
        )
    };
    (t.map(f32::to_bits).to_vec(), c.map(f32::to_bits).to_vec())
}

/// How far two float32 sums of the same terms, in any order, may differ: each lies within
/// `γ_k · Σ|terms|` of the exact sum (`γ_k ≈ k · 2⁻²⁴`, `k` the additions and roundings
/// on a term's way: the columns, the product's two roundings, the bias term), so twice
/// that. A wrong column, lane or scale moves a result by a whole term, far more.
fn summation_bound(m: &QuantMatrix<'_>, r: usize, x: &Prepared) -> f32 {
    let (packed, scales, biases) = m.row(r);
    let mut magnitude = 0f64;
    for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
        let mut abs_x = 0f64;
        for c in g * m.group..(g + 1) * m.group {
            let q = if m.bits == 8 {
                super::quantized::<8>(packed, c, x.nibbles)
            } else {
                super::quantized::<4>(packed, c, x.nibbles)
            };
            magnitude += f64::from(q * s * x.x[c]).abs();
            let in_place = m.bits == 4 && c % 16 >= 8 && x.nibbles == Nibbles::InPlace;
            abs_x += f64::from(x.x[c]).abs() * if in_place { 16.0 } else { 1.0 };
        }
        magnitude += f64::from(b).abs() * abs_x;
    }
    let k = (m.cols + 4) as f64;
    (2.0 * k * f64::from(f32::EPSILON) / 2.0 * magnitude) as f32
}

/// Every SIMD float family this processor runs (AVX2; AVX-512 where present), one input
/// against the portable reference within [`summation_bound`]; and each input's result
/// the same, bit for bit, whether computed alone or in a block of two to four — greedy
/// results must not depend on batching (issue 14).
/// Rows of 128 and 576 columns: bias vectors whole and partial.
#[test]
fn float_kernels_match_the_reference_and_do_not_depend_on_the_block() {
    for family in simd_families() {
        for (bits, group, cols) in [
            (4, 32, 128),
            (4, 64, 128),
            (8, 32, 128),
            (8, 64, 128),
            (4, 32, 576),
            (8, 32, 576),
        ] {
            let rows = 5;
            let packed: Vec<u8> = (0..rows * cols * bits / 8)
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            let groups = rows * cols / group;
            let (scales, biases) = (pseudo_random(groups, 1), pseudo_random(groups, 2));
            let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, bits, group).unwrap();
            let xs: Vec<Prepared> = (0..4)
                .map(|i| m.prepare_for(&pseudo_random(cols, 10 + i), Nibbles::of(family)))
                .collect();
            let what = format!("{family:?} {bits}-bit g{group} {cols} columns");
            for r in 0..rows {
                let alone: Vec<f32> = (0..xs.len())
                    .map(|i| block_of::<1>(family, &m, r, &xs[i..])[0])
                    .collect();
                for (x, got) in xs.iter().zip(&alone) {
                    let [want] =
                        unsafe { f32_kernel::<1>(Family::Portable, bits)(group, m.row(r), [x]) };
                    let bound = summation_bound(&m, r, x);
                    assert!(
                        (want - got).abs() <= bound,
                        "{what} row {r}: reference {want}, kernel {got}, bound {bound}"
                    );
                }
                for block in blocks(family, &m, r, &xs) {
                    for (i, v) in block.iter().enumerate() {
                        assert_eq!(
                            v.to_bits(),
                            alone[i].to_bits(),
                            "{what} row {r} input {i} in a block of {}",
                            block.len()
                        );
                    }
                }
            }
        }
    }
}

/// Through `matmul_many` (the process's family, blocks cut from five and from nine
/// inputs), in both activation modes: each input's result equals the same input's
/// alone, bit for bit.
#[test]
fn matmul_many_results_do_not_depend_on_the_batch() {
    for (bits, group) in [(4usize, 32usize), (8, 64)] {
        let (rows, cols) = (70, 128);
        let packed: Vec<u8> = (0..rows * cols * bits / 8)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let groups = rows * cols / group;
        let (scales, biases) = (pseudo_random(groups, 1), pseudo_random(groups, 2));
        let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, bits, group).unwrap();
        for n in [5, 9] {
            let inputs = pseudo_random(n * cols, 30);
            for mode in [Activations::F32, Activations::Int8] {
                let together = QuantMatrix::matmul_many_as(&[m], &inputs, mode).unwrap();
                for (k, x) in inputs.chunks(cols).enumerate() {
                    let alone = QuantMatrix::matmul_many_as(&[m], x, mode).unwrap();
                    for r in 0..rows {
                        assert_eq!(
                            together[0][k * rows + r].to_bits(),
                            alone[0][r].to_bits(),
                            "{mode:?} {bits}-bit input {k} of {n} row {r}"
                        );
                    }
                }
            }
        }
    }
}

/// Pseudo-random bytes (the packed weights of a test matrix).
fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
    xorshift(seed).take(n).map(|s| (s >> 8) as u8).collect()
}

/// Output `r` of `m` against `x` in f64 (`Σ_c (q·s + b) · x`), and the bound an AMX
/// result must stay within: float32's rounding (2 ε) of the magnitudes the kernels sum —
/// every `|w · x|` — and of the limbs' representation, `max|x|` of each group against
/// the row's `Σ|q · s|` there. A wrong column, group, scale or lane moves a result by a
/// whole term, orders of magnitude more.
fn reference_and_bound(m: &QuantMatrix<'_>, r: usize, x: &[f32]) -> (f64, f64) {
    let (packed, scales, biases) = m.row(r);
    let (mut exact, mut magnitude) = (0f64, 0f64);
    for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
        let cols = g * m.group..(g + 1) * m.group;
        let max = x[cols.clone()]
            .iter()
            .fold(0f64, |a, v| a.max(f64::from(v.abs())));
        for c in cols {
            let q = f64::from(if m.bits == 8 {
                packed[c]
            } else if c % 2 == 0 {
                packed[c / 2] & 0x0f
            } else {
                packed[c / 2] >> 4
            });
            let w = q * f64::from(s) + f64::from(b);
            exact += w * f64::from(x[c]);
            magnitude += (w * f64::from(x[c])).abs() + (q * f64::from(s)).abs() * max;
        }
    }
    (exact, 2.0 * f64::from(f32::EPSILON) * magnitude)
}

/// Whether this process runs the AMX kernels; where it does not, says so on stderr and
/// checks that the process's family is another one (a test of the AMX kernels then
/// checks only that).
fn amx_here(test: &str) -> bool {
    match amx_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("{test}: no AMX here ({why}): the AMX kernels are NOT tested");
            assert_ne!(choose_family(HostKernels::Amx).0, Family::Amx);
            false
        }
    }
}

/// The AMX products against an f64 reference within [`reference_and_bound`] and against
/// the AVX-512 (else AVX2) float kernels within twice that: 4- and 8-bit, groups of 32,
/// 64, 96 (tiles of 32) and 128, one to eight inputs (blocks of five and the rest), row
/// counts that end in a partial block of 16, packed rows at a cache-line boundary and off
/// one; and each input's result the same bits as the same input alone.
#[test]
fn amx_products_match_the_reference_and_do_not_depend_on_the_batch() {
    if !amx_here("amx_products_match_the_reference") {
        return;
    }
    let float = if avx512_available() {
        Family::Avx512
    } else {
        Family::Avx2
    };
    for (bits, group, rows, cols) in [
        (4, 32, 35, 192),
        (4, 64, 50, 576),
        (4, 96, 17, 384),
        (4, 128, 33, 256),
        // Rows wider than one unpacked span (`amx::SPAN`): 1536 = 768 + 768, 1664 = 768 + 768 + 128.
        (4, 64, 20, 1536),
        (4, 32, 18, 1664),
        // Odd group counts (rounds of unequal size; 8 bits: a trailing 32-column chunk).
        (4, 32, 21, 160),
        (8, 32, 19, 96),
        (8, 32, 32, 128),
        (8, 64, 48, 576),
        (8, 128, 21, 384),
    ] {
        // The packed rows at a cache-line boundary and 16 bytes past one (every block is
        // transposed into the B tiles, so both must give the same products).
        let len = rows * cols * bits / 8;
        let bytes = random_bytes(len + 128, bits as u32 + group as u32);
        let aligned = bytes.as_ptr().align_offset(64);
        let offset = if (rows + cols).is_multiple_of(2) {
            0
        } else {
            16
        };
        let packed = &bytes[aligned + offset..aligned + offset + len];
        let groups = rows * cols / group;
        let scales: Vec<f32> = pseudo_random(groups, 1).iter().map(|v| v / 8.0).collect();
        let biases = pseudo_random(groups, 2);
        let m = QuantMatrix::new(packed, &scales, &biases, rows, cols, bits, group).unwrap();
        // Inputs of different sizes, one with a large outlier.
        let mut xs: Vec<f32> = (0..8usize)
            .flat_map(|i| {
                pseudo_random(cols, 20 + i as u32)
                    .into_iter()
                    .map(move |v| v * (1 + i) as f32)
            })
            .collect();
        xs[3 * cols + 5] = 300.0;
        let what = format!("{bits}-bit g{group} {rows}x{cols}");
        for n in 1..=8 {
            let x = &xs[..n * cols];
            let got = QuantMatrix::amx_products(&[m], x, None).remove(0);
            for (k, xk) in x.chunks(cols).enumerate() {
                let alone = QuantMatrix::amx_products(&[m], xk, None).remove(0);
                let prepared = m.prepare_for(xk, Nibbles::of(float));
                for r in 0..rows {
                    let v = got[k * rows + r];
                    assert_eq!(
                        v.to_bits(),
                        alone[r].to_bits(),
                        "{what} input {k} of {n}, row {r}: batched vs alone"
                    );
                    let (exact, bound) = reference_and_bound(&m, r, xk);
                    assert!(
                        (f64::from(v) - exact).abs() <= bound,
                        "{what} input {k} row {r}: amx {v}, exact {exact}, bound {bound}"
                    );
                    let [f] = unsafe { f32_kernel::<1>(float, bits)(group, m.row(r), [&prepared]) };
                    assert!(
                        (f64::from(v) - f64::from(f)).abs() <= 2.0 * bound,
                        "{what} input {k} row {r}: amx {v}, float {f}"
                    );
                }
            }
        }
    }
}

/// The AMX products with the weights read from their tile layout ([`amx::Layout`]: 4-bit
/// weights as nibbles, and as bytes) are the same bits as with the weights transposed per
/// call, for every input of a batch of one to eight: 4- and 8-bit, groups of 32 and 64 (and 96: tiles of 32), partial last
/// blocks of 16 rows, rows wider than one transposed span, several matrices in one call —
/// the first with float32 scales and biases that float16 cannot hold (kept as float32),
/// the second with ones it can (kept as float16).
#[test]
fn amx_layout_gives_the_transposing_path_bits() {
    if !amx_here("amx_layout_gives_the_transposing_path_bits") {
        return;
    }
    for (bits, group, rows, cols) in [
        (4, 32, 35, 192),
        (4, 64, 50, 576),
        (4, 96, 17, 384),
        (4, 64, 20, 1536),
        (4, 32, 70, 1664),
        (8, 32, 19, 96),
        (8, 32, 48, 160),
        (8, 64, 66, 576),
    ] {
        let what = format!("{bits}-bit g{group} {rows}x{cols}");
        let data: Vec<_> = (0..2u32)
            .map(|c| {
                let groups = rows * cols / group;
                let packed = random_bytes(rows * cols * bits / 8, 7 + c + bits as u32);
                // Multiples of 2⁻¹⁰ below 2 in magnitude: exact in float16.
                let half = |v: f32| {
                    if c == 1 {
                        (v * 1024.0).round() / 1024.0
                    } else {
                        v
                    }
                };
                let terms = |seed| -> Vec<f32> {
                    pseudo_random(groups, seed).into_iter().map(half).collect()
                };
                (packed, terms(1 + c), terms(3 + c))
            })
            .collect();
        let mats: Vec<_> = data
            .iter()
            .map(|(p, s, b)| QuantMatrix::new(p, s, b, rows, cols, bits, group).unwrap())
            .collect();
        // SAFETY: AMX (so AVX-512F/BW) is available.
        let layouts: [(&str, Vec<Laid>); 2] = unsafe {
            [
                (
                    "default",
                    mats.iter().map(|m| amx::Layout::new(m).into()).collect(),
                ),
                (
                    "bytes",
                    mats.iter()
                        .map(|m| amx::Layout::unpacked(m).into())
                        .collect(),
                ),
            ]
        };
        for (_, laid) in &layouts {
            let halves: Vec<bool> = laid.iter().map(|l| l.half_terms()).collect();
            assert_eq!(halves, [false, true], "{what}: float16 scales and biases");
        }
        let xs = pseudo_random(8 * cols, 31);
        for n in 1..=8 {
            let x = &xs[..n * cols];
            let transposed = QuantMatrix::amx_products(&mats, x, None);
            for (kind, laid) in &layouts {
                let read = QuantMatrix::amx_products(&mats, x, Some(laid));
                for (i, (t, r)) in transposed.iter().zip(&read).enumerate() {
                    for (j, (a, b)) in t.iter().zip(r).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{what} matrix {i}, {n} inputs, value {j}: transposed {a}, \
                             {kind} layout {b}"
                        );
                    }
                }
            }
        }
    }
}

/// A NaN or an infinity in an input makes that input's outputs NaN or infinite, as the
/// float kernels do (a broken model must not look healthy), and leaves the others alone.
#[test]
fn amx_products_propagate_nan_and_infinity() {
    if !amx_here("amx_products_propagate_nan_and_infinity") {
        return;
    }
    // Groups of 32 with an odd count (a trailing 32-column chunk) and of 64.
    for (rows, cols, group) in [(20, 128, 64), (20, 160, 32)] {
        nan_and_infinity_stay_in_their_input(rows, cols, group);
    }
}

/// [`amx_products_propagate_nan_and_infinity`] for one matrix shape.
fn nan_and_infinity_stay_in_their_input(rows: usize, cols: usize, group: usize) {
    let packed = random_bytes(rows * cols / 2, 3);
    let scales = vec![0.1f32; rows * cols / group];
    let biases = vec![0.5f32; rows * cols / group];
    let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, 4, group).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = pseudo_random(3 * cols, 4);
        x[cols + 7] = bad;
        let y = QuantMatrix::amx_products(&[m], &x, None).remove(0);
        let clean = QuantMatrix::amx_products(&[m], &x[..cols], None).remove(0);
        for r in 0..rows {
            assert!(
                !y[rows + r].is_finite(),
                "{bad}: row {r} gave {}",
                y[rows + r]
            );
            assert_eq!(
                y[r].to_bits(),
                clean[r].to_bits(),
                "{bad}: the clean input changed"
            );
        }
    }
}

/// A server of batched steps runs the AMX kernels by default where they are available;
/// `1`, `avx2`, `0`, `amx-batch` and any process that is not such a server keep what they
/// ask for, without detecting AMX (the detection requests the tile data from the kernel).
#[test]
fn a_server_of_batched_steps_runs_the_amx_tiles_by_default() {
    let available = |amx: bool| move || amx;
    assert_eq!(
        effective_width(HostKernels::Auto, true, available(true)),
        HostKernels::Amx
    );
    assert_eq!(
        effective_width(HostKernels::Auto, true, available(false)),
        HostKernels::Auto
    );
    let not_asked = || -> bool { panic!("AMX detection outside a server's `auto`") };
    assert_eq!(
        effective_width(HostKernels::Auto, false, not_asked),
        HostKernels::Auto
    );
    for asked in [
        HostKernels::Float,
        HostKernels::Avx2,
        HostKernels::Off,
        HostKernels::AmxBatch,
        HostKernels::Amx,
    ] {
        for serving in [true, false] {
            assert_eq!(
                effective_width(asked, serving, not_asked),
                asked,
                "{asked:?}"
            );
        }
    }
}

/// The family follows `RMLX_HOST_KERNELS`: AMX only with `amx`, and only where
/// available (otherwise the fallback, and the reason, said on stderr); never AMX by
/// default outside a server ([`effective_width`]).
#[test]
fn the_kernel_family_follows_the_switch_and_the_processor() {
    let widths = [
        HostKernels::Auto,
        HostKernels::Float,
        HostKernels::Avx2,
        HostKernels::Off,
        HostKernels::AmxBatch,
    ];
    for width in widths {
        assert_ne!(choose_family(width).0, Family::Amx, "{width:?}");
    }
    let (amx, why) = choose_family(HostKernels::Amx);
    match amx_available() {
        Ok(()) => assert_eq!(amx, Family::Amx),
        Err(e) => {
            eprintln!("no AMX here ({e}): RMLX_HOST_KERNELS=amx gives {amx:?} ({why})");
            assert_ne!(amx, Family::Amx);
            assert!(why.contains(&e), "{why}");
        }
    }
}

/// Every row of `m` against a block of one, two or four inputs, AVX-512 (the timing
/// loop of [`amx_speed`]).
fn avx512_rows(m: &QuantMatrix<'_>, block: &[Prepared]) {
    fn run<const N: usize>(m: &QuantMatrix<'_>, block: &[Prepared]) {
        let kernel = f32_kernel::<N>(Family::Avx512, m.bits);
        let inputs: [&Prepared; N] = std::array::from_fn(|i| &block[i]);
        for r in 0..m.rows {
            // SAFETY: AVX-512 checked by the caller; layouts checked by `QuantMatrix::new`.
            std::hint::black_box(unsafe { kernel(m.group, m.row(r), inputs) });
        }
    }
    match block.len() {
        4 => run::<4>(m, block),
        2 => run::<2>(m, block),
        _ => run::<1>(m, block),
    }
}

/// A measurement: as [`amx_speed`] but with the weights streamed from memory as in a
/// decode step (SmolLM2's weights are 84 MB a step, against a 2 MB L2): 40 or 150 distinct
/// copies of a 1536×576 4-bit matrix (22 or 83 MB with scales and biases) in tasks of 192
/// rows, and 5 copies of the 49152×576 LM head (88 MB) in tasks of 6144 rows, as the pool
/// cuts them; one thread, the inputs prepared once, AVX-512 and AMX alternated three times.
/// `cargo test --release --workspace --lib qmv::tests::amx_speed_cold -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run on a quiet machine, in release"]
fn amx_speed_cold() {
    if !amx_here("amx_speed_cold") || !avx512_available() {
        return;
    }
    let (cols, bits) = (576, 4);
    for (copies, group, rows, task) in [
        (40, 64, 1536, 192),
        (150, 64, 1536, 192),
        (150, 32, 1536, 192),
        (5, 64, 49152, 6144),
    ] {
        let groups = rows * cols / group;
        let data: Vec<_> = (0..copies as u32)
            .map(|c| {
                let packed = random_bytes(rows * cols * bits / 8, 5 + c);
                (
                    packed,
                    pseudo_random(groups, 1 + c),
                    pseudo_random(groups, 2 + c),
                )
            })
            .collect();
        let mats: Vec<_> = data
            .iter()
            .map(|(p, s, b)| QuantMatrix::new(p, s, b, rows, cols, bits, group).unwrap())
            .collect();
        let xs = pseudo_random(4 * cols, 9);
        for n in [1usize, 4] {
            let inputs: Vec<&[f32]> = xs.chunks(cols).take(n).collect();
            let prepared: Vec<Prepared> = inputs
                .iter()
                .map(|x| mats[0].prepare_for(x, Nibbles::of(Family::Avx512)))
                .collect();
            // SAFETY: AMX available; the inputs hold `cols` values.
            let tiles_in = unsafe { amx::Inputs::new(&inputs, &mats[0]) };
            // SAFETY: AMX available.
            let (laid, bytes): (Vec<_>, Vec<_>) = mats
                .iter()
                .map(|m| unsafe { (amx::Layout::new(m), amx::Layout::unpacked(m)) })
                .unzip();
            let mut out = vec![0f32; task * n];
            let reps = 10;
            type Task<'t> = dyn FnMut(&QuantMatrix<'_>, &amx::Layout, usize, &mut [f32]) + 't;
            let mut time = |layouts: &[amx::Layout], f: &mut Task<'_>| {
                let start = std::time::Instant::now();
                for _ in 0..reps {
                    for (m, l) in mats.iter().zip(layouts) {
                        for first in (0..rows).step_by(task) {
                            f(m, l, first, &mut out);
                        }
                    }
                }
                start.elapsed().as_secs_f64() * 1e6 / (reps * copies) as f64
            };
            let mut line =
                format!("{copies} copies of {rows}x{cols}, g{group}, {n} inputs, us per matrix:");
            for _ in 0..3 {
                let avx_us = time(&laid, &mut |m, _, first, out| match n {
                    4 => m.pass::<Prepared, 4>(&prepared, (first, 0, n), out),
                    _ => m.pass::<Prepared, 1>(&prepared, (first, 0, n), out),
                });
                // SAFETY: AMX available; inputs prepared for this layout; rows in range.
                let amx_us = time(&laid, &mut |m, _, first, out| unsafe {
                    amx::rows(
                        m,
                        &tiles_in,
                        None,
                        (first, task, 0, n),
                        &mut amx::Dest::RowsN(out),
                    )
                });
                // SAFETY: as above; `l` made from `m`; `first` a multiple of 16.
                let mut read = |m: &QuantMatrix<'_>, l: &amx::Layout, first, out: &mut [f32]| unsafe {
                    let out = &mut amx::Dest::RowsN(out);
                    amx::rows(m, &tiles_in, Some(l), (first, task, 0, n), out)
                };
                let laid_us = time(&laid, &mut read);
                let bytes_us = time(&bytes, &mut read);
                line += &format!(
                    " AMX {amx_us:.1} / nibbles {laid_us:.1} / bytes {bytes_us:.1} / AVX-512 {avx_us:.1};"
                );
            }
            eprintln!("{line}");
        }
    }
}

/// A measurement: SmolLM2 projection shapes (4- and 8-bit, groups of 64 and 32) at one to
/// five inputs, on one thread, the AMX kernels (their input preparation included) against
/// the AVX-512 float kernels.
/// `cargo test --release --workspace --lib qmv::tests::amx_speed -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run on a quiet machine, in release"]
fn amx_speed() {
    if !amx_here("amx_speed") || !avx512_available() {
        return;
    }
    for (rows, cols, bits, group) in [
        (1536, 576, 4, 64),
        (576, 1536, 4, 64),
        (4096, 576, 8, 64),
        (1536, 576, 4, 32),
        (4096, 576, 8, 32),
    ] {
        let packed = random_bytes(rows * cols * bits / 8, 5);
        let groups = rows * cols / group;
        let (scales, biases) = (pseudo_random(groups, 1), pseudo_random(groups, 2));
        let m = QuantMatrix::new(&packed, &scales, &biases, rows, cols, bits, group).unwrap();
        let xs = pseudo_random(5 * cols, 9);
        let prepared: Vec<Prepared> = xs
            .chunks(cols)
            .map(|x| m.prepare_for(x, Nibbles::of(Family::Avx512)))
            .collect();
        // SAFETY: AMX available.
        let (layout, bytes) = unsafe { (amx::Layout::new(&m), amx::Layout::unpacked(&m)) };
        for n in [1usize, 2, 4, 5] {
            let reps = 200;
            let inputs: Vec<&[f32]> = xs.chunks(cols).take(n).collect();
            let mut out = vec![0f32; rows * n];
            let block = amx::BLOCK;
            let mut amx = |laid: Option<&amx::Layout>| {
                let start = std::time::Instant::now();
                for _ in 0..reps {
                    for (k, inputs) in inputs.chunks(block).enumerate() {
                        // SAFETY: AMX available; the inputs hold `cols` values; all rows,
                        // `[rows, n]`, this block's inputs from `k · block`.
                        let x = unsafe { amx::Inputs::new(inputs, &m) };
                        let at = (0, rows, k * block, n);
                        unsafe { amx::rows(&m, &x, laid, at, &mut amx::Dest::RowsN(&mut out)) };
                    }
                }
                start.elapsed().as_secs_f64() * 1e6 / reps as f64
            };
            let amx_us = amx(None);
            let laid_us = amx(Some(&layout));
            let bytes_us = amx(Some(&bytes));
            let start = std::time::Instant::now();
            for _ in 0..reps {
                for block in prepared[..n].chunks(4) {
                    avx512_rows(&m, block);
                }
            }
            let avx_us = start.elapsed().as_secs_f64() * 1e6 / reps as f64;
            eprintln!("{rows}x{cols} {bits}-bit g{group}, {n} inputs: AMX {amx_us:.1} us, laid out {laid_us:.1} us (bytes {bytes_us:.1}), AVX-512 {avx_us:.1} us");
        }
    }
}
