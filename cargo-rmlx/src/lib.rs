//! `rmlx`: cargo-rmlx's command line ([`cli`], with [`bench`] and the distributed launcher
//! [`dist`]) over the library's layers, re-exported here under their module names so that
//! `rmlx::engine`, `rmlx::lint`, `rmlx::serve`, … name the same items wherever they live:
//!
//! - `rmlx-model` (`cargo-rmlx/model`): diagnostic, progress, mlx, snapshot, tokenize,
//!   template, tools, reasoning, constrain, engine, arch, session, gguf, manifest, build;
//! - `rmlx-check` (`cargo-rmlx/check`): lint, probe;
//! - `rmlx-serve` (`cargo-rmlx/serve`): serve; `rmlx-editor` (`cargo-rmlx/editor`): editor.
//!
//! The layers and their rule are in ARCHITECTURE.md ("Crates and layers").

pub mod bench;
pub mod cli;
pub mod dist;
#[cfg(test)]
mod layers;

pub use rmlx_check::{lint, probe};
pub use rmlx_editor as editor;
pub use rmlx_model::{
    arch, build, constrain, diagnostic, engine, gguf, manifest, mlx, progress, reasoning, session,
    snapshot, template, tokenize, tools,
};
pub use rmlx_model::{Diagnostic, Result, Severity};
pub use rmlx_serve as serve;
