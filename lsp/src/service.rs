//! The tower service in front of the language server: it notices the `exit` notification
//! (the process ends on it even when the client keeps stdin open) and contains panics — a
//! handler that panics costs its own message (a request gets an `InternalError` response)
//! instead of the process, and the locks it held are taken over by the next handler
//! ([`crate::sync::lock`]).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Notify;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Request, Response};

/// Wraps the language service; see the module documentation.
pub struct Guarded<S> {
    inner: S,
    exited: Arc<Notify>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`; `exited` is notified when the client sends `exit`.
    pub fn new(inner: S, exited: Arc<Notify>) -> Self {
        Self { inner, exited }
    }
}

impl<S> tower_service::Service<Request> for Guarded<S>
where
    S: tower_service::Service<Request, Response = Option<Response>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Option<Response>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let method = req.method().to_string();
        let id = req.id().cloned();
        let fut = self.inner.call(req);
        if method == "exit" {
            self.exited.notify_one();
        }
        Box::pin(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => out,
                Err(panic) => {
                    let why = panic_message(panic.as_ref());
                    tracing::error!("the handler of `{method}` panicked: {why}");
                    Ok(id.map(|id| {
                        Response::from_error(
                            id,
                            Error {
                                code: ErrorCode::InternalError,
                                message: format!("rmlx-lsp: the `{method}` handler failed: {why}")
                                    .into(),
                                data: None,
                            },
                        )
                    }))
                }
            }
        })
    }
}

/// The message a panic carried.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use tower_lsp_server::jsonrpc::{Id, Result};
    use tower_lsp_server::ls_types::*;
    use tower_lsp_server::{LanguageServer, LspService};
    use tower_service::Service;

    /// A server whose hover panics on line 13 while holding its lock, as a handler bug would.
    struct Flaky {
        hovers: std::sync::Mutex<u32>,
    }

    impl LanguageServer for Flaky {
        async fn initialize(&self, _: InitializeParams) -> Result<InitializeResult> {
            Ok(InitializeResult::default())
        }

        async fn shutdown(&self) -> Result<()> {
            Ok(())
        }

        async fn hover(&self, params: HoverParams) -> Result<Option<Hover>> {
            let mut n = crate::sync::lock(&self.hovers);
            *n += 1;
            let line = params.text_document_position_params.position.line;
            assert_ne!(line, 13, "a handler bug");
            Ok(Some(Hover {
                contents: HoverContents::Scalar(MarkedString::String(format!("hover {n}"))),
                range: None,
            }))
        }
    }

    fn request(id: i64, method: &'static str, params: serde_json::Value) -> Request {
        Request::build(method).id(id).params(params).finish()
    }

    fn hover(id: i64, line: u32) -> Request {
        request(
            id,
            "textDocument/hover",
            json!({"textDocument": {"uri": "file:///t.jinja"}, "position": {"line": line, "character": 0}}),
        )
    }

    #[tokio::test]
    async fn a_panicking_handler_costs_one_request() {
        let (service, _socket) = LspService::new(|_| Flaky {
            hovers: std::sync::Mutex::new(0),
        });
        let mut s = Guarded::new(service, Arc::new(Notify::new()));
        let init = request(1, "initialize", json!({"capabilities": {}}));
        assert!(s.call(init).await.unwrap().unwrap().is_ok());
        let failed = s.call(hover(2, 13)).await.unwrap().unwrap();
        assert_eq!(failed.id(), &Id::Number(2));
        let e = failed.error().expect("an error response");
        assert_eq!(e.code, ErrorCode::InternalError);
        assert!(e.message.contains("a handler bug"), "{}", e.message);
        // The next request is served, and the state the panic left behind is kept.
        let ok = s.call(hover(3, 1)).await.unwrap().unwrap();
        assert_eq!(ok.result().unwrap()["contents"], json!("hover 2"), "{ok:?}");
    }
}
