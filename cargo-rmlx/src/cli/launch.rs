//! `--hostfile` of `generate`, `probe` and `serve`: joins or launches the tensor-parallel run
//! (`crate::dist`) before the model loads, reports a rank that dies mid-run, and ends a
//! distributed run that failed without running MLX's global destructors.

use std::path::Path;

use crate::diagnostic::{Diagnostic, Result};
use crate::dist::Role;

/// Joins the run `hostfile` describes (or the one this process was started into).
pub fn join(hostfile: Option<&Path>) -> Result<Role> {
    crate::dist::join(hostfile, rank_failed)
}

/// Runs `work` in `role`: a distributed run that fails ends here ([`stop_now`]); otherwise
/// the launched ranks are waited for.
pub fn run_in(role: Role, work: impl FnOnce() -> Result<u8>) -> Result<u8> {
    match work() {
        Ok(code) => role.finish(code),
        Err(d) if role.is_distributed() => stop_now(&d),
        Err(d) => Err(d),
    }
}

/// A launched rank died: report it and stop (the others stop with us).
fn rank_failed(d: Diagnostic) {
    stop_now(&d)
}

/// Reports `d` and ends the process with its exit code at once. `_exit`, not `exit`: another
/// thread may be blocked inside an MLX collective, and MLX's static destructors would wait
/// for it. Nothing is flushed through `std::io::stdout()`: the main thread may hold its lock
/// for the whole generation (it writes each token unbuffered, so nothing is lost).
pub fn stop_now(d: &Diagnostic) -> ! {
    super::output::report(d);
    // SAFETY: ends the process at once; nothing of ours needs to run after this.
    unsafe { libc::_exit(i32::from(super::exit_code(d))) }
}
