//! GGML storage types: the type table (block size and bytes per block of every ggml type, so a
//! file can be validated even when its types cannot be decoded), dequantization to f32 of the
//! float, integer, legacy (Q4_0 … Q8_1), K-quant (Q2_K … Q8_K) and IQ4 types, and the exact
//! re-packing of Q4_0 / Q4_1 / Q8_0 blocks into MLX affine quantization with group size 32.
//!
//! MLX affine layout produced here: `value = scale * q + bias`, `q` unsigned; a row of `K`
//! values is `K * bits / 32` little-endian u32 words, element `i` of a word at bit `bits * i`;
//! one f16 scale and one f16 bias per group of 32 values.

use std::fmt;

use half::f16;

use crate::diagnostic::{code, Diagnostic, Result};

/// A ggml tensor storage type (the ids are those of `enum ggml_type`).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// Values per legacy block (and per MLX group produced here).
pub const QK: usize = 32;
/// Group size of the MLX affine quantization produced from Q4_0/Q4_1/Q8_0.
pub const MLX_GROUP_SIZE: usize = 32;

impl GgmlType {
    /// The type with this ggml id, if known.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// Values per block (1 for plain element types).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => QK,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
        }
    }

    /// Is this a block-quantized type (as opposed to a plain float or integer type)?
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Can [`dequantize`] decode this type?
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        !matches!(
            self,
            IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ1_M | TQ1_0 | TQ2_0
        )
    }

    /// Bits of the exact MLX affine (group 32) equivalent, for Q4_0, Q4_1 and Q8_0.
    pub fn mlx_affine_bits(self) -> Option<u32> {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 => Some(4),
            GgmlType::Q8_0 => Some(8),
            _ => None,
        }
    }

    /// The llama.cpp name, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 85, 101,
];

/// The E2M1 values of MXFP4's 4-bit codes, doubled (ggml's table; the scale is halved).
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale `2^(e - 127)` (ggml's `ggml_e8m0_to_fp32_half`).
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Dequantizes `data` (a whole number of blocks of type `ty`) to f32.
///
/// Errors with `rmlx::gguf::unsupported-type` for types that cannot be decoded (IQ1/IQ2/IQ3,
/// TQ) and `rmlx::gguf::bad-tensor` when `data` is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    if !ty.can_dequantize() {
        return Err(Diagnostic::error(
            code::Gguf::UnsupportedType,
            format!("cannot dequantize ggml type {ty}"),
        )
        .with_help(
            "supported: F32, F16, BF16, F64, I8..I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, \
             Q2_K..Q8_K, IQ4_NL, IQ4_XS, MXFP4; re-quantize the GGUF with one of these",
        ));
    }
    let ts = ty.type_size();
    if !data.len().is_multiple_of(ts) {
        return Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!(
                "{} bytes of {ty} data is not a whole number of {ts}-byte blocks",
                data.len()
            ),
        ));
    }
    let n_blocks = data.len() / ts;
    let bs = ty.block_size();
    let mut out = vec![0f32; n_blocks * bs];
    for (blk, y) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        dequantize_block(ty, blk, y);
    }
    Ok(out)
}

/// Decodes one block (`b.len() == ty.type_size()`, `y.len() == ty.block_size()`).
fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        F16 => y[0] = h(b, 0),
        BF16 => y[0] = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        F64 => y[0] = f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as f32,
        I8 => y[0] = b[0] as i8 as f32,
        I16 => y[0] = i16::from_le_bytes([b[0], b[1]]) as f32,
        I32 => y[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        I64 => y[0] = i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as f32,
        Q4_0 => {
            let d = h(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        Q4_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0x0F) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        Q5_0 => {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let xh0 = ((qh >> j) << 4) & 0x10;
                let xh1 = (qh >> (j + 12)) & 0x10;
                let x0 = ((qs[j] as u32 & 0x0F) | xh0) as i32 - 16;
                let x1 = ((qs[j] as u32 >> 4) | xh1) as i32 - 16;
                y[j] = x0 as f32 * d;
                y[j + 16] = x1 as f32 * d;
            }
        }
        Q5_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let xh0 = ((qh >> j) << 4) & 0x10;
                let xh1 = (qh >> (j + 12)) & 0x10;
                let x0 = (qs[j] as u32 & 0x0F) | xh0;
                let x1 = (qs[j] as u32 >> 4) | xh1;
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            }
        }
        Q8_0 => {
            let d = h(b, 0);
            for j in 0..32 {
                y[j] = b[2 + j] as i8 as f32 * d;
            }
        }
        Q8_1 => {
            let d = h(b, 0);
            for j in 0..32 {
                y[j] = b[4 + j] as i8 as f32 * d;
            }
        }
        Q2_K => {
            let scales = &b[0..16];
            let qs = &b[16..80];
            let (d, dmin) = (h(b, 80), h(b, 82));
            let mut is = 0;
            let mut yi = 0;
            for n in 0..2 {
                let q = &qs[32 * n..32 * n + 32];
                for j in 0..4 {
                    let shift = 2 * j;
                    for half in 0..2 {
                        let sc = scales[is];
                        is += 1;
                        let dl = d * (sc & 0x0F) as f32;
                        let ml = dmin * (sc >> 4) as f32;
                        for l in 0..16 {
                            y[yi] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                            yi += 1;
                        }
                    }
                }
            }
        }
        Q3_K => {
            let hmask = &b[0..32];
            let qs = &b[32..96];
            let raw = &b[96..108];
            let d_all = h(b, 108);
            let mut sc = [0i32; 16];
            for i in 0..4 {
                sc[i] = ((raw[i] & 0x0F) | ((raw[8 + i] & 3) << 4)) as i32 - 32;
                sc[4 + i] = ((raw[4 + i] & 0x0F) | (((raw[8 + i] >> 2) & 3) << 4)) as i32 - 32;
                sc[8 + i] = ((raw[i] >> 4) | (((raw[8 + i] >> 4) & 3) << 4)) as i32 - 32;
                sc[12 + i] = ((raw[4 + i] >> 4) | (((raw[8 + i] >> 6) & 3) << 4)) as i32 - 32;
            }
            let mut is = 0;
            let mut yi = 0;
            let mut m: u8 = 1;
            for n in 0..2 {
                let q = &qs[32 * n..32 * n + 32];
                for j in 0..4 {
                    let shift = 2 * j;
                    for half in 0..2 {
                        let dl = d_all * sc[is] as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * half;
                            let lo = ((q[k] >> shift) & 3) as i32;
                            let hi = if hmask[k] & m != 0 { 0 } else { 4 };
                            y[yi] = dl * (lo - hi) as f32;
                            yi += 1;
                        }
                    }
                    m = m.wrapping_shl(1);
                }
            }
        }
        Q4_K | Q5_K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let (qh, ql) = if ty == Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                let q = &ql[32 * c..32 * c + 32];
                for half in 0..2 {
                    let (sc, m) = scale_min_k4(2 * c + half, scales);
                    let d1 = d * sc as f32;
                    let m1 = dmin * m as f32;
                    let bit = 1u8 << (2 * c + half);
                    for l in 0..32 {
                        let mut v = if half == 0 { q[l] & 0x0F } else { q[l] >> 4 };
                        if let Some(qh) = qh {
                            if qh[l] & bit != 0 {
                                v += 16;
                            }
                        }
                        y[64 * c + 32 * half + l] = d1 * v as f32 - m1;
                    }
                }
            }
        }
        Q6_K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = h(b, 208);
            for n in 0..2 {
                let ql = &ql[64 * n..64 * n + 64];
                let qh = &qh[32 * n..32 * n + 32];
                let sc = &sc[8 * n..8 * n + 8];
                let y = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        Q8_K => {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for j in 0..QK_K {
                y[j] = d * (b[4 + j] as i8) as f32;
            }
        }
        IQ4_NL => {
            let d = h(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = d * KVALUES_IQ4NL[(qs[j] & 0x0F) as usize] as f32;
                y[j + 16] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
        IQ4_XS => {
            let d = h(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            let scales_l = &b[4..8];
            let qs = &b[8..136];
            for ib in 0..8 {
                let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32
                    | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
                let dl = d * (ls - 32) as f32;
                let q = &qs[16 * ib..16 * ib + 16];
                let y = &mut y[32 * ib..32 * ib + 32];
                for j in 0..16 {
                    y[j] = dl * KVALUES_IQ4NL[(q[j] & 0x0F) as usize] as f32;
                    y[j + 16] = dl * KVALUES_IQ4NL[(q[j] >> 4) as usize] as f32;
                }
            }
        }
        MXFP4 => {
            let d = e8m0_half(b[0]);
            let qs = &b[1..17];
            for j in 0..16 {
                y[j] = d * KVALUES_MXFP4[(qs[j] & 0x0F) as usize] as f32;
                y[j + 16] = d * KVALUES_MXFP4[(qs[j] >> 4) as usize] as f32;
            }
        }
        IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ1_M | TQ1_0 | TQ2_0 => {
            // Rejected by `dequantize` before any block is decoded.
            y.fill(f32::NAN);
        }
    }
}

/// The 6-bit (scale, min) pair `j` of a Q4_K/Q5_K super-block.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The MLX scale and bias of one Q4_0/Q4_1/Q8_0 block, computed in f32 (exact).
#[inline]
fn affine_scale_bias(ty: GgmlType, b: &[u8]) -> (f32, f32) {
    let d = h(b, 0);
    match ty {
        GgmlType::Q4_0 => (d, -8.0 * d),
        GgmlType::Q4_1 => (d, h(b, 2)),
        _ => (d, -128.0 * d),
    }
}

fn check_affine(ty: GgmlType, data: &[u8]) -> Result<usize> {
    if ty.mlx_affine_bits().is_none() {
        return Err(Diagnostic::error(
            code::Gguf::UnsupportedType,
            format!("ggml type {ty} has no exact MLX affine equivalent"),
        ));
    }
    if !data.len().is_multiple_of(ty.type_size()) {
        return Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!(
                "{} bytes of {ty} data is not a whole number of {}-byte blocks",
                data.len(),
                ty.type_size()
            ),
        ));
    }
    Ok(data.len() / ty.type_size())
}

/// True when every block's MLX bias (and scale) is representable in f16.
///
/// Q4_1's `d` and `m` are f16 already; Q4_0's bias `-8d` and Q8_0's `-128d` are exact in f16
/// unless they overflow, which this detects. Non-affine types return false.
pub fn affine_fits_f16(ty: GgmlType, data: &[u8]) -> bool {
    if check_affine(ty, data).is_err() {
        return false;
    }
    data.chunks_exact(ty.type_size()).all(|b| {
        let (s, bias) = affine_scale_bias(ty, b);
        let back = f16::from_f32(bias).to_f32();
        if s.is_finite() && !back.is_finite() {
            return false; // a finite scale whose bias overflows f16
        }
        // NaN scales stay NaN either way.
        bias.is_nan() || back == bias
    })
}

/// The packed MLX words of Q4_0/Q4_1/Q8_0 data: `bits * 32 / 32 = bits` u32 words per block,
/// in block order (so a row of `K` values gives `K * bits / 32` words).
pub fn affine_words(ty: GgmlType, data: &[u8]) -> Result<Vec<u32>> {
    let n_blocks = check_affine(ty, data)?;
    let bits = ty.mlx_affine_bits().unwrap_or(4) as usize;
    let mut out = Vec::with_capacity(n_blocks * bits);
    for b in data.chunks_exact(ty.type_size()) {
        match ty {
            GgmlType::Q8_0 => {
                for w in 0..8 {
                    let mut word = 0u32;
                    for i in 0..4 {
                        let q = (b[2 + 4 * w + i] as i8 as i32 + 128) as u32;
                        word |= q << (8 * i);
                    }
                    out.push(word);
                }
            }
            _ => {
                let qs = if ty == GgmlType::Q4_0 {
                    &b[2..18]
                } else {
                    &b[4..20]
                };
                // Elements 0..16 are the low nibbles of qs[0..16], 16..32 the high nibbles.
                for w in 0..4 {
                    let (start, shift) = ((w % 2) * 8, (w / 2) * 4);
                    let mut word = 0u32;
                    for i in 0..8 {
                        word |= (((qs[start + i] >> shift) & 0x0F) as u32) << (4 * i);
                    }
                    out.push(word);
                }
            }
        }
    }
    Ok(out)
}

/// The f16 scales (one per block) of Q4_0/Q4_1/Q8_0 data.
pub fn affine_scales(ty: GgmlType, data: &[u8]) -> Result<Vec<f16>> {
    check_affine(ty, data)?;
    Ok(data
        .chunks_exact(ty.type_size())
        .map(|b| f16::from_f32(affine_scale_bias(ty, b).0))
        .collect())
}

/// The f16 biases (one per block) of Q4_0/Q4_1/Q8_0 data; check [`affine_fits_f16`] first.
pub fn affine_biases(ty: GgmlType, data: &[u8]) -> Result<Vec<f16>> {
    check_affine(ty, data)?;
    Ok(data
        .chunks_exact(ty.type_size())
        .map(|b| f16::from_f32(affine_scale_bias(ty, b).1))
        .collect())
}

/// MXFP4 blocks as MLX's `mxfp4` mode stores them, exactly (both are OCP MX: E2M1 codes in
/// the same order, one E8M0 exponent per 32 values; ggml doubles its value table and halves
/// the scale, which cancels): the packed codes, 16 bytes per block where byte `k` holds
/// value `2k` in its low nibble and `2k + 1` in its high one (ggml's block holds value `j`
/// and `j + 16` in byte `j`) — MLX's uint32 weight words, little-endian.
pub fn mxfp4_codes(data: &[u8]) -> Result<Vec<u8>> {
    let blocks = mxfp4_blocks(data)?;
    let mut out = Vec::with_capacity(blocks.len() * 16);
    for b in blocks {
        let qs = &b[1..17];
        let code = |i: usize| (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
        out.extend((0..16).map(|k| code(2 * k) | (code(2 * k + 1) << 4)));
    }
    Ok(out)
}

/// The E8M0 scale byte of each MXFP4 block (MLX's uint8 `scales`).
pub fn mxfp4_scales(data: &[u8]) -> Result<Vec<u8>> {
    Ok(mxfp4_blocks(data)?.map(|b| b[0]).collect())
}

fn mxfp4_blocks(data: &[u8]) -> Result<std::slice::ChunksExact<'_, u8>> {
    let ts = GgmlType::MXFP4.type_size();
    if !data.len().is_multiple_of(ts) {
        return Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!(
                "{} bytes of MXFP4 data is not a whole number of {ts}-byte blocks",
                data.len()
            ),
        ));
    }
    Ok(data.chunks_exact(ts))
}

/// MLX affine dequantization of packed words (reference for tests and checks):
/// `scale * q + bias` in f32, `group_size` values per scale.
pub fn mlx_affine_dequantize(
    words: &[u32],
    scales: &[f16],
    biases: &[f16],
    bits: u32,
    group_size: usize,
) -> Vec<f32> {
    let per_word = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let mut out = Vec::with_capacity(words.len() * per_word);
    for (wi, &w) in words.iter().enumerate() {
        for i in 0..per_word {
            let idx = wi * per_word + i;
            let g = idx / group_size;
            let (Some(s), Some(b)) = (scales.get(g), biases.get(g)) else {
                return out;
            };
            let q = (w >> (bits as usize * i)) & mask;
            out.push(s.to_f32() * q as f32 + b.to_f32());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    /// Tiny deterministic generator (xorshift64*), so tests need no extra crates.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn byte(&mut self) -> u8 {
            (self.next() >> 56) as u8
        }
        /// A finite f16 of moderate magnitude, either sign.
        pub(crate) fn f16(&mut self) -> f16 {
            let mag = (self.next() % 10_000) as f32 / 1000.0 + 1e-3;
            let sign = if self.next() & 1 == 0 { 1.0 } else { -1.0 };
            f16::from_f32(sign * mag * 0.01)
        }
    }

    fn random_block(ty: GgmlType, rng: &mut Rng) -> Vec<u8> {
        let mut b: Vec<u8> = (0..ty.type_size()).map(|_| rng.byte()).collect();
        b[0..2].copy_from_slice(&rng.f16().to_bits().to_le_bytes());
        if ty == GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&rng.f16().to_bits().to_le_bytes());
        }
        b
    }

    #[test]
    fn legacy_blocks_map_exactly_onto_mlx_affine() {
        let mut rng = Rng::new(7);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let bits = ty.mlx_affine_bits().unwrap();
            for _ in 0..200 {
                let data: Vec<u8> = (0..4).flat_map(|_| random_block(ty, &mut rng)).collect();
                let reference = dequantize(ty, &data).unwrap();
                assert!(affine_fits_f16(ty, &data));
                let words = affine_words(ty, &data).unwrap();
                assert_eq!(words.len(), 4 * 32 * bits as usize / 32);
                let scales = affine_scales(ty, &data).unwrap();
                let biases = affine_biases(ty, &data).unwrap();
                let mlx = mlx_affine_dequantize(&words, &scales, &biases, bits, 32);
                assert_eq!(reference.len(), mlx.len());
                for (i, (a, b)) in reference.iter().zip(&mlx).enumerate() {
                    // `==` (not bit equality): q*d may be -0.0 where scale*q + bias is +0.0.
                    assert!(a == b, "{ty} element {i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q4_0_layout_by_hand() {
        // d = 1.0, qs[j] = j (low nibble) | (15 - j) << 4 (high nibble).
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        for j in 0..16 {
            b[2 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let y = dequantize(GgmlType::Q4_0, &b).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 - 8.0);
            assert_eq!(y[j + 16], (15 - j) as f32 - 8.0);
        }
        let w = affine_words(GgmlType::Q4_0, &b).unwrap();
        assert_eq!(w[0], 0x7654_3210);
        assert_eq!(w[1], 0xFEDC_BA98);
        assert_eq!(w[2], 0x89AB_CDEF);
        assert_eq!(w[3], 0x0123_4567);
        assert_eq!(affine_biases(GgmlType::Q4_0, &b).unwrap()[0].to_f32(), -8.0);
    }

    /// MXFP4 decoded from the MLX layout by the OCP MX rule (E2M1 value × 2^(e − 127)) equals
    /// ggml's dequantization of the block it was repacked from.
    #[test]
    fn mxfp4_blocks_map_exactly_onto_mlx_mxfp4() {
        const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let mut rng = Rng::new(11);
        let data: Vec<u8> = (0..64)
            .flat_map(|_| {
                let mut b: Vec<u8> = (0..17).map(|_| rng.byte()).collect();
                b[0] = 100 + b[0] % 50;
                b
            })
            .collect();
        let reference = dequantize(GgmlType::MXFP4, &data).unwrap();
        let (codes, scales) = (mxfp4_codes(&data).unwrap(), mxfp4_scales(&data).unwrap());
        assert_eq!((codes.len(), scales.len()), (64 * 16, 64));
        for (i, want) in reference.iter().enumerate() {
            let code = (codes[i / 2] >> (4 * (i % 2))) & 0x0F;
            let sign = if code & 8 == 0 { 1.0 } else { -1.0 };
            let scale = 2f32.powi(scales[i / 32] as i32 - 127);
            assert_eq!(sign * E2M1[(code & 7) as usize] * scale, *want, "value {i}");
        }
        assert!(mxfp4_codes(&data[..20]).is_err());
    }

    #[test]
    fn overflowing_bias_is_detected() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(1000.0).to_bits().to_le_bytes());
        assert!(!affine_fits_f16(GgmlType::Q8_0, &b)); // -128000 overflows f16
        b[0..2].copy_from_slice(&f16::from_f32(500.0).to_bits().to_le_bytes());
        assert!(affine_fits_f16(GgmlType::Q8_0, &b)); // -64000 fits
    }

    fn put_f16(b: &mut [u8], at: usize, v: f32) {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
    }

    /// Reference values of a K-quant block as the format defines them, given the decoded
    /// fields: element `e` uses sub-block `e / sub`.
    fn check(ty: GgmlType, block: &[u8], expected: &[f32]) {
        let y = dequantize(ty, block).unwrap();
        assert_eq!(y.len(), QK_K);
        for e in 0..QK_K {
            assert_eq!(y[e], expected[e], "{ty} element {e}");
        }
    }

    #[test]
    fn q4_k_and_q5_k_by_hand() {
        let mut rng = Rng::new(11);
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            let (d, dmin) = (0.5f32, 0.25f32);
            let sc: Vec<u8> = (0..8).map(|_| rng.byte() & 63).collect();
            let mn: Vec<u8> = (0..8).map(|_| rng.byte() & 63).collect();
            let bits = if ty == GgmlType::Q5_K { 5 } else { 4 };
            let q: Vec<u8> = (0..QK_K).map(|_| rng.byte() & ((1 << bits) - 1)).collect();
            let mut b = vec![0u8; ty.type_size()];
            put_f16(&mut b, 0, d);
            put_f16(&mut b, 2, dmin);
            let s = &mut b[4..16];
            for j in 0..4 {
                s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
                s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
                s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
            }
            let qs_at = if ty == GgmlType::Q5_K { 48 } else { 16 };
            for c in 0..4 {
                for l in 0..32 {
                    let lo = q[64 * c + l];
                    let hi = q[64 * c + 32 + l];
                    b[qs_at + 32 * c + l] = (lo & 0x0F) | ((hi & 0x0F) << 4);
                    if ty == GgmlType::Q5_K {
                        b[16 + l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
                    }
                }
            }
            let expected: Vec<f32> = (0..QK_K)
                .map(|e| {
                    let j = e / 32;
                    d * sc[j] as f32 * q[e] as f32 - dmin * mn[j] as f32
                })
                .collect();
            check(ty, &b, &expected);
        }
    }

    #[test]
    fn q6_k_by_hand() {
        let mut rng = Rng::new(13);
        let d = 0.125f32;
        let sc: Vec<i8> = (0..16).map(|_| rng.byte() as i8).collect();
        let q: Vec<u8> = (0..QK_K).map(|_| rng.byte() & 63).collect();
        let mut b = vec![0u8; 210];
        for n in 0..2 {
            for l in 0..32 {
                let e = |k: usize| q[128 * n + 32 * k + l];
                b[64 * n + l] = (e(0) & 0x0F) | ((e(2) & 0x0F) << 4);
                b[64 * n + 32 + l] = (e(1) & 0x0F) | ((e(3) & 0x0F) << 4);
                b[128 + 32 * n + l] =
                    (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
            }
        }
        for i in 0..16 {
            b[192 + i] = sc[i] as u8;
        }
        put_f16(&mut b, 208, d);
        let expected: Vec<f32> = (0..QK_K)
            .map(|e| d * sc[e / 16] as f32 * (q[e] as i32 - 32) as f32)
            .collect();
        check(GgmlType::Q6_K, &b, &expected);
    }

    #[test]
    fn q2_k_and_q3_k_by_hand() {
        let mut rng = Rng::new(17);
        // Q2_K
        let (d, dmin) = (0.5f32, 0.75f32);
        let sc: Vec<u8> = (0..16).map(|_| rng.byte()).collect();
        let q: Vec<u8> = (0..QK_K).map(|_| rng.byte() & 3).collect();
        let mut b = vec![0u8; 84];
        b[..16].copy_from_slice(&sc);
        for e in 0..QK_K {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            b[16 + 32 * n + l] |= q[e] << (2 * j);
        }
        put_f16(&mut b, 80, d);
        put_f16(&mut b, 82, dmin);
        let expected: Vec<f32> = (0..QK_K)
            .map(|e| {
                let s = sc[e / 16];
                d * (s & 0x0F) as f32 * q[e] as f32 - dmin * (s >> 4) as f32
            })
            .collect();
        check(GgmlType::Q2_K, &b, &expected);

        // Q3_K: 3-bit values stored as 2 low bits + an inverted high bit (value = q - 4).
        let d = 0.25f32;
        let s6: Vec<u8> = (0..16).map(|_| rng.byte() & 63).collect();
        let q: Vec<u8> = (0..QK_K).map(|_| rng.byte() & 7).collect();
        let mut b = vec![0u8; 110];
        for e in 0..QK_K {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            b[32 + 32 * n + l] |= (q[e] & 3) << (2 * j);
            if q[e] & 4 != 0 {
                b[l] |= 1 << (4 * n + j);
            }
        }
        for i in 0..4 {
            b[96 + i] = (s6[i] & 0x0F) | ((s6[8 + i] & 0x0F) << 4);
            b[100 + i] = (s6[4 + i] & 0x0F) | ((s6[12 + i] & 0x0F) << 4);
            b[104 + i] = (s6[i] >> 4)
                | ((s6[4 + i] >> 4) << 2)
                | ((s6[8 + i] >> 4) << 4)
                | ((s6[12 + i] >> 4) << 6);
        }
        put_f16(&mut b, 108, d);
        let expected: Vec<f32> = (0..QK_K)
            .map(|e| d * (s6[e / 16] as i32 - 32) as f32 * (q[e] as i32 - 4) as f32)
            .collect();
        check(GgmlType::Q3_K, &b, &expected);
    }

    #[test]
    fn q8_k_q5_0_q5_1_by_hand() {
        let mut b = vec![0u8; 292];
        b[..4].copy_from_slice(&0.5f32.to_le_bytes());
        for j in 0..QK_K {
            b[4 + j] = (j as i32 - 128) as i8 as u8;
        }
        let expected: Vec<f32> = (0..QK_K).map(|j| 0.5 * (j as f32 - 128.0)).collect();
        check(GgmlType::Q8_K, &b, &expected);

        let q: Vec<u8> = (0..32).map(|j| (j * 7 % 32) as u8).collect();
        let mut b = vec![0u8; 22];
        put_f16(&mut b, 0, 2.0);
        let mut qh = 0u32;
        for j in 0..16 {
            b[6 + j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
            qh |= ((q[j] >> 4) as u32) << j | ((q[j + 16] >> 4) as u32) << (j + 16);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
        let y = dequantize(GgmlType::Q5_0, &b).unwrap();
        for j in 0..32 {
            assert_eq!(y[j], 2.0 * (q[j] as f32 - 16.0), "Q5_0 element {j}");
        }
        let mut b1 = vec![0u8; 24];
        put_f16(&mut b1, 0, 2.0);
        put_f16(&mut b1, 2, -1.0);
        b1[4..8].copy_from_slice(&qh.to_le_bytes());
        b1[8..24].copy_from_slice(&b[6..22]);
        let y = dequantize(GgmlType::Q5_1, &b1).unwrap();
        for j in 0..32 {
            assert_eq!(y[j], 2.0 * q[j] as f32 - 1.0, "Q5_1 element {j}");
        }
    }

    #[test]
    fn unsupported_and_ragged_inputs_are_errors() {
        assert_eq!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66]).unwrap_err().code,
            code::Gguf::UnsupportedType
        );
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[0; 143]).unwrap_err().code,
            code::Gguf::BadTensor
        );
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
    }
}
