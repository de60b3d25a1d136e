//! `--hostfile` of `generate` and `probe`: joins or launches the tensor-parallel run
//! (`crate::dist`) before the model loads, and reports a rank that dies mid-run.

use std::path::Path;

use crate::diagnostic::{Diagnostic, Result};
use crate::dist::Role;

/// Joins the run `hostfile` describes (or the one this process was started into).
pub fn join(hostfile: Option<&Path>) -> Result<Role> {
    crate::dist::join(hostfile, rank_failed)
}

/// A launched rank died: report it and stop (the others stop with us). `_exit`, not `exit`:
/// the main thread may be blocked inside an MLX collective, and MLX's static destructors
/// would wait for it.
fn rank_failed(d: Diagnostic) {
    use std::io::Write;
    super::output::report(&d);
    let _ = std::io::stdout().flush();
    // SAFETY: ends the process at once; nothing of ours needs to run after this.
    unsafe { libc::_exit(i32::from(super::exit_code(&d))) }
}
