//! MLX arrays read in place on the host: the data pointer of a materialised, row-contiguous
//! array as a slice, without MLX's per-call `eval` (the host kernels' hot path); and host
//! vectors handed to MLX without a copy ([`array_from_vec`], the weight loader's).

use mlx_rs::Array;

use crate::diagnostic::{code, Diagnostic, Result};

fn fail(what: &str, e: String) -> Diagnostic {
    Diagnostic::error(
        code::Engine::HostKernel,
        format!("host mat-vec: {what}: {e}"),
    )
}

/// The data of a weight array, evaluated only the first time: `Array::try_as_slice` runs
/// MLX's `eval` on every call, which for an already materialised array still costs a graph
/// walk and a stream synchronisation — ~20 of them per layer and token add up to a third of
/// a decode step.
pub fn host_slice<'a, T: HostElement>(a: &'a Array, what: &str) -> Result<&'a [T]> {
    let mut available = false;
    // SAFETY: `a` is a valid array handle for the duration of the call.
    unsafe { mlx_sys::_mlx_array_is_available(&mut available, a.as_ptr()) };
    if !available || a.dtype() != T::DTYPE {
        return a.try_as_slice::<T>().map_err(|e| fail(what, e.to_string()));
    }
    let mut contiguous = false;
    // SAFETY: as above.
    unsafe { mlx_sys::_mlx_array_is_row_contiguous(&mut contiguous, a.as_ptr()) };
    if !contiguous {
        return Err(fail(what, "not row-contiguous".into()));
    }
    // SAFETY: the array is materialised, row-contiguous, of dtype T and holds `size()`
    // elements; the slice borrows `a`, which keeps the buffer alive.
    unsafe {
        let data = T::data(a);
        if data.is_null() {
            return Err(fail(what, "no data".into()));
        }
        Ok(std::slice::from_raw_parts(data, a.size()))
    }
}

/// An MLX array of `shape` and `dtype` over `data`'s buffer, without a copy: MLX owns the
/// vector from here on and drops it (on whichever thread frees the array's buffer). `data`
/// must hold at least the array's bytes; its element type only sets the alignment. Errors
/// when it is too short or MLX refuses the array.
pub fn array_from_vec<T: Send + 'static>(
    mut data: Vec<T>,
    shape: &[i32],
    dtype: mlx_rs::Dtype,
) -> Result<Array> {
    let elements: usize = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .product();
    // SAFETY: a pure function of the dtype.
    let needed = elements * unsafe { mlx_sys::mlx_dtype_size(dtype.into()) };
    let held = data.len() * std::mem::size_of::<T>();
    if held < needed || shape.len() > i32::MAX as usize {
        return Err(fail(
            "weights",
            format!("{held} bytes for a {dtype:?} array of shape {shape:?}"),
        ));
    }
    let ptr = data.as_mut_ptr().cast::<std::ffi::c_void>();
    let payload = Box::into_raw(Box::new(data)).cast::<std::ffi::c_void>();
    unsafe extern "C" fn drop_vec<T>(payload: *mut std::ffi::c_void) {
        // SAFETY: `payload` is the `Box<Vec<T>>` leaked below, and MLX calls its deleter
        // once, when the buffer is freed.
        drop(unsafe { Box::from_raw(payload.cast::<Vec<T>>()) });
    }
    // SAFETY: `ptr` points to `held ≥ needed` bytes that stay valid until MLX calls the
    // deleter (the vector is only moved into the box, its buffer stays in place); the
    // shape pointer is read during the call only.
    let a = unsafe {
        mlx_sys::mlx_array_new_data_managed_payload(
            ptr,
            shape.as_ptr(),
            shape.len() as i32,
            dtype.into(),
            payload,
            Some(drop_vec::<T>),
        )
    };
    if a.ctx.is_null() {
        return Err(fail(
            "weights",
            format!("MLX refused a {dtype:?} array of shape {shape:?}"),
        ));
    }
    // SAFETY: a valid, owned handle.
    Ok(unsafe { Array::from_ptr(a) })
}

/// Element types [`host_slice`] reads.
pub trait HostElement: mlx_rs::ArrayElement {
    /// The array's data pointer.
    ///
    /// # Safety
    /// `a` must be materialised and of this dtype.
    unsafe fn data(a: &Array) -> *const Self;
}

impl HostElement for u32 {
    unsafe fn data(a: &Array) -> *const Self {
        mlx_sys::mlx_array_data_uint32(a.as_ptr())
    }
}

impl HostElement for f32 {
    unsafe fn data(a: &Array) -> *const Self {
        mlx_sys::mlx_array_data_float32(a.as_ptr())
    }
}
