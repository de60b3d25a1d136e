//! How many threads OpenBLAS (MLX's dense matmul on the CPU, see `build.rs`) may use.
//!
//! Debian's pthread OpenBLAS keeps its worker threads spinning on `sched_yield` for a while
//! after every call. On a machine whose cores are busy with anything else — the test suite in
//! CI, a build next to the editor's probe, our own kernel pool (`engine::pool`) — those
//! spinners take the cores from the threads doing the work: a 37-token probe prefill measured
//! 2.7–4.8 s with two threads against 0.5–1.0 s single-threaded while a build ran, while on
//! an idle machine two threads were 0–20% faster at 128 tokens and even at 512
//! (BENCHMARKS.md, "Cold probe and short prefill"). So rmlx runs OpenBLAS single-threaded
//! unless told otherwise: `RMLX_BLAS_THREADS=N` (or OpenBLAS's own `OPENBLAS_NUM_THREADS`)
//! sets the count.
//!
//! The setting goes through `openblas_set_num_threads`, looked up at run time, so builds
//! without OpenBLAS (macOS, `RMLX_NO_OPENBLAS`) are unaffected.

use std::sync::Once;

/// Threads OpenBLAS uses when neither `RMLX_BLAS_THREADS` nor `OPENBLAS_NUM_THREADS` is set.
pub const DEFAULT_THREADS: usize = 1;

/// Applies the thread count once per process (called when a model is loaded on the CPU).
pub fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (threads, why) = match requested() {
            Some(r) => r,
            None => {
                if std::env::var_os("OPENBLAS_NUM_THREADS").is_some() {
                    tracing::debug!("OpenBLAS threads left to OPENBLAS_NUM_THREADS");
                    return;
                }
                (DEFAULT_THREADS, "the default")
            }
        };
        match set_threads(threads) {
            true => tracing::debug!("OpenBLAS threads: {threads} ({why})"),
            false => tracing::debug!(
                "OpenBLAS not linked (no openblas_set_num_threads); {why} of {threads} BLAS \
                 thread(s) not applied"
            ),
        }
    });
}

/// `RMLX_BLAS_THREADS`, when set to a positive number.
fn requested() -> Option<(usize, &'static str)> {
    let v = std::env::var("RMLX_BLAS_THREADS").ok()?;
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Some((n, "RMLX_BLAS_THREADS")),
        _ => {
            tracing::warn!(
                "RMLX_BLAS_THREADS={v:?} is not a positive number; using {DEFAULT_THREADS}"
            );
            None
        }
    }
}

/// Calls `openblas_set_num_threads(n)` if the process has OpenBLAS; whether it did.
fn set_threads(n: usize) -> bool {
    #[cfg(unix)]
    {
        type SetThreads = unsafe extern "C" fn(libc::c_int);
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()) };
        if sym.is_null() {
            return false;
        }
        // SAFETY: the symbol is OpenBLAS's `void openblas_set_num_threads(int)`.
        let f: SetThreads = unsafe { std::mem::transmute::<*mut libc::c_void, SetThreads>(sym) };
        let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: callable at any time from any thread; it resizes OpenBLAS's pool.
        unsafe { f(n) };
        true
    }
    #[cfg(not(unix))]
    {
        let _ = n;
        false
    }
}
