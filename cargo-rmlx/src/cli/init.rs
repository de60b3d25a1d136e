//! `cargo rmlx init`: write an rmlx.toml scaffold (from `templates/rmlx.toml`) at the cargo
//! workspace root, or in the current directory outside a workspace. Never overwrites.

use clap::Args;

use super::output::status;
use super::{exit, GlobalArgs};
use crate::diagnostic::Result;
use crate::manifest::{init, init_dir};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {}

/// Runs `init`.
pub fn run(g: &GlobalArgs, _a: InitArgs) -> Result<u8> {
    let dir = init_dir(g.manifest_path.as_deref())?;
    let path = init(&dir)?;
    if !g.quiet {
        status("Created", &path.display().to_string());
    }
    Ok(exit::OK)
}
