//! What a request must be before any handler sees it: a `Host` the server answers to (DNS
//! rebinding), a body of announced size within the limit and read within the read timeout,
//! and JSON on every POST (a browser cannot send `application/json` across origins without a
//! CORS preflight, so blind cross-site POSTs are refused). Each refusal is an OpenAI-shaped
//! error.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::{ApiCode, ApiError};

/// The request policy of one server.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `Some(port)`: the server is bound to a loopback address on this port and serves only
    /// `Host` values naming the loopback (with this port, when one is given). `None`: any
    /// `Host` (a server on a public address cannot know the names it is reached by).
    pub loopback_port: Option<u16>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a body.
    pub read_timeout: Duration,
}

impl Guard {
    /// The policy of a server bound to `host` (as given on the command line) and `port`.
    pub fn new(host: &str, port: u16, max_body_bytes: usize, read_timeout: Duration) -> Self {
        Self {
            loopback_port: is_loopback_name(host).then_some(port),
            max_body_bytes,
            read_timeout,
        }
    }

    /// Whether a `Host` header value may be served.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(port) = self.loopback_port else {
            return true;
        };
        let (name, given_port) = split_host(host);
        let port_ok = given_port.is_none_or(|p| p.parse::<u16>() == Ok(port));
        port_ok && is_loopback_name(name)
    }
}

/// `localhost` (and names under it, RFC 6761), or a loopback IPv4/IPv6 address.
pub fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(&name);
    name == "localhost"
        || name.ends_with(".localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `name[:port]`, `[v6][:port]` → (name, port).
fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, tail)) => (v6, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (host, None),
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::coded(
        ApiCode::RequestTooLarge,
        format!("the request body is larger than the server's limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// Checks a request against the policy; reads a POST body within the read timeout.
pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match admit(&g, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn admit(g: &Guard, req: Request) -> Result<Request, ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{FFFD}"));
    if let Some(host) = host.filter(|h| !g.host_allowed(h)) {
        tracing::warn!("refused a request for Host `{host}` (loopback server)");
        return Err(ApiError::coded(
            ApiCode::HostNotAllowed,
            format!(
                "this server listens on a loopback address and answers only to localhost, \
                 127.0.0.1 or [::1], not `{host}`"
            ),
        ));
    }
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u128>().ok());
    if announced.is_some_and(|n| n > g.max_body_bytes as u128) {
        return Err(too_large(g.max_body_bytes));
    }
    if req.method() != Method::POST {
        return Ok(req);
    }
    if !is_json(&req) {
        return Err(ApiError::coded(
            ApiCode::UnsupportedMediaType,
            "POST requests must send `Content-Type: application/json`",
        ));
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, g.max_body_bytes);
    match tokio::time::timeout(g.read_timeout, read).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large(g.max_body_bytes)),
        Ok(Err(e)) => Err(ApiError::invalid(format!(
            "cannot read the request body: {e}"
        ))),
        Err(_) => Err(ApiError::coded(
            ApiCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s (--read-timeout)",
                g.read_timeout.as_secs()
            ),
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_only_on_a_loopback_bind() {
        let g = Guard::new("127.0.0.1", 8080, 1, Duration::from_secs(1));
        for ok in [
            "localhost:8080",
            "LOCALHOST",
            "localhost.:8080",
            "api.localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost:8081",
            "127.0.0.1:80",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
            "[::1",
            "",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let open = Guard::new("0.0.0.0", 8080, 1, Duration::from_secs(1));
        assert!(open.host_allowed("evil.example"));
        assert!(Guard::new("::1", 1, 1, Duration::from_secs(1))
            .loopback_port
            .is_some());
        assert!(Guard::new("localhost", 1, 1, Duration::from_secs(1))
            .loopback_port
            .is_some());
    }
}
