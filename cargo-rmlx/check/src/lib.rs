//! `rmlx-check`: the check layer of cargo-rmlx — the chat-template lint engine ([`lint`])
//! and the smoke probe ([`probe`]), shared by the command line, the server's probe gate and
//! the editor. It sits on `rmlx-model` only (ARCHITECTURE.md, "Crates and layers").

pub mod lint;
pub mod probe;

// The model layer under the paths these modules were written with (`crate::engine`, …).
pub(crate) use rmlx_model::{
    diagnostic, engine, manifest, reasoning, session, template, tokenize, tools,
};
