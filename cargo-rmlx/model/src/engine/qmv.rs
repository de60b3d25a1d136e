//! The CPU quantized kernels: affine-quantized matrix × vector (and × a few vectors) on the
//! host, over the very buffers MLX holds (no copy of the weights), with AVX2/FMA — or, for
//! float inputs on processors with AVX-512F, the 16-lane kernels of [`avx512`], or on request
//! (`RMLX_HOST_KERNELS=amx`) the AMX tile kernels of [`amx`], which read a copy of each
//! matrix laid out for the tiles, made at its first AMX call ([`lay_out_in`]) — and both cores.
//!
//! Why it exists: with one input row (every decode step) MLX 0.32's CPU backend runs
//! `quantized_matmul` as a scalar single-threaded loop (`_qmm_dispatch_typed<float>`), which
//! a profile of SmolLM2 decode puts at 83% of the time. This kernel computes the same
//! `y = x · dequantize(W)ᵀ` for 4- and 8-bit affine weights in float32 — each group's
//! `scale · Σ q·x + bias · Σ x` — and is used only where it applies (CPU device, float32
//! activations and scales, affine 4/8-bit with groups of a multiple of 32, fewer input rows
//! than `layers::HOST_MATMUL_ROWS`, AVX2+FMA present): by `Linear::forward` for short inputs
//! (a probe seed, a chat turn: up to four inputs per pass over the weights) and by
//! `Transformer::hidden_host_decode`, which keeps a whole decode step's residual stream on
//! the host. Everything else, and every model on a GPU, keeps MLX's kernels.
//! `RMLX_HOST_KERNELS=0` turns it off; `RMLX_HOST_KERNELS=avx2` keeps the AVX2 kernels on a
//! processor with AVX-512, `RMLX_HOST_KERNELS=amx` asks for the AMX ones ([`family`]),
//! `RMLX_HOST_KERNELS=amx-batch` for them on calls of two or more inputs only ([`amx_for`]).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use mlx_rs::{Array, Dtype};

use super::switches::HostKernels;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::mlx::host::host_slice;

// The AVX-512 intrinsics are stable from Rust 1.89 (the workspace's `rust-version`).
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Rows one task handles at least (smaller tasks cost more to hand out than they save).
const MIN_ROWS_PER_TASK: usize = 32;

/// Tasks per pool thread a pass is cut into at most: the threads claim tasks as they go,
/// so a thread slowed down (a shared core) takes fewer of them.
const TASKS_PER_THREAD: usize = 8;

/// How many weight rows ahead a task asks the cache for the row it will need (software
/// prefetch of its packed bytes, scales and biases). The kernels stream each weight once
/// per token from three arrays, and the hardware prefetcher alone left them waiting on
/// memory: decode went from ~60 to ~100 tokens/s on SmolLM2 4-bit with any distance from 1
/// to 8 (BENCHMARKS.md, "Round 9 (`cold9`): cold probe"). Only the order of memory
/// requests changes, never the arithmetic.
const PREFETCH_ROWS: usize = 4;

/// Whether the host kernel is used: default device is the CPU, the processor has AVX2 and
/// FMA, and `RMLX_HOST_KERNELS` is not `0`. Decided once per process and logged.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off_by_env = !super::switches::host_kernels();
        let cpu = !super::gpu_available();
        let simd = simd_available();
        let on = cpu && simd && !off_by_env;
        if on {
            tracing::debug!("host quantized mat-vec on: {:?} float kernels", family());
        } else if cpu {
            tracing::debug!(
                "host quantized mat-vec off ({}); decode uses MLX's CPU quantized_matmul",
                if off_by_env {
                    "RMLX_HOST_KERNELS=0"
                } else {
                    "no AVX2/FMA on this processor"
                }
            );
        }
        on
    })
}

/// Whether this processor has AVX2 and FMA (the SIMD host kernels)
pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this processor runs the AVX-512 float kernels ([`avx512`]: AVX-512F, with AVX2
/// and FMA).
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_available() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this processor has AVX-512 VBMI (`vpmultishiftqb`), which the 4-bit AVX-512 kernel
/// uses to pick each nibble as a table index ([`avx512::dot_q4_table`]).
fn vbmi_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_available() && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this process runs the AMX kernels ([`amx`]), or why not.
fn amx_available() -> std::result::Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err("not an x86-64 processor".into())
    }
}

/// The instruction set of the float kernels. One family serves every block size in a
/// process, so a batched input's result equals the same input's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// AMX tiles ([`amx`]): the integer weights against three 8-bit limbs of each input,
    /// up to five inputs per pass over a block of 16 weight rows.
    Amx,
    /// 16-lane AVX-512 kernels: up to four inputs in one pass over a weight row.
    Avx512,
    /// 8-lane AVX2/FMA kernels: up to four inputs, in two passes from three on.
    Avx2,
    /// The portable reference (no AVX2/FMA).
    Portable,
}

/// The float kernels' family in this process: with `RMLX_HOST_KERNELS=amx` — or by default
/// in a server of batched steps ([`serve_batches`]) — the AMX kernels where the processor and
/// the kernel allow them (else, where asked for, a warning says why not); otherwise AVX-512
/// where the processor has it unless `RMLX_HOST_KERNELS=avx2`, else AVX2/FMA, else the
/// portable reference. Decided once per process and logged.
fn family() -> Family {
    static FAMILY: OnceLock<Family> = OnceLock::new();
    *FAMILY.get_or_init(|| {
        let asked = super::switches::host_kernel_width();
        let serving = SERVE_BATCHES.load(Ordering::Relaxed);
        let width = effective_width(asked, serving, || amx_available().is_ok());
        let (family, why) = choose_family(width);
        if width == HostKernels::Amx && family != Family::Amx {
            tracing::warn!("RMLX_HOST_KERNELS=amx: {why}; host float kernels: {family:?}");
        } else if width != asked {
            tracing::info!(
                "host kernels: the AMX tiles, a server's default on this processor (batched \
                 steps read each weight once for all rows; each matrix's tile layout holds its \
                 weights again); RMLX_HOST_KERNELS=1 keeps the float kernels"
            );
        } else {
            tracing::debug!("host float kernels: {family:?} ({why})");
        }
        family
    })
}

/// Set once a server of batched decode steps starts ([`serve_batches`]).
static SERVE_BATCHES: AtomicBool = AtomicBool::new(false);

/// Marks this process as a server whose decode steps batch several sequences: unless
/// `RMLX_HOST_KERNELS` says otherwise, its host kernels then run on the AMX tiles where the
/// processor and the kernel allow them — on this project's development machine four clients
/// get 2.4–3.2× one stream's decode rate with them, 1.7–2.1× with the float kernels, a lone
/// stream about as fast either way (BENCHMARKS.md round 15). Call before the first model
/// loads: the kernels are chosen once per process, at the first host product.
pub fn serve_batches() {
    SERVE_BATCHES.store(true, Ordering::Relaxed);
}

/// The kernels `asked` (`RMLX_HOST_KERNELS`) gives: `auto` in a server of batched steps
/// (`serving`) with AMX available (`amx`, asked only then: it requests the tile data from the
/// kernel) is `amx`, anything else is what it says.
fn effective_width(asked: HostKernels, serving: bool, amx: impl FnOnce() -> bool) -> HostKernels {
    match asked {
        HostKernels::Auto if serving && amx() => HostKernels::Amx,
        other => other,
    }
}

/// Whether a call of `n` inputs runs on the AMX tiles: every call with `RMLX_HOST_KERNELS=amx`
/// ([`Family::Amx`]), those of two or more with `amx-batch` ([`amx_batches`]).
fn amx_for(n: usize) -> bool {
    family() == Family::Amx || (n >= 2 && amx_batches())
}

/// Whether calls of two or more inputs run on the AMX tiles and lone inputs on the float
/// kernels of [`family`] (`RMLX_HOST_KERNELS=amx-batch`, where AMX is available; else a
/// warning says why not). Decided once per process and logged. A lone input's result then
/// differs, by float rounding, from the same input's in a batch (BENCHMARKS.md round 13).
fn amx_batches() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if super::switches::host_kernel_width() != HostKernels::AmxBatch {
            return false;
        }
        let float = family();
        match amx_available() {
            Ok(()) => {
                tracing::debug!("host kernels: AMX from two inputs, {float:?} for one");
                true
            }
            Err(why) => {
                tracing::warn!(
                    "RMLX_HOST_KERNELS=amx-batch: no AMX ({why}); host float kernels: {float:?}"
                );
                false
            }
        }
    })
}

/// The family `width` asks for on this processor, and why it is the one.
fn choose_family(width: HostKernels) -> (Family, String) {
    let amx_off = match width {
        HostKernels::Amx => match amx_available() {
            Ok(()) => return (Family::Amx, "RMLX_HOST_KERNELS=amx".into()),
            Err(why) => format!("no AMX ({why})"),
        },
        _ => "AMX only with RMLX_HOST_KERNELS=amx or in a server of batched steps".into(),
    };
    if avx512_available() && width != HostKernels::Avx2 {
        return (Family::Avx512, amx_off);
    }
    if simd_available() {
        let why = if width == HostKernels::Avx2 && avx512_available() {
            "RMLX_HOST_KERNELS=avx2".into()
        } else {
            format!("{amx_off}; no AVX-512F on this processor")
        };
        return (Family::Avx2, why);
    }
    (
        Family::Portable,
        format!("{amx_off}; no AVX2/FMA on this processor"),
    )
}

/// How the host kernels treat the input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// Float32 inputs against dequantized weights (exact up to float rounding).
    F32,
    /// Inputs quantized to int8 per 32 columns (a scale per block, as llama.cpp's Q8_0) and
    /// multiplied with the integer weights by integer dot products (AVX2 `vpmaddubsw`); the
    /// bias term keeps the exact float Σx. See BENCHMARKS.md for the measured error.
    Int8,
}

/// The activation mode of the host kernels: `RMLX_HOST_ACTIVATIONS=int8` selects the integer
/// path, `f32` (the default) the float one (read by `engine::switches`). Not the default
/// because it fails the oracle tolerances (BENCHMARKS.md, "Int8 activations": SmolLM2 4-bit
/// chat step-0 logits 2.9 off mlx-lm float32, gemma-3 4-bit greedy tokens diverging at
/// step 2).
pub fn activations() -> Activations {
    super::switches::host_activations()
}

/// Whether [`matmul_many`] handles weights of this format: 4 or 8 bits, a positive group
/// size that is a multiple of 32, float32 input and scales. (The shapes are checked by
/// [`matmul_many`] itself.)
pub fn supports(bits: i32, group_size: i32, x: &Array, scales: &Array) -> bool {
    format_ok(bits, group_size) && x.dtype() == Dtype::Float32 && scales.dtype() == Dtype::Float32
}

/// Bit widths and group sizes the kernels are written for.
fn format_ok(bits: i32, group_size: i32) -> bool {
    check_format(bits as i64, group_size as i64).is_ok()
}

/// [`format_ok`] as an error that says what is wrong.
fn check_format(bits: i64, group: i64) -> Result<()> {
    if matches!(bits, 4 | 8) && group > 0 && group % 32 == 0 {
        return Ok(());
    }
    Err(fail(
        "format",
        format!("{bits}-bit groups of {group}: only 4 or 8 bits in groups of a multiple of 32"),
    ))
}

/// MLX arrays of one quantized layer: packed weight, scales, biases, bits, group size.
pub type Operands<'a> = (&'a Array, &'a Array, &'a Array, i32, i32);

/// A borrowed affine-quantized `[rows, cols]` matrix, checked on construction
/// ([`QuantMatrix::new`]): the kernels read the buffers through raw pointers and rely on
/// these invariants for staying in bounds.
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    /// Packed weights, row-major, `cols · bits / 8` bytes per row.
    packed: &'a [u8],
    /// `[rows, cols / group]` scales.
    scales: &'a [f32],
    /// `[rows, cols / group]` biases.
    biases: &'a [f32],
    /// Output features (≥ 1).
    rows: usize,
    /// Input features: a positive multiple of `group`.
    cols: usize,
    /// 4 or 8.
    bits: usize,
    /// Columns per scale/bias pair: a positive multiple of 32.
    group: usize,
}

/// `y = x · dequantize(W)ᵀ` for a few rows of `x` (`[..., cols]`), for several matrices
/// sharing that input (q/k/v, gate/up) in one parallel pass. Formats the kernels do not
/// handle (see [`supports`]) and shapes that do not fit together are errors.
pub fn matmul_many(x: &Array, mats: &[Operands<'_>]) -> Result<Vec<Array>> {
    matmul_many_as(x, mats, activations())
}

/// [`matmul_many`] with the given activation mode.
fn matmul_many_as(x: &Array, mats: &[Operands<'_>], mode: Activations) -> Result<Vec<Array>> {
    on_host(x, mats, |views, xs| {
        let laid = laid_for(mats, views, xs, mode);
        QuantMatrix::matmul_many_laid(views, xs, mode, laid.as_deref())
    })
}

/// One layer call on the host, shared by the mat-vec kernels and the prefill GEMM
/// (`engine::gemm`): `x` (`[..., cols]`, float32) as host rows and each matrix's view,
/// checked to fit together; `products` computes each matrix's `[n, rows]` result, returned as
/// MLX arrays shaped like `x`.
pub(crate) fn on_host(
    x: &Array,
    mats: &[Operands<'_>],
    products: impl FnOnce(&[QuantMatrix<'_>], &[f32]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Array>> {
    let x = if x.try_as_slice::<f32>().is_ok() {
        x.clone()
    } else {
        x.contiguous().map_err(|e| fail("input", e.to_string()))?
    };
    let xs = x
        .try_as_slice::<f32>()
        .map_err(|e| fail("input", e.to_string()))?;
    let views = views(mats)?;
    let last = x.shape().last().map_or(0, |&d| d as usize);
    if let Some(m) = views.iter().find(|m| m.cols != last) {
        return Err(fail(
            "shape",
            format!(
                "input of shape {:?} does not end in the weight's {} input features",
                x.shape(),
                m.cols
            ),
        ));
    }
    let outs = products(&views, xs)?;
    outputs(&x, &views, outs)
}

/// Each matrix's product `[..., rows]` as an MLX array shaped like the input `x`
/// (`[..., cols]`), from the host results.
fn outputs(x: &Array, views: &[QuantMatrix<'_>], outs: Vec<Vec<f32>>) -> Result<Vec<Array>> {
    views
        .iter()
        .zip(outs)
        .map(|(m, y)| {
            let mut shape = x.shape().to_vec();
            if let Some(last) = shape.last_mut() {
                *last = i32::try_from(m.rows).map_err(|_| fail("shape", "too many rows".into()))?;
            }
            Ok(Array::from_slice(&y, &shape))
        })
        .collect()
}

/// [`matmul_many`] on an input already on the host (one or a few whole rows, `[M, cols]`),
/// returning host vectors (`[M, rows]` each).
pub fn matvec_many_host(x: &[f32], mats: &[Operands<'_>]) -> Result<Vec<Vec<f32>>> {
    let views = views(mats)?;
    let mode = activations();
    let laid = laid_for(mats, &views, x, mode);
    QuantMatrix::matmul_many_laid(&views, x, mode, laid.as_deref())
}

/// The AMX layouts of `mats` (their `views`) when the call of input `x` runs on the AMX tiles
/// ([`amx_for`], by its number of rows); `None` otherwise.
#[cfg(target_arch = "x86_64")]
fn laid_for(
    mats: &[Operands<'_>],
    views: &[QuantMatrix<'_>],
    x: &[f32],
    mode: Activations,
) -> Option<Vec<Laid>> {
    let n = views.first().map_or(0, |m| x.len() / m.cols);
    (mode == Activations::F32 && n > 0 && amx_for(n))
        .then(|| lay_out_in(&mut layouts(), mats, views))
}

#[cfg(not(target_arch = "x86_64"))]
fn laid_for(
    _: &[Operands<'_>],
    _: &[QuantMatrix<'_>],
    _: &[f32],
    _: Activations,
) -> Option<Vec<Laid>> {
    None
}

/// A matrix's weights laid out for the AMX tiles, shared by the calls that use it.
#[cfg(target_arch = "x86_64")]
type Laid = std::sync::Arc<amx::Layout>;

#[cfg(not(target_arch = "x86_64"))]
type Laid = ();

/// The AMX layouts made so far, keyed by the packed weight buffer's address, each with a
/// reference to the weight array (so its buffer, the key, cannot be freed and its address
/// reused while the entry stands).
#[cfg(target_arch = "x86_64")]
type Layouts = std::collections::HashMap<usize, (Array, Laid)>;

/// This process's [`Layouts`], locked.
#[cfg(target_arch = "x86_64")]
fn layouts() -> std::sync::MutexGuard<'static, Layouts> {
    static LAID: OnceLock<std::sync::Mutex<Layouts>> = OnceLock::new();
    LAID.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops every AMX layout and the weight references kept with them. Called when a model is
/// dropped ([`super::Model`]), so a process that replaces its models — a server's hot reload,
/// the editor's probes — does not keep every earlier model's weights and layouts alive; a
/// model still loaded makes its layouts again at its next AMX call.
pub fn forget_layouts() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut cache = layouts();
        if !cache.is_empty() {
            let bytes: usize = cache.values().map(|(_, l)| l.bytes()).sum();
            let n = cache.len();
            tracing::debug!("a model was dropped: {n} AMX layouts ({bytes} bytes) dropped");
            cache.clear();
        }
    }
}

/// Each weight's [`amx::Layout`] (`views` the views of `mats`), made at its first AMX call
/// and kept in `cache` ([`layouts`]) until a model is dropped ([`forget_layouts`]): twice the
/// memory of the 4-bit weights the AMX path reads, once more for 8-bit ones.
#[cfg(target_arch = "x86_64")]
fn lay_out_in(cache: &mut Layouts, mats: &[Operands<'_>], views: &[QuantMatrix<'_>]) -> Vec<Laid> {
    let mut found = Vec::with_capacity(mats.len());
    for (op, m) in mats.iter().zip(views) {
        let key = m.packed.as_ptr() as usize;
        let laid = match cache.get(&key) {
            Some((_, l)) if l.fits(m) => l.clone(),
            _ => {
                // SAFETY: `laid_for` called this after `amx_for` chose AMX (available).
                let l = std::sync::Arc::new(unsafe { amx::Layout::new(m) });
                let (rows, cols, bytes) = (m.rows, m.cols, l.bytes());
                tracing::debug!("AMX layout of a {rows}x{cols} matrix: {bytes} bytes");
                cache.insert(key, (op.0.clone(), l.clone()));
                l
            }
        };
        found.push(laid);
    }
    found
}

/// Host views of each layer's operands.
pub(crate) fn views<'a>(mats: &[Operands<'a>]) -> Result<Vec<QuantMatrix<'a>>> {
    mats.iter()
        .map(|&(w, s, b, bits, group)| QuantMatrix::view(w, s, b, bits, group))
        .collect()
}

fn fail(what: &str, e: String) -> Diagnostic {
    Diagnostic::error(
        code::Engine::HostKernel,
        format!("host mat-vec: {what}: {e}"),
    )
}

/// Σ of `g` (a whole number of 8-value lanes) in [`lane_sum_of`]'s order.
fn lane_sum(g: &[f32]) -> f32 {
    lane_sum_of(g, |v| v)
}

/// Σ f(v) over `x`: eight lane sums in column order, then `((l0 + l1) + (l2 + l3)) + ((l4 +
/// l5) + (l6 + l7))`, then the values past the last whole lane one by one — one fixed order
/// the compiler can vectorize, where a plain running sum is one serial chain of `x.len()`
/// additions (the host kernels' group sums; `RmsNorm::host_forward`'s sum of squares).
#[inline]
pub(crate) fn lane_sum_of(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0f32; 8];
    let lanes = x.chunks_exact(8);
    let tail = lanes.remainder();
    for chunk in lanes {
        for (l, &v) in l.iter_mut().zip(chunk) {
            *l += f(v);
        }
    }
    let whole = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    tail.iter().fold(whole, |s, &v| s + f(v))
}

/// A block's `[rows, n]` products (`out`) copied to the `n` inputs' parts (`parts[k]`: input
/// `k`'s values of those rows); nothing when `parts` is empty.
fn scatter(out: &[f32], parts: &mut [&mut [MaybeUninit<f32>]]) {
    let Some(n) = std::num::NonZeroUsize::new(parts.len()) else {
        return;
    };
    for (r, values) in out.chunks_exact(n.get()).enumerate() {
        parts.iter_mut().zip(values).for_each(|(p, v)| {
            p[r].write(*v);
        });
    }
}

/// `len` values to be written before they are read ([`QuantMatrix::for_row_blocks`]): not
/// zeroed first (zeroing every product was 2% of a four-sequence step, on the calling thread).
fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` elements need no initialization; the capacity is `len`.
    unsafe { v.set_len(len) };
    v
}

/// What a task of [`QuantMatrix::for_row_blocks`] writes to.
struct TaskOut<'a, 'b> {
    /// The task's `[rows, n]` block of the products.
    rows_n: &'a mut [f32],
    /// With several inputs, each input's values of the task's rows, for a task that writes
    /// them itself (empty with one input: `rows_n` is then that input's output).
    parts: &'a mut [&'b mut [MaybeUninit<f32>]],
}

/// Which of its [`TaskOut`] a task wrote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// `rows_n` (with several inputs, scattered to the parts after the task).
    RowsN,
    /// Every input's part directly.
    Parts,
}

/// `v` once every value of it is written.
///
/// # Safety
/// Every element of `v` must have been written.
unsafe fn written(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the caller promises every element is
    // initialized; the allocation is handed over whole (pointer, length, capacity).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

thread_local! {
    /// The `[rows, n]` products of a call with several inputs ([`QuantMatrix::for_row_blocks`]),
    /// kept by the calling thread across calls (a fresh zeroed buffer per call was page
    /// clearing and `memset` on the calling thread while the pool's helpers waited).
    static PRODUCTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One input row prepared for the float32 kernels.
struct Prepared {
    /// `x` in the kernel's layout: for 4-bit weights per 16 columns the 8 even ones, then the
    /// 8 odd ones — divided by 16 (exact: a power of two) where the kernel keeps the high
    /// nibbles of the 8 packed bytes in place ([`Nibbles::InPlace`]: 16 × their value), as
    /// they are where it shifts them down ([`Nibbles::Shifted`]); as is for 8-bit.
    x: Vec<f32>,
    /// Σx per group, for the bias term.
    group_sums: Vec<f32>,
    /// How the kernel meets the high nibbles of 4-bit weights (the layout of `x`).
    nibbles: Nibbles,
}

/// How a float kernel reads the high nibble of a packed 4-bit byte, and so how the odd
/// columns of a prepared input are laid out ([`Prepared::x`]). Either way the products are
/// the same numbers: `(16q · s) · (x / 16)` and `(q · s) · x` are equal bit for bit, 16 being
/// a power of two (inputs below 2⁻¹²² aside, where `x / 16` is subnormal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nibbles {
    /// Masked in place (`byte & 0xf0`, 16 × the value): one AND per 16 columns for both
    /// halves (AVX2, the portable reference, AVX-512 without VBMI).
    InPlace,
    /// Shifted down to their value: the AVX-512 VBMI kernels, which look each nibble up in a
    /// 16-entry table of `q · scale` ([`avx512`]).
    Shifted,
}

impl Nibbles {
    /// The layout `family`'s 4-bit kernel reads on this processor.
    fn of(family: Family) -> Self {
        if family == Family::Avx512 && vbmi_available() {
            Nibbles::Shifted
        } else {
            Nibbles::InPlace
        }
    }
}

impl<'a> QuantMatrix<'a> {
    /// A matrix of `rows × cols` `bits`-bit values in groups of `group` columns. Errors unless
    /// `bits` is 4 or 8, `group` a positive multiple of 32, `cols` a positive multiple of
    /// `group`, `rows` positive, and the buffers exactly as long as that layout needs.
    pub fn new(
        packed: &'a [u8],
        scales: &'a [f32],
        biases: &'a [f32],
        rows: usize,
        cols: usize,
        bits: usize,
        group: usize,
    ) -> Result<Self> {
        check_format(
            i64::try_from(bits).unwrap_or(i64::MAX),
            i64::try_from(group).unwrap_or(i64::MAX),
        )?;
        if rows == 0 || cols == 0 || !cols.is_multiple_of(group) {
            return Err(fail(
                "shape",
                format!("a {rows}×{cols} matrix does not split into groups of {group}"),
            ));
        }
        let bytes = rows.checked_mul(cols).and_then(|n| n.checked_mul(bits));
        let groups = rows.checked_mul(cols / group);
        if bytes.map(|b| b / 8) != Some(packed.len())
            || groups != Some(scales.len())
            || groups != Some(biases.len())
        {
            return Err(fail(
                "shape",
                format!(
                    "a {rows}×{cols} {bits}-bit matrix in groups of {group} with {} packed bytes, \
                     {} scales, {} biases",
                    packed.len(),
                    scales.len(),
                    biases.len()
                ),
            ));
        }
        Ok(QuantMatrix {
            packed,
            scales,
            biases,
            rows,
            cols,
            bits,
            group,
        })
    }

    /// A view of MLX's packed weight (`[rows, cols · bits / 32]` u32), scales and biases
    /// (evaluated if they were not).
    fn view(
        weight: &'a Array,
        scales: &'a Array,
        biases: &'a Array,
        bits: i32,
        group: i32,
    ) -> Result<Self> {
        check_format(bits.into(), group.into())?;
        let &[rows, packed_cols] = weight.shape() else {
            return Err(fail(
                "shape",
                format!(
                    "the packed weight has shape {:?}, not [rows, cols]",
                    weight.shape()
                ),
            ));
        };
        let w = host_slice::<u32>(weight, "weight")?;
        let s = host_slice::<f32>(scales, "scales")?;
        let b = host_slice::<f32>(biases, "biases")?;
        // Both dimensions are non-negative: MLX shapes are.
        let (rows, cols) = (rows as usize, packed_cols as usize * 32 / bits as usize);
        // SAFETY: u32 → u8 reinterpretation of an initialised buffer (u8 has no alignment
        // requirement); the borrow keeps `weight` alive.
        let packed: &[u8] = unsafe {
            std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), std::mem::size_of_val(w))
        };
        Self::new(packed, s, b, rows, cols, bits as usize, group as usize)
    }
}

impl QuantMatrix<'_> {
    /// Output features (weight rows) and input features (columns).
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Weight row `r` dequantized into `out` (`cols` values): `scale · q + bias` per group,
    /// a product then a sum (no fused multiply-add), so the AVX2 version gives the same
    /// bits as the scalar one.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd_available() && out.len() == self.cols {
            // SAFETY: AVX2 is present; `row` is a whole row of this matrix (its packed bytes
            // hold `cols · bits / 8` bytes, one scale and bias per `group` columns, `group` a
            // multiple of 32) and `out` holds `cols` values.
            unsafe { avx2::dequantize(self.bits, self.group, self.row(r), out) };
            return;
        }
        self.dequantize_row_scalar(r, out);
    }

    /// [`Self::dequantize_row`] in plain Rust (the reference of the AVX2 version).
    fn dequantize_row_scalar(&self, r: usize, out: &mut [f32]) {
        let (packed, scales, biases) = self.row(r);
        let bytes = self.group * self.bits / 8;
        let groups = out
            .chunks_exact_mut(self.group)
            .zip(packed.chunks_exact(bytes));
        for ((out, packed), (&s, &b)) in groups.zip(scales.iter().zip(biases)) {
            if self.bits == 8 {
                for (o, &q) in out.iter_mut().zip(packed) {
                    *o = f32::from(q) * s + b;
                }
            } else {
                for (o, &q) in out.chunks_exact_mut(2).zip(packed) {
                    o[0] = f32::from(q & 0x0f) * s + b;
                    o[1] = f32::from(q >> 4) * s + b;
                }
            }
        }
    }
}

impl QuantMatrix<'_> {
    /// `x` in the float kernels' layout with its group sums, in plain indexed loops (an
    /// iterator chain here was 8% of a four-row decode step, all of it on the caller's
    /// thread before the pool starts).
    fn prepare(&self, x: &[f32]) -> Prepared {
        self.prepare_for(x, Nibbles::of(family()))
    }

    /// [`Self::prepare`] for the kernels that read `nibbles`.
    fn prepare_for(&self, x: &[f32], nibbles: Nibbles) -> Prepared {
        let group_sums = x.chunks_exact(self.group).map(lane_sum).collect();
        if self.bits != 4 {
            return Prepared {
                x: x.to_vec(),
                group_sums,
                nibbles,
            };
        }
        let odd = match nibbles {
            Nibbles::InPlace => 1.0 / 16.0,
            Nibbles::Shifted => 1.0,
        };
        let mut out = vec![0f32; x.len()];
        for (c, o) in x.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
            for i in 0..8 {
                o[i] = c[2 * i];
                o[8 + i] = c[2 * i + 1] * odd;
            }
        }
        Prepared {
            x: out,
            group_sums,
            nibbles,
        }
    }

    /// `y[m, r] = Σ_c dequant(W[r, c]) · x[m, c]` for the rows `m` of `x` (`[M, cols]`),
    /// returned as `[M, rows]`. An `x` that is empty or not a whole number of rows is an
    /// error.
    pub fn matmul(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(Self::matmul_many(std::slice::from_ref(self), x)?.remove(0))
    }

    /// [`Self::matmul`] for several matrices with the same input, in one parallel pass:
    /// blocks of weight rows of all matrices are spread over the kernel pool (`engine::pool`), and each weight
    /// row is read once for all input rows.
    pub fn matmul_many(mats: &[Self], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        Self::matmul_many_as(mats, x, activations())
    }

    /// [`Self::matmul_many`] with the given activation mode.
    fn matmul_many_as(mats: &[Self], x: &[f32], mode: Activations) -> Result<Vec<Vec<f32>>> {
        Self::matmul_many_laid(mats, x, mode, None)
    }

    /// [`Self::matmul_many_as`], the AMX kernels reading each matrix's weights from its
    /// layout in `laid` where given (one per matrix), else transposing them per call.
    fn matmul_many_laid(
        mats: &[Self],
        x: &[f32],
        mode: Activations,
        laid: Option<&[Laid]>,
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(m) = mats
            .iter()
            .find(|m| x.is_empty() || !x.len().is_multiple_of(m.cols))
        {
            return Err(fail(
                "shape",
                format!(
                    "an input of {} values is not a whole number of rows of {}",
                    x.len(),
                    m.cols
                ),
            ));
        }
        Ok(Self::matmul_checked(mats, x, mode, laid))
    }

    /// [`Self::matmul_many_laid`] once `x` is known to be whole rows of every matrix.
    fn matmul_checked(
        mats: &[Self],
        x: &[f32],
        mode: Activations,
        laid: Option<&[Laid]>,
    ) -> Vec<Vec<f32>> {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = laid;
        match mode {
            #[cfg(target_arch = "x86_64")]
            Activations::F32 if amx_for(x.len() / mats[0].cols) => {
                Self::amx_products(mats, x, laid)
            }
            Activations::F32 => Self::products::<Prepared>(mats, x),
            Activations::Int8 => Self::products::<Quantized>(mats, x),
        }
    }

    /// Runs `task(matrix index, first weight row, out)` over blocks of weight rows of all
    /// matrices in parallel; `out` ([`TaskOut`]) holds the block's part of that matrix's
    /// `[rows, n]` product (`n` inputs) and, with several inputs, each input's part of the
    /// block's rows. Returns each matrix's product as `[n, rows]`, the inputs' layout: a task
    /// that wrote the `[rows, n]` block has it copied to the inputs' parts on its own thread,
    /// while it is in cache (a separate copy on the calling thread was 2% of a four-sequence
    /// step, the helpers idle); one that wrote the parts itself (`Written::Parts`, the AMX
    /// kernels) skips the copy.
    fn for_row_blocks<F>(mats: &[Self], n: usize, task: F) -> Vec<Vec<f32>>
    where
        F: Fn(usize, usize, TaskOut<'_, '_>) -> Written + Sync,
    {
        let threads = super::pool::threads();
        let total_rows: usize = mats.iter().map(|m| m.rows).sum();
        // A multiple of the AMX kernels' 16-row blocks (the other kernels take any rows).
        let per_task = (total_rows / (threads * TASKS_PER_THREAD))
            .max(MIN_ROWS_PER_TASK)
            .next_multiple_of(16);
        let zeros = |m: &Self| vec![0f32; m.rows * n];
        if n == 1 {
            let mut outs: Vec<Vec<f32>> = mats.iter().map(zeros).collect();
            let mut tasks = Vec::new();
            for (i, out) in outs.iter_mut().enumerate() {
                for (t, chunk) in out.chunks_mut(per_task).enumerate() {
                    tasks.push((i, t * per_task, chunk));
                }
            }
            super::pool::for_each_mut(&mut tasks, |(i, first, out)| {
                let parts = &mut [];
                task(*i, *first, TaskOut { rows_n: out, parts });
            });
            return outs;
        }
        // The `[rows, n]` products go to a buffer the calling thread keeps across calls:
        // every value of it is written by a task before the task reads it.
        let mut products = PRODUCTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        products.resize(total_rows * n, 0.0);
        let mut ys: Vec<Vec<MaybeUninit<f32>>> =
            mats.iter().map(|m| unwritten(m.rows * n)).collect();
        // Each task owns a contiguous block of weight rows, and its part of each input's
        // row of `ys`: `parts` holds them task after task, `n` per task (one allocation for
        // the call, not one per task).
        let count: usize = mats.iter().map(|m| m.rows.div_ceil(per_task)).sum();
        let mut parts: Vec<&mut [MaybeUninit<f32>]> = Vec::with_capacity(count * n);
        for (y, m) in ys.iter_mut().zip(mats) {
            let mut inputs: Vec<_> = y
                .chunks_mut(m.rows)
                .map(|r| r.chunks_mut(per_task))
                .collect();
            for _ in 0..m.rows.div_ceil(per_task) {
                parts.extend(inputs.iter_mut().filter_map(Iterator::next));
            }
        }
        let mut tasks = Vec::with_capacity(count);
        let (mut rest, mut parts_left) = (products.as_mut_slice(), parts.as_mut_slice());
        for (i, m) in mats.iter().enumerate() {
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(m.rows * n);
            rest = tail;
            for (t, chunk) in out.chunks_mut(per_task * n).enumerate() {
                let (mine, tail) = std::mem::take(&mut parts_left).split_at_mut(n);
                parts_left = tail;
                tasks.push((i, t * per_task, chunk, mine));
            }
        }
        super::pool::for_each_mut(&mut tasks, |(i, first, out, parts)| {
            let rows_n = &mut **out;
            if task(*i, *first, TaskOut { rows_n, parts }) == Written::RowsN {
                scatter(out, parts);
            }
        });
        drop(tasks);
        drop(parts);
        PRODUCTS.with(|p| *p.borrow_mut() = products);
        // SAFETY: the tasks cover every weight row of every matrix (blocks of `per_task`
        // from 0), and each task wrote its rows of each of the `n` inputs — through `scatter`,
        // or itself where it returned `Written::Parts` (the AMX kernels: every live row of
        // every input block, `amx::write_block`); a task that panicked made `for_each_mut`
        // panic before this point.
        ys.into_iter().map(|y| unsafe { written(y) }).collect()
    }

    /// Asks the cache for weight row `r` (packed bytes, scales, biases) ahead of its use
    /// ([`PREFETCH_ROWS`]).
    #[inline]
    pub(crate) fn prefetch_row(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (packed, scales, biases) = self.row(r);
            for line in packed.chunks(64) {
                // SAFETY: a prefetch of an address inside a live slice has no effect on memory.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
            for part in [scales, biases] {
                for line in part.chunks(16) {
                    // SAFETY: as above.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
        }
    }

    /// Packed bytes, scales and biases of weight row `r`.
    #[inline]
    fn row(&self, r: usize) -> Row<'_> {
        let groups = self.cols / self.group;
        let row_bytes = self.cols * self.bits / 8;
        (
            &self.packed[r * row_bytes..(r + 1) * row_bytes],
            &self.scales[r * groups..(r + 1) * groups],
            &self.biases[r * groups..(r + 1) * groups],
        )
    }

    /// The input rows prepared once per distinct layout (q/k/v and gate/up share one),
    /// and for each matrix the index of its preparation.
    fn prepare_shared<P: Input>(mats: &[Self], x: &[f32]) -> (Vec<Vec<P>>, Vec<usize>) {
        Self::prepare_layouts(mats, |m| x.chunks(m.cols).map(|r| P::new(r, m)).collect())
    }

    /// `prepare(m)` once per distinct layout of `mats` (bits, group, columns), and for each
    /// matrix the index of its layout's preparation.
    fn prepare_layouts<T>(mats: &[Self], prepare: impl Fn(&Self) -> T) -> (Vec<T>, Vec<usize>) {
        let layout = |m: &Self| (m.bits, m.group, m.cols);
        let mut firsts: Vec<usize> = Vec::new();
        let of = mats
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let known = firsts.iter().position(|&f| layout(&mats[f]) == layout(m));
                known.unwrap_or_else(|| {
                    firsts.push(i);
                    firsts.len() - 1
                })
            })
            .collect();
        (firsts.iter().map(|&f| prepare(&mats[f])).collect(), of)
    }

    /// The products `[rows, n]` per matrix on the AMX tiles ([`amx`]): the inputs prepared
    /// once per layout in blocks of [`amx::BLOCK`], each task running every block over its
    /// weight rows, read from the matrix's tile layout in `laid` where given. Only where
    /// [`amx_for`] chose AMX (available).
    #[cfg(target_arch = "x86_64")]
    fn amx_products(mats: &[Self], x: &[f32], laid: Option<&[Laid]>) -> Vec<Vec<f32>> {
        let n = x.len() / mats[0].cols;
        let (prepared, of) = Self::prepare_layouts(mats, |m| {
            let rows: Vec<&[f32]> = x.chunks_exact(m.cols).collect();
            rows.chunks(amx::BLOCK)
                // SAFETY: `amx_for` chose AMX, so `amx::available` returned `Ok`; each row
                // holds `m.cols` values (`matmul_many_as` checked `x`).
                .map(|block| unsafe { amx::Inputs::new(block, m) })
                .collect::<Vec<_>>()
        });
        Self::for_row_blocks(mats, n, |i, first, out| {
            let rows = out.rows_n.len() / n;
            let (mut dest, written) = match out.parts.is_empty() {
                true => (amx::Dest::RowsN(out.rows_n), Written::RowsN),
                false => (amx::Dest::Inputs(out.parts), Written::Parts),
            };
            for (k, inputs) in prepared[of[i]].iter().enumerate() {
                let at = (first, rows, k * amx::BLOCK, n);
                // SAFETY: AMX is available (above); `inputs` was prepared for this layout;
                // `for_row_blocks` hands out rows `first..first + rows` of matrix `i` and their
                // `[rows, n]` block (or each input's part of those rows); block `k` holds
                // inputs `k · BLOCK..` of `n`.
                let layout = laid.map(|l| &*l[i]);
                unsafe { amx::rows(&mats[i], inputs, layout, at, &mut dest) };
            }
            written
        })
    }

    /// The products `[rows, n]` per matrix, the inputs prepared as `P` (one activation mode).
    /// Inputs outside, weight rows inside: each block of up to [`Input::BLOCK`] inputs takes
    /// one pass over the task's weight rows, staying in L1 while the rows stream past, and
    /// each weight vector is unpacked once for the block. Every input takes the same
    /// arithmetic whatever block it is in, so a row of a batch equals that row computed
    /// alone, bit for bit (greedy results do not depend on batching).
    fn products<P: Input>(mats: &[Self], x: &[f32]) -> Vec<Vec<f32>> {
        let (prepared, of) = Self::prepare_shared::<P>(mats, x);
        let n = x.len() / mats[0].cols;
        Self::for_row_blocks(mats, n, |i, first, TaskOut { rows_n: out, .. }| {
            let (m, inputs) = (&mats[i], &prepared[of[i]]);
            for start in (0..n).step_by(P::BLOCK) {
                let block = &inputs[start..n.min(start + P::BLOCK)];
                let at = (first, start, n);
                match block.len() {
                    4 => m.pass::<P, 4>(block, at, out),
                    3 => m.pass::<P, 3>(block, at, out),
                    2 => m.pass::<P, 2>(block, at, out),
                    _ => m.pass::<P, 1>(block, at, out),
                }
            }
            Written::RowsN
        })
    }

    /// One pass of `N` inputs over a task's weight rows: `block` holds inputs `start..` of
    /// `n`, the task starts at weight row `first`, and `out` is its `[rows, n]` part.
    fn pass<P: Input, const N: usize>(
        &self,
        block: &[P],
        (first, start, n): (usize, usize, usize),
        out: &mut [f32],
    ) {
        let kernel = P::kernel::<N>(self.bits);
        let inputs: [&P; N] = std::array::from_fn(|k| &block[k]);
        let rows = out.len() / n;
        for j in 0..rows {
            if j + PREFETCH_ROWS < rows {
                self.prefetch_row(first + j + PREFETCH_ROWS);
            }
            // SAFETY: the kernel is the portable reference or a SIMD kernel chosen after
            // run-time detection; `QuantMatrix::new` checked the row layout and `P::new`
            // made each input `cols` values in this matrix's layout.
            let v = unsafe { kernel(self.group, self.row(first + j), inputs) };
            out[j * n + start..j * n + start + N].copy_from_slice(&v);
        }
    }
}

/// An input row prepared for one activation mode's kernels.
trait Input: Sized + Sync {
    /// Inputs per pass over the weights at most (1 to 4): as many as the kernel's
    /// accumulators keep in registers.
    const BLOCK: usize;

    /// `x` (`m.cols` values) prepared for matrix `m`'s layout.
    fn new(x: &[f32], m: &QuantMatrix<'_>) -> Self;

    /// The kernel for `bits`-bit weights (4 or 8, checked by [`QuantMatrix::new`]) against `N`
    /// inputs: SIMD when present ([`family`]), else the portable reference.
    fn kernel<const N: usize>(bits: usize) -> Kernel<Self, N>;
}

/// One weight row against `N` prepared inputs: for each input
/// `Σ_g scale[g] · Σ_{c∈g} q[c] · x[c] + bias[g] · Σ_{c∈g} x[c]` (int8 inputs: with `x[c]` as
/// its int8 value times its block's scale).
type Kernel<P, const N: usize> = unsafe fn(usize, Row<'_>, [&P; N]) -> [f32; N];

impl Input for Prepared {
    /// AVX2: four FMA chains per input; three or four inputs take them in two passes of two
    /// chains over the row (eight accumulators stay in the 16 vector registers), so a batch
    /// of four reads and unpacks each weight row once, not twice as in blocks of two
    /// (BENCHMARKS.md, "Continuous batching", round 8). AVX-512: four inputs in one pass
    /// (16 accumulators of 32 registers; blocks of eight in two passes measured no faster,
    /// BENCHMARKS.md round 10).
    const BLOCK: usize = 4;

    fn new(x: &[f32], m: &QuantMatrix<'_>) -> Self {
        m.prepare(x)
    }

    fn kernel<const N: usize>(bits: usize) -> Kernel<Self, N> {
        f32_kernel::<N>(family(), bits)
    }
}

/// The float kernel of `family` for `bits`-bit weights against `N` inputs. A SIMD family
/// the processor lacks gives the portable reference (the callers choose by [`family`] or,
/// in tests, by the detection functions).
fn f32_kernel<const N: usize>(family: Family, bits: usize) -> Kernel<Prepared, N> {
    #[cfg(target_arch = "x86_64")]
    {
        if family == Family::Avx512 && avx512_available() {
            return match bits {
                8 => avx512::dot_q8::<N>,
                _ if Nibbles::of(family) == Nibbles::Shifted => avx512::dot_q4_table::<N>,
                _ => avx512::dot_q4::<N>,
            };
        }
        if family == Family::Avx2 && simd_available() {
            return match bits {
                8 => avx2::dot_q8::<N>,
                _ => avx2::dot_q4::<N>,
            };
        }
    }
    let _ = family;
    match bits {
        8 => f32_scalar::<8, N>,
        _ => f32_scalar::<4, N>,
    }
}

impl Input for Quantized {
    /// One accumulator per input.
    const BLOCK: usize = 4;

    fn new(x: &[f32], m: &QuantMatrix<'_>) -> Self {
        Quantized::new(x, m)
    }

    fn kernel<const N: usize>(bits: usize) -> Kernel<Self, N> {
        #[cfg(target_arch = "x86_64")]
        {
            if simd_available() {
                return match bits {
                    8 => avx2::i8_q8::<N>,
                    _ => avx2::i8_q4::<N>,
                };
            }
        }
        match bits {
            8 => i8_scalar::<8, N>,
            _ => i8_scalar::<4, N>,
        }
    }
}

/// One input row quantized for the int8 kernels.
struct Quantized {
    /// The values as int8, `x ≈ q · scale[block]`; for 4-bit weights reordered per 32
    /// columns as [16 even, 16 odd] to meet the low and high nibbles of 16 packed bytes.
    q: Vec<i8>,
    /// One scale per 32 columns.
    scales: Vec<f32>,
    /// Σx per weight group (exact float), for the bias term.
    group_sums: Vec<f32>,
}

impl Quantized {
    /// `x` (`m.cols` values) quantized for matrix `m`'s layout.
    fn new(x: &[f32], m: &QuantMatrix<'_>) -> Self {
        let group_sums = x.chunks(m.group).map(|g| g.iter().sum()).collect();
        let mut q = vec![0i8; x.len()];
        let mut scales = Vec::with_capacity(x.len() / 32);
        for (block, out) in x.chunks(32).zip(q.chunks_mut(32)) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            scales.push(scale);
            for (c, v) in block.iter().enumerate() {
                // `as` saturates; |v · inv| ≤ 127 up to rounding.
                let at = if m.bits == 4 { c / 2 + (c % 2) * 16 } else { c };
                out[at] = (v * inv).round() as i8;
            }
        }
        Quantized {
            q,
            scales,
            group_sums,
        }
    }
}

/// Portable reference of the int8 kernels (integer sums per 32 columns, then the same float
/// steps as the SIMD kernels).
///
/// # Safety
/// None beyond the slice lengths the caller asserted; `unsafe` only to share the type of
/// the SIMD kernels.
unsafe fn i8_scalar<const BITS: usize, const N: usize>(
    group: usize,
    (packed, scales, biases): Row<'_>,
    xs: [&Quantized; N],
) -> [f32; N] {
    std::array::from_fn(|i| {
        let x = xs[i];
        let mut total = 0f32;
        for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
            for blk in g * group / 32..(g + 1) * group / 32 {
                let mut dot = 0i32;
                for k in 0..32 {
                    let c = blk * 32 + k;
                    let w = if BITS == 8 {
                        packed[c] as i32
                    } else {
                        // Column order of `Quantized::q` for 4-bit: [16 even, 16 odd].
                        let byte = packed[blk * 16 + k % 16];
                        if k < 16 {
                            (byte & 0x0f) as i32
                        } else {
                            (byte >> 4) as i32
                        }
                    };
                    dot += w * x.q[c] as i32;
                }
                total += dot as f32 * (s * x.scales[blk]);
            }
            total += b * x.group_sums[g];
        }
        total
    })
}

/// One weight row: packed bytes, scales, biases.
type Row<'a> = (&'a [u8], &'a [f32], &'a [f32]);

/// Whether a weight row and float inputs have the layout the SIMD float kernels read (for
/// their debug assertions): `group` a multiple of 32, one scale per group, every input as
/// long as the row.
fn float_layout_ok(
    group: usize,
    bits: usize,
    (packed, scales, _): Row<'_>,
    xs: &[&Prepared],
) -> bool {
    group.is_multiple_of(32)
        && packed.len() * 8 == scales.len() * group * bits
        && xs.iter().all(|x| x.x.len() * bits == packed.len() * 8)
}

/// Portable reference of the float32 kernels: per column `(q · scale) · x`, in column order.
///
/// # Safety
/// None beyond the slice lengths the caller asserted; `unsafe` only to share the type of
/// the SIMD kernels.
unsafe fn f32_scalar<const BITS: usize, const N: usize>(
    group: usize,
    (packed, scales, biases): Row<'_>,
    xs: [&Prepared; N],
) -> [f32; N] {
    xs.map(|x| {
        let mut total = 0f32;
        for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
            for c in g * group..(g + 1) * group {
                total += quantized::<BITS>(packed, c, x.nibbles) * s * x.x[c];
            }
            total += b * x.group_sums[g];
        }
        total
    })
}

/// The weight of column `c` of the prepared layout ([`Prepared::x`]) as the float kernels
/// see it: the byte for 8 bits; for 4 bits, per 16 columns, the low nibbles of 8 bytes and
/// then their high nibbles, kept in place (16 × their value) or shifted down (`nibbles`).
fn quantized<const BITS: usize>(packed: &[u8], c: usize, nibbles: Nibbles) -> f32 {
    if BITS == 8 {
        return f32::from(packed[c]);
    }
    let byte = packed[c / 16 * 8 + c % 8];
    f32::from(match (c % 16 < 8, nibbles) {
        (true, _) => byte & 0x0f,
        (false, Nibbles::InPlace) => byte & 0xf0,
        (false, Nibbles::Shifted) => byte >> 4,
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Float32 inputs against 8-bit weights: per 8 columns one zero-extending load puts the
    /// bytes in 32-bit lanes, converted and scaled by the group's scale once, then met by each
    /// of the `N` inputs in its own FMA chain (four chains per input, one per 8 columns of
    /// each 32; [`q8_step`]). Up to two inputs take all four chains in one pass over the
    /// row; three or four inputs would need more accumulators than the 16 vector registers
    /// hold, so they take two passes of two chains each ([`chain_passes`]). Every chain sees
    /// the same operations in the same order for every `N`, so an input's result does not
    /// depend on the inputs computed with it.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8<const N: usize>(
        group: usize,
        row: Row<'_>,
        xs: [&Prepared; N],
    ) -> [f32; N] {
        dot::<8, N>(group, row, xs)
    }

    /// Float32 inputs against 4-bit weights, as [`dot_q8`]: per 16 packed bytes (32
    /// columns) two zero-extending loads put 8 bytes each in 32-bit lanes; the low nibbles
    /// (`& 0x0f`) meet 8 even columns, the high nibbles kept in place (`& 0xf0`, 16 × their
    /// value) the 8 odd columns, which [`Prepared`] holds divided by 16. Two conversions per
    /// 8 bytes, no shifts or shuffles (a register-to-register `vpmovzxbd` costs as much as
    /// two memory-operand ones on this machine's Zen 3). Chains 0 and 1 are the first 8
    /// bytes of each 16, chains 2 and 3 the last 8 ([`q4_step`]).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4<const N: usize>(
        group: usize,
        row: Row<'_>,
        xs: [&Prepared; N],
    ) -> [f32; N] {
        dot::<4, N>(group, row, xs)
    }

    /// [`dot_q8`] or [`dot_q4`] (`BITS`).
    #[target_feature(enable = "avx2,fma")]
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
        let acc = chain_passes(
            || chains::<BITS, N, 0, 4>(group, packed, scales, xp),
            || chains::<BITS, N, 0, 2>(group, packed, scales, xp),
            || chains::<BITS, N, 2, 2>(group, packed, scales, xp),
        );
        finish(acc, biases, xs)
    }

    /// The FMA chains `FIRST..FIRST + COUNT` of [`dot`] over a whole row (`FIRST` and
    /// `COUNT` even for 4 bits: a 4-bit step feeds two chains); the other chains stay zero.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn chains<const BITS: usize, const N: usize, const FIRST: usize, const COUNT: usize>(
        group: usize,
        packed: &[u8],
        scales: &[f32],
        xp: [*const f32; N],
    ) -> Chains<N> {
        let p = packed.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for (g, &s) in scales.iter().enumerate() {
            let s = _mm256_set1_ps(s);
            let mut c = g * group;
            while c < (g + 1) * group {
                if BITS == 8 {
                    for k in FIRST..FIRST + COUNT {
                        q8_step(p, c, k, s, xp, &mut acc);
                    }
                } else {
                    for h in FIRST / 2..(FIRST + COUNT) / 2 {
                        q4_step(p, c, h, s, xp, &mut acc);
                    }
                }
                c += 32;
            }
        }
        acc
    }

    /// Chain `k` of [`dot_q8`] at columns `c + 8k..c + 8k + 8` for every input.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn q8_step<const N: usize>(
        p: *const u8,
        c: usize,
        k: usize,
        s: __m256,
        xp: [*const f32; N],
        acc: &mut Chains<N>,
    ) {
        let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c + 8 * k) as *const __m128i));
        let w = _mm256_mul_ps(_mm256_cvtepi32_ps(q), s);
        for i in 0..N {
            let x = _mm256_loadu_ps(xp[i].add(c + 8 * k));
            acc[i][k] = _mm256_fmadd_ps(w, x, acc[i][k]);
        }
    }

    /// Half `h` of [`dot_q4`] at columns `c + 16h..c + 16h + 16` (8 packed bytes) for every
    /// input: chains `2h` (low nibbles) and `2h + 1` (high nibbles).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn q4_step<const N: usize>(
        p: *const u8,
        c: usize,
        h: usize,
        s: __m256,
        xp: [*const f32; N],
        acc: &mut Chains<N>,
    ) {
        let (low, high) = (_mm256_set1_epi32(0x0f), _mm256_set1_epi32(0xf0));
        let at = c + 16 * h;
        let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(at / 2) as *const __m128i));
        let lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q, low)), s);
        let hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q, high)), s);
        for i in 0..N {
            let x = xp[i].add(at);
            acc[i][2 * h] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x), acc[i][2 * h]);
            let a = acc[i][2 * h + 1];
            acc[i][2 * h + 1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x.add(8)), a);
        }
    }

    /// Four FMA chains per input.
    type Chains<const N: usize> = [[__m256; 4]; N];

    /// A row's chains for `N` inputs: `all()` (every chain in one pass) for up to two inputs,
    /// else `low()` (chains 0 and 1) and `high()` (chains 2 and 3) in two passes, so that at
    /// most eight accumulators are live — enough independent chains to keep both FMA pipes
    /// busy, few enough to stay in registers. Each chain's sum is the same either way.
    #[inline(always)]
    fn chain_passes<const N: usize>(
        all: impl FnOnce() -> Chains<N>,
        low: impl FnOnce() -> Chains<N>,
        high: impl FnOnce() -> Chains<N>,
    ) -> Chains<N> {
        if N <= 2 {
            return all();
        }
        let mut acc = low();
        for (a, h) in acc.iter_mut().zip(high()) {
            a[2] = h[2];
            a[3] = h[3];
        }
        acc
    }

    use super::{Prepared, Quantized, Row};

    /// A weight row dequantized into `out`: per group `q · scale + bias` (a multiply, then an
    /// add, as the scalar reference). 4 bits: each packed byte holds two columns, the low
    /// nibble first; the 8 low and 8 high nibbles of 8 bytes are converted apart and
    /// interleaved back into column order.
    ///
    /// # Safety
    /// AVX2 must be present; `packed` must hold `out.len() · bits / 8` bytes, `scales` and
    /// `biases` one value per `group` columns, `group` a multiple of 32.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dequantize(
        bits: usize,
        group: usize,
        (packed, scales, biases): Row<'_>,
        out: &mut [f32],
    ) {
        debug_assert!(group.is_multiple_of(32) && out.len() == scales.len() * group);
        debug_assert!(packed.len() * 8 == out.len() * bits);
        let (p, o) = (packed.as_ptr(), out.as_mut_ptr());
        for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
            let (s, b) = (_mm256_set1_ps(s), _mm256_set1_ps(b));
            for c in (g * group..(g + 1) * group).step_by(16) {
                if bits == 8 {
                    let lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c) as *const __m128i));
                    let hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c + 8) as *const __m128i));
                    _mm256_storeu_ps(o.add(c), affine(lo, s, b));
                    _mm256_storeu_ps(o.add(c + 8), affine(hi, s, b));
                } else {
                    let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c / 2) as *const __m128i));
                    let lo = affine(_mm256_and_si256(q, _mm256_set1_epi32(0x0f)), s, b);
                    let hi = affine(_mm256_srli_epi32::<4>(q), s, b);
                    // Lanes [l0 h0 l1 h1 | l4 h4 l5 h5] and [l2 h2 l3 h3 | l6 h6 l7 h7].
                    let (a, z) = (_mm256_unpacklo_ps(lo, hi), _mm256_unpackhi_ps(lo, hi));
                    _mm256_storeu_ps(o.add(c), _mm256_permute2f128_ps::<0x20>(a, z));
                    _mm256_storeu_ps(o.add(c + 8), _mm256_permute2f128_ps::<0x31>(a, z));
                }
            }
        }
    }

    /// `q · s + b` of 8 integer lanes, rounded after the product and after the sum.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn affine(q: __m256i, s: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), s), b)
    }

    /// Int8 inputs against 4-bit weights: per 32 columns (16 packed bytes) the low and high
    /// nibbles form 32 unsigned bytes that meet the input's 32 int8 values in one
    /// `vpmaddubsw` (pairs of products ≤ 2 · 15 · 127, no saturation) and one `vpmaddwd`;
    /// the eight int32 sums are converted and scaled by weight scale × input scale.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn i8_q4<const N: usize>(
        group: usize,
        (packed, scales, biases): Row<'_>,
        xs: [&Quantized; N],
    ) -> [f32; N] {
        debug_assert!(group.is_multiple_of(32) && packed.len() * 2 == scales.len() * group);
        debug_assert!(xs.iter().all(|x| x.q.len() == packed.len() * 2));
        let p = packed.as_ptr();
        let xq = xs.map(|x| x.q.as_ptr());
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut bias = [0f32; N];
        let per_group = group / 32;
        for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
            for blk in g * per_group..(g + 1) * per_group {
                let q = _mm_loadu_si128(p.add(blk * 16) as *const __m128i);
                let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), mask);
                for i in 0..N {
                    let x = _mm256_loadu_si256(xq[i].add(blk * 32) as *const __m256i);
                    let d = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
                    let f = _mm256_set1_ps(s * xs[i].scales.get_unchecked(blk));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), f, acc[i]);
                }
            }
            for i in 0..N {
                bias[i] += b * xs[i].group_sums.get_unchecked(g);
            }
        }
        let mut out = [0f32; N];
        for i in 0..N {
            out[i] = hsum(acc[i]) + bias[i];
        }
        out
    }

    /// Int8 inputs against 8-bit weights: the unsigned weight `q` is taken as `q − 128`
    /// (a signed byte; the bias becomes `bias + 128 · scale`), so `vpmaddubsw` can take
    /// |q − 128| and the input with the weight's sign (`vpsignb`): pairs of products
    /// ≤ 2 · 128 · 127, no saturation.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn i8_q8<const N: usize>(
        group: usize,
        (packed, scales, biases): Row<'_>,
        xs: [&Quantized; N],
    ) -> [f32; N] {
        debug_assert!(group.is_multiple_of(32) && packed.len() == scales.len() * group);
        debug_assert!(xs.iter().all(|x| x.q.len() == packed.len()));
        let p = packed.as_ptr();
        let xq = xs.map(|x| x.q.as_ptr());
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut bias = [0f32; N];
        let per_group = group / 32;
        for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
            for blk in g * per_group..(g + 1) * per_group {
                let w =
                    _mm256_xor_si256(_mm256_loadu_si256(p.add(blk * 32) as *const __m256i), flip);
                let magnitude = _mm256_abs_epi8(w);
                for i in 0..N {
                    let x = _mm256_loadu_si256(xq[i].add(blk * 32) as *const __m256i);
                    let signed = _mm256_sign_epi8(x, w);
                    let d = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones);
                    let f = _mm256_set1_ps(s * xs[i].scales.get_unchecked(blk));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), f, acc[i]);
                }
            }
            let shifted = b + 128.0 * s;
            for i in 0..N {
                bias[i] += shifted * xs[i].group_sums.get_unchecked(g);
            }
        }
        let mut out = [0f32; N];
        for i in 0..N {
            out[i] = hsum(acc[i]) + bias[i];
        }
        out
    }

    /// Each input's total (`N` ≤ 4): its four chains, plus its bias term
    /// `Σ_g bias[g] · Σx[g]` — eight groups per vector FMA, each bias vector loaded once for
    /// all inputs, then the groups past the last eight one by one (a scalar loop over all
    /// groups took 15% of a 4-bit g32 prefill, and its serial add chain bounded the row
    /// kernels) — summed across lanes for all inputs at once ([`hsum4`]; a bias term and a
    /// horizontal sum per input were 9% of a four-row decode step). Every input takes the
    /// same operations whatever `N` is.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn finish<const N: usize>(
        acc: Chains<N>,
        biases: &[f32],
        xs: [&Prepared; N],
    ) -> [f32; N] {
        debug_assert!(xs.iter().all(|x| x.group_sums.len() == biases.len()));
        let (b, groups) = (biases.as_ptr(), biases.len());
        let whole = groups / 8 * 8;
        let sums = xs.map(|x| x.group_sums.as_ptr());
        let mut bias = [_mm256_setzero_ps(); N];
        for k in (0..whole).step_by(8) {
            let bk = _mm256_loadu_ps(b.add(k));
            for i in 0..N {
                bias[i] = _mm256_fmadd_ps(bk, _mm256_loadu_ps(sums[i].add(k)), bias[i]);
            }
        }
        let mut lanes = [_mm256_setzero_ps(); 4];
        for i in 0..N {
            let [a0, a1, a2, a3] = acc[i];
            let chains = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            lanes[i] = _mm256_add_ps(chains, bias[i]);
        }
        let totals = hsum4(lanes);
        std::array::from_fn(|i| {
            let mut tail = 0f32;
            for k in whole..groups {
                tail += *b.add(k) * *sums[i].add(k);
            }
            totals[i] + tail
        })
    }

    /// The lane sums of four vectors, each `((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))`
    /// whatever the other three hold (`vhaddps` adds pairs within one operand).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum4(v: [__m256; 4]) -> [f32; 4] {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), s);
        out
    }
}

#[cfg(test)]
mod tests;
