//! `cargo rmlx lsp [ARGS…]`: starts the language server. Execs the `rmlx-lsp` binary that
//! sits next to the running executable (cargo installs and builds both into the same
//! directory), else the first `rmlx-lsp` on `PATH`, with stdin/stdout/stderr inherited and
//! the arguments passed through (e.g. `--stdio`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::diagnostic::{code, Diagnostic, Result};

/// Arguments of `lsp`.
#[derive(Debug, Args)]
pub struct LspArgs {
    /// Arguments for rmlx-lsp (e.g. --stdio).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

const BIN: &str = "rmlx-lsp";

/// `rmlx-lsp` next to the current executable, else on `PATH`.
fn find() -> Option<PathBuf> {
    let name = format!("{BIN}{}", std::env::consts::EXE_SUFFIX);
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(&name)))
        .filter(|p| p.is_file());
    sibling.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&name))
                .find(|p| p.is_file())
        })
    })
}

/// Runs `lsp`: replaces this process with rmlx-lsp (Unix) or runs it to completion.
pub fn run(_g: &GlobalArgs, a: LspArgs) -> Result<u8> {
    let bin = find().ok_or_else(|| {
        Diagnostic::error(
            code::Cli::LspNotFound,
            "cannot find the rmlx-lsp binary next to cargo-rmlx or on PATH",
        )
        .with_help(
            "build or install it with the rest of cargo-rmlx: `cargo build --release` in the \
             cargo-rmlx workspace, or `cargo install --path lsp`",
        )
    })?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&a.args);
    let failed = |e: std::io::Error| {
        Diagnostic::error(
            code::Cli::LspFailed,
            format!("cannot run {}: {e}", bin.display()),
        )
        .with_file(&bin)
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Only returns on failure.
        Err(failed(cmd.exec()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(failed)?;
        Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
    }
}
