//! `rmlx-model`: the model layer of cargo-rmlx — everything needed to build, load and run a
//! model and to render its prompts, with no lint, probe, server or command line above it.
//! The layers and their rule are in ARCHITECTURE.md ("Crates and layers").
//!
//! Bottom: [`diagnostic`] (the one error type and every code), [`progress`], [`mlx`] (the
//! only module calling MLX's C API). Model directories: [`snapshot`], [`tokenize`],
//! [`template`] (the one render path), [`tools`] (tool-call formats of the template
//! families), [`reasoning`]. Runtime: [`engine`], [`arch`] (the architecture registry),
//! [`constrain`], [`session`] (the one place prompts become ids). Producing model
//! directories: [`gguf`], [`build`]; [`manifest`] reads rmlx.toml.

pub mod arch;
pub mod build;
pub mod constrain;
pub mod diagnostic;
pub mod engine;
pub mod gguf;
pub mod manifest;
pub mod mlx;
pub mod progress;
pub mod reasoning;
pub mod session;
pub mod snapshot;
pub mod template;
pub mod tokenize;
pub mod tools;

pub use diagnostic::{Diagnostic, Result, Severity};
