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

#[cfg(unix)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Threads OpenBLAS uses when neither `RMLX_BLAS_THREADS` nor `OPENBLAS_NUM_THREADS` is set.
pub const DEFAULT_THREADS: usize = 1;

/// First thing in `main`: when the thread count will be the default single thread (neither
/// variable set), sets it now and stops the worker OpenBLAS started when the library was
/// loaded. Left running, that worker spins on `sched_yield` for ~2^28 cycles (~0.1 s) before
/// it sleeps — one of two cores taken from the weight load and the tokenizer parse of a cold
/// `cargo rmlx probe`, and, in each template worker process, from the prefill
/// (BENCHMARKS.md, "Cold `cargo rmlx probe`"). OpenBLAS starts its workers again if a later
/// setting asks for more threads. Logs nothing: logging is not set up yet; [`configure`]
/// logs the count when a model loads.
///
/// Only here are the workers stopped: OpenBLAS's shutdown waits for its server lock, and a
/// thread inside a BLAS call at that moment deadlocks it (seen in the library's tests, whose
/// threads load models while others run `sgemm`). At the start of `main` no other thread
/// exists; [`configure`], which runs whenever a model first loads, only sets the count.
pub fn quiet_at_start() {
    if std::env::var_os("RMLX_BLAS_THREADS").is_some()
        || std::env::var_os("OPENBLAS_NUM_THREADS").is_some()
    {
        return;
    }
    if set_threads(DEFAULT_THREADS) {
        stop_idle_workers();
    }
}

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

/// Ends OpenBLAS's idle worker threads (`blas_thread_shutdown_`, the routine OpenBLAS runs
/// itself around `fork`) if the process has OpenBLAS. Called with one thread set, so no
/// BLAS call needs them; setting more threads starts them again. Only from
/// [`quiet_at_start`].
fn stop_idle_workers() {
    #[cfg(unix)]
    {
        type Shutdown = unsafe extern "C" fn() -> libc::c_int;
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"blas_thread_shutdown_".as_ptr()) };
        if sym.is_null() {
            return;
        }
        // SAFETY: the symbol is OpenBLAS's `int blas_thread_shutdown_(void)`; it takes the
        // server lock, so it is safe while no BLAS call runs (its one caller runs before any
        // other thread exists).
        let f: Shutdown = unsafe { std::mem::transmute::<*mut libc::c_void, Shutdown>(sym) };
        // SAFETY: see above.
        unsafe { f() };
    }
}

/// Calls `openblas_set_num_threads(n)` if the process has OpenBLAS; whether it has. The call
/// (re)starts the workers whatever the count (Debian's 0.3.21 runs `blas_thread_init` in
/// `goto_set_num_threads`, seen in gdb), so a count already applied is not applied again
/// ([`configure`] meeting the single thread [`quiet_at_start`] already set would restart the
/// workers [`quiet_at_start`] stopped).
fn set_threads(n: usize) -> bool {
    #[cfg(unix)]
    {
        /// The count last applied; 0 before any.
        static APPLIED: AtomicUsize = AtomicUsize::new(0);
        type SetThreads = unsafe extern "C" fn(libc::c_int);
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()) };
        if sym.is_null() {
            return false;
        }
        // SAFETY: the symbol is OpenBLAS's `void openblas_set_num_threads(int)`.
        let f: SetThreads = unsafe { std::mem::transmute::<*mut libc::c_void, SetThreads>(sym) };
        if APPLIED.swap(n, Ordering::Relaxed) == n {
            return true;
        }
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
