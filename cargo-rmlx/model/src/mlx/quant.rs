//! MLX's own quantizer and dequantizer in every mode (affine, mxfp4, mxfp8, nvfp4), called
//! through mlx-c (`mlx_rs::ops::quantize` only knows affine), and raw tensor bytes out of an
//! MLX array. This is the same code path `mx.quantize` takes in Python, so packed weights,
//! scales and biases are identical to mlx-lm's for the same input.

use std::ffi::{CStr, CString};

use half::{bf16, f16};
use mlx_rs::{Array, Dtype};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::QuantParams;

fn mlx_failed(what: &str) -> Diagnostic {
    Diagnostic::error(code::Build::Mlx, format!("MLX {what} failed"))
}

fn opt_int(v: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value: v,
        has_value: true,
    }
}

/// `mx.quantize(w, group_size, bits, mode)`: (packed weight, scales, biases for affine).
pub fn quantize(w: &Array, q: QuantParams) -> Result<(Array, Array, Option<Array>)> {
    let mode = CString::new(q.mode.as_str()).expect("mode names have no NUL");
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: `w` is a valid array; `out` is a fresh vector that receives new arrays, which
    // are taken out with `mlx_vector_array_get` (each a new reference owned by `Array`) and
    // the vector is freed afterwards. An empty `mlx_array` means "no global scale".
    unsafe {
        let mut out = mlx_sys::mlx_vector_array_new();
        let none = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_quantize(
            &mut out,
            w.as_ptr(),
            opt_int(q.group_size),
            opt_int(q.bits),
            mode.as_ptr(),
            none,
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        if status != 0 {
            mlx_sys::mlx_vector_array_free(out);
            return Err(mlx_failed(&format!(
                "quantize ({} {}-bit, group size {})",
                q.mode.as_str(),
                q.bits,
                q.group_size
            )));
        }
        let n = mlx_sys::mlx_vector_array_size(out);
        let mut parts = Vec::with_capacity(n);
        for i in 0..n {
            let mut a = mlx_sys::mlx_array_new();
            if mlx_sys::mlx_vector_array_get(&mut a, out, i) != 0 {
                mlx_sys::mlx_vector_array_free(out);
                return Err(mlx_failed("quantize (reading results)"));
            }
            parts.push(Array::from_ptr(a));
        }
        mlx_sys::mlx_vector_array_free(out);
        let mut it = parts.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(w), Some(s), b) => Ok((w, s, b)),
            _ => Err(mlx_failed("quantize (too few results)")),
        }
    }
}

/// Elements quantized at once by [`quantize_rows`].
pub const CHUNK_ELEMENTS: usize = 1 << 22;

/// [`quantize`] in blocks of rows, evaluating each block before the next, so MLX's
/// temporaries (several float32 copies of the input in the microscaling modes) stay small.
/// Groups never span rows, so the result is identical to quantizing the whole matrix.
pub fn quantize_rows(w: &Array, q: QuantParams) -> Result<(Array, Array, Option<Array>)> {
    if w.ndim() > 2 {
        return quantize_stacked(w, q);
    }
    let shape = w.shape();
    let (rows, cols) = match shape {
        [r, c] => (*r as usize, *c as usize),
        _ => return quantize(w, q),
    };
    let step = (CHUNK_ELEMENTS / cols.max(1)).max(1);
    if rows <= step {
        let out = quantize(w, q)?;
        eval_all(&out)?;
        return Ok(out);
    }
    let cuts: Vec<i32> = (step..rows).step_by(step).map(|r| r as i32).collect();
    let blocks = mlx_rs::ops::split_at_indices(w, &cuts, 0)?;
    let (mut ws, mut ss, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    for block in &blocks {
        let out = quantize(block, q)?;
        eval_all(&out)?;
        ws.push(out.0);
        ss.push(out.1);
        bs.extend(out.2);
    }
    drop(blocks);
    let cat = |parts: &[Array]| -> Result<Array> {
        let a = mlx_rs::ops::concatenate(parts, 0)?;
        a.eval()?;
        Ok(a)
    };
    let biases = if bs.is_empty() { None } else { Some(cat(&bs)?) };
    Ok((cat(&ws)?, cat(&ss)?, biases))
}

/// The leading dimensions of `a` folded into rows: `[rows, last]`.
fn as_rows(a: &Array) -> Result<Array> {
    let shape = a.shape();
    let last = shape.last().copied().unwrap_or(1);
    let rows: i32 = shape[..shape.len().saturating_sub(1)].iter().product();
    Ok(a.reshape(&[rows, last])?)
}

/// `[rows, last]` back to `lead` + `[last]`.
fn unfold(a: &Array, lead: &[i32]) -> Result<Array> {
    let mut shape = lead.to_vec();
    shape.push(a.shape().last().copied().unwrap_or(1));
    Ok(a.reshape(&shape)?)
}

/// Switch-layer weights (`[experts, out, in]`): quantized as rows (MLX quantizes along the
/// last axis, groups never span rows), so the bytes equal `mx.quantize` of the whole tensor.
fn quantize_stacked(w: &Array, q: QuantParams) -> Result<(Array, Array, Option<Array>)> {
    let lead = &w.shape()[..w.ndim() - 1];
    let (wq, s, b) = quantize_rows(&as_rows(w)?, q)?;
    let b = match b {
        Some(b) => Some(unfold(&b, lead)?),
        None => None,
    };
    Ok((unfold(&wq, lead)?, unfold(&s, lead)?, b))
}

/// [`dequantize`] (computed in float32) and a cast to `dtype`, in blocks of rows like
/// [`quantize_rows`], so only one block exists in float32 at a time.
pub fn dequantize_rows(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    q: QuantParams,
    dtype: Dtype,
) -> Result<Array> {
    if w.ndim() > 2 {
        let lead = &w.shape()[..w.ndim() - 1];
        let b = match biases {
            Some(b) => Some(as_rows(b)?),
            None => None,
        };
        let d = dequantize_rows(&as_rows(w)?, &as_rows(scales)?, b.as_ref(), q, dtype)?;
        return unfold(&d, lead);
    }
    let rows = w.shape().first().copied().unwrap_or(0) as usize;
    let cols = w.shape().get(1).copied().unwrap_or(0) as usize * 32 / q.bits.max(1) as usize;
    let step = (CHUNK_ELEMENTS / cols.max(1)).max(1);
    let block = |w: &Array, s: &Array, b: Option<&Array>| -> Result<Array> {
        let d = dequantize(w, s, b, q, Dtype::Float32)?;
        let d = if dtype == Dtype::Float32 {
            d
        } else {
            d.as_dtype(dtype)?
        };
        d.eval()?;
        Ok(d)
    };
    if w.ndim() != 2 || rows <= step {
        return block(w, scales, biases);
    }
    let cuts: Vec<i32> = (step..rows).step_by(step).map(|r| r as i32).collect();
    let ws = mlx_rs::ops::split_at_indices(w, &cuts, 0)?;
    let ss = mlx_rs::ops::split_at_indices(scales, &cuts, 0)?;
    let bs = match biases {
        Some(b) => Some(mlx_rs::ops::split_at_indices(b, &cuts, 0)?),
        None => None,
    };
    let mut parts = Vec::with_capacity(ws.len());
    for (i, (w, s)) in ws.iter().zip(&ss).enumerate() {
        parts.push(block(w, s, bs.as_ref().map(|b| &b[i]))?);
    }
    let out = mlx_rs::ops::concatenate(&parts, 0)?;
    out.eval()?;
    Ok(out)
}

fn eval_all(out: &(Array, Array, Option<Array>)) -> Result<()> {
    out.0.eval()?;
    out.1.eval()?;
    if let Some(b) = &out.2 {
        b.eval()?;
    }
    Ok(())
}

/// `mx.dequantize(w, scales, biases, group_size, bits, mode, dtype=dtype)`.
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    q: QuantParams,
    dtype: Dtype,
) -> Result<Array> {
    let mode = CString::new(q.mode.as_str()).expect("mode names have no NUL");
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: all handles are valid; `res` receives a new array owned by `Array`.
    unsafe {
        let none = mlx_sys::mlx_array_new();
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_dequantize(
            &mut res,
            w.as_ptr(),
            scales.as_ptr(),
            biases.map_or(none, Array::as_ptr),
            opt_int(q.group_size),
            opt_int(q.bits),
            mode.as_ptr(),
            none,
            mlx_sys::mlx_optional_dtype {
                value: dtype as mlx_sys::mlx_dtype,
                has_value: true,
            },
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        if status != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(mlx_failed(&format!("dequantize ({})", q.mode.as_str())));
        }
        Ok(Array::from_ptr(res))
    }
}

/// Whether a dtype is a floating-point type.
pub fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
    )
}

fn as_bytes<T>(s: &[T]) -> &[u8] {
    // SAFETY: plain-old-data element types; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }
}

/// Evaluates `a` and hands its row-major little-endian bytes to `f`.
pub fn with_bytes<R>(a: &Array, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    a.eval()?;
    let contiguous;
    let a = match a.try_as_slice::<u8>() {
        Err(mlx_rs::error::AsSliceError::NotContiguous) => {
            contiguous = a.contiguous()?;
            &contiguous
        }
        _ => a,
    };
    let err = |e: mlx_rs::error::AsSliceError| {
        Diagnostic::error(
            code::Build::Mlx,
            format!("cannot read an MLX array of {:?}: {e}", a.dtype()),
        )
        .with_cause(e)
    };
    Ok(match a.dtype() {
        Dtype::Uint8 | Dtype::Bool => f(a.try_as_slice::<u8>().map_err(err)?),
        Dtype::Int8 => f(as_bytes(a.try_as_slice::<i8>().map_err(err)?)),
        Dtype::Uint16 => f(as_bytes(a.try_as_slice::<u16>().map_err(err)?)),
        Dtype::Int16 => f(as_bytes(a.try_as_slice::<i16>().map_err(err)?)),
        Dtype::Uint32 => f(as_bytes(a.try_as_slice::<u32>().map_err(err)?)),
        Dtype::Int32 => f(as_bytes(a.try_as_slice::<i32>().map_err(err)?)),
        Dtype::Uint64 => f(as_bytes(a.try_as_slice::<u64>().map_err(err)?)),
        Dtype::Int64 => f(as_bytes(a.try_as_slice::<i64>().map_err(err)?)),
        Dtype::Float16 => f(as_bytes(a.try_as_slice::<f16>().map_err(err)?)),
        Dtype::Bfloat16 => f(as_bytes(a.try_as_slice::<bf16>().map_err(err)?)),
        Dtype::Float32 => f(as_bytes(a.try_as_slice::<f32>().map_err(err)?)),
        Dtype::Float64 => f(as_bytes(a.try_as_slice::<f64>().map_err(err)?)),
        other => {
            return Err(Diagnostic::error(
                code::Build::Mlx,
                format!("cannot write an MLX array of {other:?}"),
            ))
        }
    })
}

/// The safetensors dtype of an MLX dtype.
pub fn safetensors_dtype(d: Dtype) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        Dtype::Bool => S::BOOL,
        Dtype::Uint8 => S::U8,
        Dtype::Int8 => S::I8,
        Dtype::Uint16 => S::U16,
        Dtype::Int16 => S::I16,
        Dtype::Uint32 => S::U32,
        Dtype::Int32 => S::I32,
        Dtype::Uint64 => S::U64,
        Dtype::Int64 => S::I64,
        Dtype::Float16 => S::F16,
        Dtype::Bfloat16 => S::BF16,
        Dtype::Float32 => S::F32,
        Dtype::Float64 => S::F64,
        _ => return None,
    })
}

/// The MLX dtype of a safetensors dtype.
pub fn mlx_dtype(d: safetensors::Dtype) -> Option<Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        S::BOOL => Dtype::Bool,
        S::U8 => Dtype::Uint8,
        S::I8 => Dtype::Int8,
        S::U16 => Dtype::Uint16,
        S::I16 => Dtype::Int16,
        S::U32 => Dtype::Uint32,
        S::I32 => Dtype::Int32,
        S::U64 => Dtype::Uint64,
        S::I64 => Dtype::Int64,
        S::F16 => Dtype::Float16,
        S::BF16 => Dtype::Bfloat16,
        S::F32 => Dtype::Float32,
        S::F64 => Dtype::Float64,
        _ => return None,
    })
}

/// Bytes per element.
pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::Bool | Dtype::Uint8 | Dtype::Int8 => 1,
        Dtype::Uint16 | Dtype::Int16 | Dtype::Float16 | Dtype::Bfloat16 => 2,
        Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
        _ => 8,
    }
}

/// The version of the MLX library in use (e.g. `0.32.2`).
pub fn mlx_version() -> String {
    // SAFETY: `s` is a fresh string handle filled by mlx-c and freed here; its data is a
    // NUL-terminated C string valid until the free.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let out = if mlx_sys::mlx_version(&mut s) == 0 {
            let p = mlx_sys::mlx_string_data(s);
            if p.is_null() {
                "unknown".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        } else {
            "unknown".to_string()
        };
        mlx_sys::mlx_string_free(s);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::QuantMode;

    fn bytes(a: &Array) -> Vec<u8> {
        with_bytes(a, |b| b.to_vec()).unwrap()
    }

    /// Quantizing (and dequantizing) `w` by rows gives the bytes of MLX's whole-tensor
    /// quantize (and dequantize), for each of `cases`.
    fn assert_rows_exact(w: &Array, cases: &[(QuantMode, i32, i32)]) {
        for &(mode, g, b) in cases {
            let q = QuantParams {
                group_size: g,
                bits: b,
                mode,
            };
            let whole = quantize(w, q).unwrap();
            let rows_q = quantize_rows(w, q).unwrap();
            assert_eq!(rows_q.0.shape(), whole.0.shape());
            assert_eq!(bytes(&whole.0), bytes(&rows_q.0), "{mode:?}");
            assert_eq!(bytes(&whole.1), bytes(&rows_q.1), "{mode:?}");
            assert_eq!(
                whole.2.as_ref().map(bytes),
                rows_q.2.as_ref().map(bytes),
                "{mode:?}"
            );
            let deq = dequantize(&whole.0, &whole.1, whole.2.as_ref(), q, Dtype::Float32)
                .unwrap()
                .as_dtype(Dtype::Bfloat16)
                .unwrap();
            let deq_rows =
                dequantize_rows(&whole.0, &whole.1, whole.2.as_ref(), q, Dtype::Bfloat16).unwrap();
            assert_eq!(deq.shape(), deq_rows.shape());
            assert_eq!(bytes(&deq), bytes(&deq_rows), "{mode:?}");
        }
    }

    fn normal_bf16(shape: &[i32]) -> Array {
        mlx_rs::random::normal::<f32>(shape, None, None, None)
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap()
    }

    /// Switch weights (`[experts, out, in]`) quantized as rows: MLX's bytes of the 3-D tensor.
    #[test]
    fn stacked_experts_are_exact() {
        let cases = [(QuantMode::Affine, 64, 4), (QuantMode::Mxfp4, 32, 4)];
        assert_rows_exact(&normal_bf16(&[3, 5, 64]), &cases);
    }

    /// Quantizing in blocks of rows gives the bytes of quantizing the whole matrix, in
    /// every mode (groups never span rows).
    #[test]
    fn blocks_of_rows_are_exact() {
        let rows = 2 * CHUNK_ELEMENTS / 256 + 3;
        let cases = [
            (QuantMode::Affine, 64, 4),
            (QuantMode::Affine, 32, 3),
            (QuantMode::Mxfp8, 32, 8),
        ];
        assert_rows_exact(&normal_bf16(&[rows as i32, 256]), &cases);
    }
}
