//! How a process that ran the engine ends: whether it loaded a model onto a GPU
//! ([`gpu_used`]), and the exit both front-ends take at the end of `main` ([`exit`]).
//! MLX's CUDA backend keeps device objects (streams, events, cached buffers) in global state
//! whose destructors run after the CUDA driver's own exit teardown and abort the process
//! ("driver shutting down"), so such a process ends without running exit handlers.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a model has been loaded with MLX's default device a GPU.
static GPU_USED: AtomicBool = AtomicBool::new(false);

/// Records that a model was loaded onto a GPU (`Model::load`).
pub(crate) fn mark_gpu_used() {
    GPU_USED.store(true, Ordering::Relaxed);
}

/// Whether this process has loaded a model onto a GPU.
pub fn gpu_used() -> bool {
    GPU_USED.load(Ordering::Relaxed)
}

/// The exit of a front-end's `main` with `code`. After a GPU was used the process ends here,
/// its standard output and error flushed, without exit handlers (see the module docs);
/// otherwise `code` is returned for a normal exit. Call it last, when every request, file and
/// message is done.
pub fn exit(code: u8) -> ExitCode {
    if !gpu_used() {
        return ExitCode::from(code);
    }
    tracing::debug!("a GPU was used: ending the process without MLX's exit-time destructors");
    end_now(code)
}

/// Ends the process with `code` at once, standard output and error flushed first, without
/// exit handlers: after a GPU was used, or while a thread may still be inside MLX (a server
/// whose shutdown grace ran out), where MLX's global destructors must not run.
pub fn end_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: ends the process at once; nothing of ours needs to run after this.
    unsafe { libc::_exit(i32::from(code)) }
}
