//! End-to-end tests of `cargo rmlx serve`: the real server process on a loopback port, a real
//! HTTP client (ureq), the real SmolLM2-135M-Instruct model (see `support`).

mod api;
mod batching;
mod distributed;
mod gate;
mod hardening;
mod limits;
mod openai;
mod prompt_cache;
mod races;
#[path = "../e2e/ranks.rs"]
mod ranks;
mod reload;
mod structured;
mod support;
mod templates;
