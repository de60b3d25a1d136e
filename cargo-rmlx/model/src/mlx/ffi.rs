//! The MLX operations the engine needs that mlx-rs 0.33 does not wrap (or wraps without the
//! quantization `mode`), called through `mlx_sys` (part of [`crate::mlx`], the one module that calls MLX's
//! C API). Every wrapper is safe: it checks the operands' ranks, widths and dtypes
//! first — so a mistake is a [`Diagnostic`] naming the operation and the shapes instead of an
//! MLX exception — and turns a failed call into a `Diagnostic` (code `rmlx::engine::mlx`).
//!
//! - [`gather_mm`]: `a @ b[rhs_indices]`, the stacked-expert matmul of dense MoE layers.
//! - [`gather_qmm`]: the same with quantized `b` in any MLX mode (affine, mxfp4, mxfp8, nvfp4).
//! - [`quantized_matmul`]: `x @ w^T` for a quantized `w` in any MLX mode.
//! - [`DistGroup`]: MLX's distributed group (`mlx_distributed_init` with a backend name,
//!   rank, size) and its collectives [`all_sum`], [`all_gather`], used by `engine::dist`.

use std::ffi::CString;

use mlx_rs::{Array, Dtype};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::QuantParams;

/// A quantized weight as MLX stores it: packed `weight`, `scales` and (affine only) `biases`,
/// each with the same leading dimensions (`[E, rows, …]` for stacked experts).
#[derive(Debug, Clone, Copy)]
pub struct QuantWeight<'a> {
    /// Packed values (uint32), `[…, rows, cols · bits / 32]`.
    pub weight: &'a Array,
    /// Scales, `[…, rows, cols / group_size]`.
    pub scales: &'a Array,
    /// Affine biases, shaped like `scales`.
    pub biases: Option<&'a Array>,
    /// Mode, bits and group size.
    pub params: QuantParams,
}

impl QuantWeight<'_> {
    /// Input features (`cols`) of the quantized matrix.
    fn input_dims(&self) -> i64 {
        let packed = self.weight.shape().last().copied().unwrap_or(0) as i64;
        packed * 32 / i64::from(self.params.bits.max(1))
    }

    fn check(&self, op: &str) -> Result<()> {
        let (w, s) = (self.weight.shape(), self.scales.shape());
        let q = self.params;
        let ok = w.len() >= 2
            && w.len() == s.len()
            && w[..w.len() - 1] == s[..s.len() - 1]
            && q.group_size > 0
            && i64::from(s[s.len() - 1]) * i64::from(q.group_size) == self.input_dims()
            && self.weight.dtype() == Dtype::Uint32
            && self.biases.is_none_or(|b| b.shape() == s)
            && (self.biases.is_some() == q.mode.has_biases());
        if ok {
            return Ok(());
        }
        Err(invalid(
            op,
            format!(
                "quantized weight {w:?} ({:?}), scales {s:?}, biases {:?} do not form a {} \
                 {}-bit matrix with groups of {}",
                self.weight.dtype(),
                self.biases.map(|b| b.shape().to_vec()),
                q.mode.as_str(),
                q.bits,
                q.group_size
            ),
        ))
    }
}

/// `a @ b[rhs_indices]` batched over the indices (MLX `gather_mm` without `lhs_indices`):
/// `a` is `[…, M, K]`, `b` is `[E, K, N]`, `rhs_indices` (integers below `E`) broadcasts with
/// `a`'s batch dimensions; the result is `[…batch, M, N]`. `sorted`: the indices are sorted
/// (a hint for MLX's kernels). MLX's CPU kernel supports float32 only.
pub fn gather_mm(a: &Array, b: &Array, rhs_indices: &Array, sorted: bool) -> Result<Array> {
    const OP: &str = "gather_mm";
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() != 3 || sa[sa.len() - 1] != sb[1] {
        return Err(invalid(
            OP,
            format!("cannot multiply {sa:?} by experts {sb:?}"),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(invalid(
            OP,
            format!("operand dtypes differ: {:?} and {:?}", a.dtype(), b.dtype()),
        ));
    }
    check_indices(OP, rhs_indices)?;
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: every handle is a valid MLX array owned by the caller (the empty array stands
    // for "no lhs_indices", as mlx-c documents); `res` receives a new array.
    call(OP, |res| unsafe {
        let none = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_gather_mm(
            res,
            a.as_ptr(),
            b.as_ptr(),
            none,
            rhs_indices.as_ptr(),
            sorted,
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        status
    })
    .map_err(|d| {
        d.with_help("MLX's CPU gather_mm supports float32 only (compute dtype float32 on the CPU)")
    })
}

/// `x @ w[rhs_indices]^T` for a stacked quantized `w` (`[E, N, K]` packed): MLX `gather_qmm`
/// with `transpose = true` in the weight's mode. `x` is `[…, M, K]`; the result is
/// `[…batch, M, N]`.
pub fn gather_qmm(
    x: &Array,
    w: QuantWeight<'_>,
    rhs_indices: &Array,
    sorted: bool,
) -> Result<Array> {
    const OP: &str = "gather_qmm";
    w.check(OP)?;
    let sx = x.shape();
    if sx.len() < 2 || w.weight.ndim() != 3 || i64::from(sx[sx.len() - 1]) != w.input_dims() {
        return Err(invalid(
            OP,
            format!(
                "cannot multiply {sx:?} by quantized experts {:?} ({} inputs)",
                w.weight.shape(),
                w.input_dims()
            ),
        ));
    }
    check_indices(OP, rhs_indices)?;
    let mode = mode_name(w.params);
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: as in `gather_mm`; `mode` outlives the call.
    call(OP, |res| unsafe {
        let none = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_gather_qmm(
            res,
            x.as_ptr(),
            w.weight.as_ptr(),
            w.scales.as_ptr(),
            w.biases.map_or(none, Array::as_ptr),
            none,
            rhs_indices.as_ptr(),
            true,
            optional_int(w.params.group_size),
            optional_int(w.params.bits),
            mode.as_ptr(),
            sorted,
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        status
    })
}

/// `x @ w^T` for a quantized `[N, K]` matrix in any MLX mode (mlx-rs' `quantized_matmul`
/// only takes affine weights).
pub fn quantized_matmul(x: &Array, w: QuantWeight<'_>) -> Result<Array> {
    const OP: &str = "quantized_matmul";
    w.check(OP)?;
    let mode = mode_name(w.params);
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: as in `gather_mm`.
    call(OP, |res| unsafe {
        let none = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            w.weight.as_ptr(),
            w.scales.as_ptr(),
            w.biases.map_or(none, Array::as_ptr),
            true,
            optional_int(w.params.group_size),
            optional_int(w.params.bits),
            mode.as_ptr(),
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        status
    })
}

/// A handle on an MLX distributed group (a communicator of the `ring`, `nccl`, `mpi`, …
/// backend). MLX keeps the group alive for the process; the handle is never freed.
#[derive(Debug, Clone, Copy)]
pub struct DistGroup(mlx_sys::mlx_distributed_group);

// SAFETY: the handle points at MLX's `Group`, a shared pointer to a backend implementation
// that MLX itself uses from its stream threads; rank/size are immutable after init.
unsafe impl Send for DistGroup {}
// SAFETY: as above.
unsafe impl Sync for DistGroup {}

impl DistGroup {
    /// Initialises the `backend` group from the environment the backend reads (ring:
    /// `MLX_RANK`, `MLX_HOSTFILE`), strictly: a missing or failing backend is an error.
    /// Blocks until every peer is connected (the caller bounds the wait).
    pub fn init(backend: &str) -> Result<Self> {
        let name = CString::new(backend)
            .map_err(|_| invalid("distributed_init", "NUL in backend name".into()))?;
        // SAFETY: `name` outlives both calls; `res` receives a new group handle.
        unsafe {
            if !mlx_sys::mlx_distributed_is_available(name.as_ptr()) {
                return Err(Diagnostic::error(
                    code::Engine::DistBackend,
                    format!("the MLX library in use has no `{backend}` distributed backend"),
                )
                .with_help("the CPU build of MLX has `ring`; `nccl` needs MLX's CUDA build"));
            }
            let mut res = mlx_sys::mlx_distributed_group_new();
            if mlx_sys::mlx_distributed_init(&mut res, true, name.as_ptr()) != 0
                || res.ctx.is_null()
            {
                return Err(Diagnostic::error(
                    code::Engine::DistInit,
                    format!("MLX could not start the `{backend}` distributed group"),
                ));
            }
            Ok(Self(res))
        }
    }

    /// This process' rank.
    pub fn rank(self) -> usize {
        // SAFETY: a group made by `init`.
        unsafe { mlx_sys::mlx_distributed_group_rank(self.0).max(0) as usize }
    }

    /// Number of processes in the group.
    pub fn size(self) -> usize {
        // SAFETY: a group made by `init`.
        unsafe { mlx_sys::mlx_distributed_group_size(self.0).max(1) as usize }
    }
}

/// The element-wise sum of `x` over every rank of `group` (lazy, like every MLX op).
pub fn all_sum(x: &Array, group: DistGroup) -> Result<Array> {
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: `x` is a valid array, `group` a group made by `DistGroup::init`.
    call("all_sum", |res| unsafe {
        mlx_sys::mlx_distributed_all_sum(res, x.as_ptr(), group.0, stream.as_ptr())
    })
}

/// Every rank's `x` concatenated along the first axis, in rank order.
pub fn all_gather(x: &Array, group: DistGroup) -> Result<Array> {
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: as in `all_sum`.
    call("all_gather", |res| unsafe {
        mlx_sys::mlx_distributed_all_gather(res, x.as_ptr(), group.0, stream.as_ptr())
    })
}

fn mode_name(q: QuantParams) -> CString {
    CString::new(q.mode.as_str()).expect("mode names have no NUL")
}

fn optional_int(value: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value,
        has_value: true,
    }
}

fn check_indices(op: &str, indices: &Array) -> Result<()> {
    match indices.dtype() {
        Dtype::Uint32 | Dtype::Int32 | Dtype::Uint64 | Dtype::Int64 => Ok(()),
        d => Err(invalid(
            op,
            format!("expert indices must be integers, found {d:?}"),
        )),
    }
}

/// Runs one mlx-c operation writing into a fresh array.
fn call(op: &str, f: impl FnOnce(*mut mlx_sys::mlx_array) -> i32) -> Result<Array> {
    // SAFETY: `mlx_array_new` makes an empty handle that the operation replaces; on success
    // `Array::from_ptr` takes ownership, on failure the handle is freed here.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = f(&mut res);
        if status != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(Diagnostic::error(
                code::Engine::Mlx,
                format!("MLX operation {op} failed"),
            ));
        }
        Ok(Array::from_ptr(res))
    }
}

fn invalid(op: &str, msg: String) -> Diagnostic {
    Diagnostic::error(code::Engine::Mlx, format!("{op}: {msg}"))
}
