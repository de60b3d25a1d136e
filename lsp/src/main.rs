//! `rmlx-lsp`: the language server (work in progress).
fn main() {}
