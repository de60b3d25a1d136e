//! MLX arrays read in place on the host: the data pointer of a materialised, row-contiguous
//! array as a slice, without MLX's per-call `eval` (the host kernels' hot path).

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
    if !is_available(a) || a.dtype() != T::DTYPE {
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

/// Whether `a` holds its values: computed, or scheduled and finished. An array never
/// evaluated (nor queued with `async_eval`) is not, whatever its inputs are.
pub fn is_available(a: &Array) -> bool {
    let mut available = false;
    // SAFETY: `a` is a valid array handle for the duration of the call.
    unsafe { mlx_sys::_mlx_array_is_available(&mut available, a.as_ptr()) };
    available
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
