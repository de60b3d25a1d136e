//! `rmlx-lsp`: the language server for chat templates and rmlx.toml — the cargo-rmlx lint
//! engine and probe in the editor. Speaks LSP over stdio (`--stdio` is accepted and implied)
//! through tower-lsp-server, behind a framing layer that survives malformed input
//! ([`transport`]) and a service layer that contains handler panics ([`service`]). Logs go
//! to stderr (`RUST_LOG`, default `warn`). See the README's "Editor setup".

mod config;
mod probe;
mod server;
mod service;
mod sync;
mod transport;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tower_lsp_server::{LspService, Server};

const USAGE: &str =
    "rmlx-lsp: language server for chat templates (cargo-rmlx's lint engine and probe)

Usage: rmlx-lsp [--stdio]

Speaks the Language Server Protocol over stdin/stdout. Logs go to stderr (RUST_LOG).
Options: --stdio (the default transport), --version, --help";

fn main() -> ExitCode {
    rmlx_model::engine::blas::quiet_at_start(); // no OpenBLAS worker spinning in template workers
    rmlx_model::template::sandbox::init(); // renders chat templates in limited worker processes
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--stdio" => {}
            "--version" | "-V" => {
                println!("rmlx-lsp {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("rmlx-lsp: unknown argument `{other}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rmlx-lsp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shut_down = Arc::new(AtomicBool::new(false));
    let code = rt.block_on(async {
        let exited = Arc::new(Notify::new());
        let flag = shut_down.clone();
        let mut backend = None;
        let (service, socket) = LspService::build(|client| {
            let b = server::Backend::new(client, flag);
            backend = Some(b.handle());
            b
        })
        .finish();
        let service = service::Guarded::new(service, exited.clone());
        transport::serve(
            tokio::io::stdin(),
            tokio::io::stdout(),
            |input, output| Server::new(input, output, socket).serve(service),
            exited.notified(),
        )
        .await;
        if let Some(b) = backend {
            // The client may exit without a shutdown request; never leave MLX work running.
            let _ = tokio::task::spawn_blocking(move || b.stop_probe()).await;
        }
        // LSP: exit code 0 after a shutdown request, 1 otherwise.
        if shut_down.load(Ordering::SeqCst) {
            0
        } else {
            1
        }
    });
    // Do not wait for the blocking thread that reads stdin.
    rt.shutdown_timeout(Duration::from_millis(100));
    rmlx_model::engine::process::exit(code)
}
