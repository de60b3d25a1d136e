//! End-to-end tests of `rmlx-lsp`: the real binary over stdio, driven by a JSON-RPC client
//! written for the tests ([`client`]), on real templates and the real SmolLM2 model
//! ([`model`]); malformed input on stdio ([`frames`]); plus one test with a real editor (Neovim, headless) and the latency
//! benchmark (ignored by default; see BENCHMARKS.md).

mod bench;
mod client;
mod frames;
mod model;
mod neovim;
mod protocol;
mod templates;
