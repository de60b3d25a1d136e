//! The access log: one `tracing` event per request (target `rmlx::access`, level INFO: shown
//! with `-v` or `RUST_LOG=rmlx::access=info`) with method, path, status, model, prompt and
//! completion tokens and latency. Generation handlers attach an [`AccessNote`] to their
//! response; a streamed response is logged when its stream ends (by [`log`] from the
//! stream's own record), the rest by the middleware [`layer`] when the response is ready.

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// What a handler knows about its request, for the access log.
#[derive(Debug, Clone, Default)]
pub struct AccessNote {
    /// The model that served it.
    pub model: String,
    /// (prompt tokens, completion tokens), when a generation ended.
    pub tokens: Option<(usize, usize)>,
    /// The body streams: the stream logs the request when it ends.
    pub deferred: bool,
}

/// Writes one access-log line.
pub fn log(
    method: &str,
    path: &str,
    status: u16,
    model: &str,
    tokens: Option<(usize, usize)>,
    latency: Duration,
) {
    let (prompt, completion) = match tokens {
        Some((p, c)) => (p.to_string(), c.to_string()),
        None => ("-".to_string(), "-".to_string()),
    };
    let model = if model.is_empty() { "-" } else { model };
    let ms = format!("{:.1}", latency.as_secs_f64() * 1e3);
    tracing::info!(
        target: "rmlx::access",
        method = %method,
        path = %path,
        status,
        model = %model,
        prompt_tokens = %prompt,
        completion_tokens = %completion,
        latency_ms = %ms,
        "request"
    );
}

/// The middleware: logs every response that is not deferred to its stream.
pub async fn layer(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let note = resp
        .extensions()
        .get::<AccessNote>()
        .cloned()
        .unwrap_or_default();
    if !note.deferred {
        log(
            &method,
            &path,
            resp.status().as_u16(),
            &note.model,
            note.tokens,
            started.elapsed(),
        );
    }
    resp
}
