//! `rmlx`: all of cargo-rmlx's logic. The `cargo-rmlx` and `rmlx-lsp` binaries are thin
//! front-ends over this library. See ARCHITECTURE.md for the module map and data flow.

pub mod arch;
pub mod bench;
pub mod build;
pub mod cli;
pub mod diagnostic;
pub mod dist;
pub mod editor;
pub mod engine;
pub mod gguf;
pub mod lint;
pub mod manifest;
pub mod probe;
pub mod progress;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod template;
pub mod tokenize;

pub use diagnostic::{Diagnostic, Result, Severity};
