//! `rmlx-serve`, `cargo rmlx serve`: an OpenAI-compatible HTTP server with probe-gated hot
//! reload. The top of the library's layers: it sits on `rmlx-check` and `rmlx-model`
//! (ARCHITECTURE.md, "Crates and layers"); nothing but the command line depends on it.
//!
//! - [`http`]: the axum application (`/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//!   `/v1/models/{name}/reload`, `/health`, `/metrics`), bearer key, CORS, SSE.
//! - [`guard`]: the request policy (loopback `Host`, body size and read time, JSON POSTs);
//!   [`conn`]: the accept loop (read timeout, graceful shutdown); [`access`]: the access log.
//! - [`api`]: request bodies, validation into a generation request, OpenAI-style errors.
//! - [`worker`]: one thread per loaded model version (MLX state is thread-bound): load, probe,
//!   then generations from a bounded queue, streamed back as events; cancellation between
//!   tokens.
//! - [`registry`]: the served models, build → load → probe → atomic swap.
//! - [`watch`]: `--watch` (notify, debounced) triggering reloads.
//! - [`text`]: stop strings and the tool-call parser's hook ([`tools`], from `rmlx-model`);
//!   [`metrics`]: Prometheus.
//! - [`distributed`]: `--hostfile`: rank 0 serves, the other ranks follow its passes.
//!
//! Every chat prompt is rendered by [`crate::session::Session::chat_prompt`], the path the
//! probe uses, so a request and the probe with the same messages see byte-identical ids.

pub mod access;
pub mod api;
pub mod conn;
pub mod distributed;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod text;
pub mod watch;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use http::HttpConfig;
pub use registry::{EventSink, LoadSettings, ModelSource};
/// The tool-call formats (in `rmlx-model`, next to the templates that write them).
pub use rmlx_model::tools;

use crate::diagnostic::{code, Diagnostic, Result};
use crate::manifest::Manifest;

// The layers below under the paths these modules were written with (`crate::engine`, …).
pub(crate) use rmlx_check::probe;
pub(crate) use rmlx_model::{
    build, constrain, diagnostic, engine, manifest, session, snapshot, tokenize,
};

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port; the `Listening` event says which).
    pub port: u16,
    /// The models, in order (the first one answers requests that name no model).
    pub models: Vec<ModelSource>,
    /// rmlx.toml, when models are declared there.
    pub manifest: Option<Manifest>,
    /// How models are loaded.
    pub load: LoadSettings,
    /// HTTP settings.
    pub http: HttpConfig,
    /// Reload models when their files change.
    pub watch: bool,
    /// Quiet time that ends a burst of file events.
    pub debounce: Duration,
    /// How long in-flight requests may take after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
}

/// What the server reports as it runs (the CLI prints these).
#[derive(Debug)]
pub enum ServeEvent<'a> {
    /// The socket is bound.
    Listening(SocketAddr),
    /// A declared model is being built.
    Building {
        /// Model.
        model: &'a str,
        /// Settings in words.
        what: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// A warning from a build.
    Note {
        /// Model.
        model: &'a str,
        /// The diagnostic.
        diagnostic: &'a Diagnostic,
    },
    /// A version is being loaded and probed.
    Loading {
        /// Model.
        model: &'a str,
        /// Its version number.
        version: u64,
        /// Why (`startup`, `request`, `file change`).
        trigger: &'a str,
    },
    /// A version entered service.
    Ready {
        /// Model.
        model: &'a str,
        /// Its version.
        version: u64,
        /// Probe verdict (`None` with `--no-probe`).
        verdict: Option<&'a str>,
    },
    /// A build, load or probe failed.
    Failed {
        /// Model.
        model: &'a str,
        /// Why.
        diagnostic: &'a Diagnostic,
        /// The version that keeps serving, if any.
        kept: Option<u64>,
    },
    /// Directories now watched.
    Watching {
        /// The directories.
        paths: &'a [PathBuf],
    },
    /// rmlx.toml could not be re-read; the previous declarations stay.
    WatchError {
        /// Why.
        diagnostic: &'a Diagnostic,
    },
    /// A signal arrived: finishing in-flight requests.
    ShuttingDown,
}

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every request finished and every model was freed on its own thread: the process may
    /// exit normally.
    Drained,
    /// The shutdown grace ran out with a model thread still running (a request in flight or
    /// a load under way). Exiting normally would tear down MLX's global state under that
    /// thread, so the caller should end the process without running exit handlers.
    Abandoned,
}

/// Runs the server until SIGINT/SIGTERM.
pub fn serve(opts: ServeOptions, events: EventSink) -> Result<Stopped> {
    if opts.load.max_batch > 1 {
        rmlx_model::engine::qmv::serve_batches();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rmlx-http")
        .enable_all()
        .build()
        .map_err(|e| {
            Diagnostic::error(
                code::Serve::Runtime,
                format!("cannot start the runtime: {e}"),
            )
        })?;
    rt.block_on(run(opts, events))
}

async fn run(opts: ServeOptions, events: EventSink) -> Result<Stopped> {
    // A bad origin is a usage error before anything starts.
    http::cors_layer(&opts.http.cors)?;
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| {
            Diagnostic::error(
                code::Serve::Bind,
                format!("cannot listen on {}:{}: {e}", opts.host, opts.port),
            )
            .with_help(
                "pick another --port (or [serve] port in rmlx.toml), or stop the process using it",
            )
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| Diagnostic::error(code::Serve::Bind, format!("no local address: {e}")))?;
    if !guard::is_loopback_name(&opts.host) && opts.http.api_key.is_none() {
        tracing::warn!(
            "listening on {} without an API key: anyone who can reach this address can use \
             and reload the models (set --api-key or RMLX_API_KEY)",
            opts.host
        );
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let registry = Arc::new(registry::Registry::new(
        opts.models.clone(),
        opts.manifest.clone(),
        opts.load.clone(),
        metrics.clone(),
        events.clone(),
    ));
    distributed::attach(&registry);
    events(ServeEvent::Listening(local));
    for entry in &registry.entries {
        let r = registry.clone();
        let e = entry.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rmlx-load-{}", entry.name))
            .spawn(move || {
                r.reload(&e, registry::Trigger::Startup);
            });
        if let Err(e) = spawned {
            return Err(Diagnostic::error(
                code::Serve::Thread,
                format!("cannot start a loader thread: {e}"),
            ));
        }
    }
    if opts.watch {
        watch::spawn(registry.clone(), events.clone(), opts.debounce)?;
    }
    let state = Arc::new(http::AppState::new(
        registry.clone(),
        metrics,
        opts.http.clone(),
    ));
    let policy = guard::Guard::new(
        &opts.host,
        local.port(),
        opts.http.max_body_bytes,
        opts.http.read_timeout,
    );
    let app = http::router(state, policy);
    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = sig_tx.send(true);
    });
    let mut graceful = sig_rx.clone();
    let server = conn::serve(listener, app, opts.http.read_timeout, async move {
        let _ = graceful.wait_for(|v| *v).await;
    });
    let mut deadline = sig_rx;
    let sink = events.clone();
    let grace = opts.shutdown_timeout;
    let signalled = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let signalled_at = signalled.clone();
    let served: Result<()> = tokio::select! {
        () = server => Ok(()),
        _ = async move {
            let _ = deadline.wait_for(|v| *v).await;
            let _ = signalled_at.set(tokio::time::Instant::now());
            sink(ServeEvent::ShuttingDown);
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("requests still running after {} s; exiting", grace.as_secs());
            return Ok(Stopped::Abandoned);
        }
    };
    // Every connection is closed (or the server failed): take the models out of service and
    // let their threads free them before the process exits, within what is left of the grace
    // period.
    let left = signalled
        .get()
        .map_or(grace, |t| grace.saturating_sub(t.elapsed()));
    // distributed hook: after a rank died, a model thread may wait in a collective forever
    let left = if distributed::failure().is_some() {
        Duration::ZERO
    } else {
        left
    };
    let released =
        tokio::task::spawn_blocking(move || registry.shutdown(left.max(Duration::from_secs(1))))
            .await
            .unwrap_or(false);
    served?;
    Ok(if released {
        Stopped::Drained
    } else {
        Stopped::Abandoned
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
