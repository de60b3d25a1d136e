//! Tolerant stdio framing between the client and the tower-lsp-server transport, which ends
//! the session on the first framing error. A client bug costs one message, not the session:
//!
//! - bytes before a `Content-Length:` header are skipped (the reader resynchronises on the
//!   next header), and so is a header line that is not `Name: value` or whose length is not a
//!   number, or over [`MAX_BODY`];
//! - a well-framed body that is not a JSON-RPC message is answered here with a JSON-RPC
//!   error (`-32700` when it is not JSON, `-32600 Invalid Request` otherwise; the request's
//!   id when it has one, else `null`) and never reaches the server;
//! - every other body is passed on unchanged, re-framed.
//!
//! One task owns stdout and writes whole frames: the server's (read back from its output
//! pipe) and these answers, so the two never interleave inside a frame. Every skip is
//! logged (stderr) with its reason.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Id, Request, Response};

/// The largest body accepted (bytes); a longer declared length is a bad header.
pub const MAX_BODY: usize = 64 << 20;
/// The longest header block looked at before its `Content-Length:` is given up as garbage.
const MAX_HEADER: usize = 8 << 10;
/// The header every frame starts with (matched without regard to ASCII case).
const HEADER: &[u8] = b"content-length:";
/// Capacity of the in-memory pipes to and from the server.
const PIPE: usize = 64 << 10;

/// What the decoder found next in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A well-framed body.
    Body(Vec<u8>),
    /// Bytes dropped from the input, and why.
    Skipped {
        /// How many.
        bytes: usize,
        /// Why.
        why: String,
    },
}

/// Splits a byte stream into frames, resynchronising after anything malformed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// The body length of the header just read, while its body is incomplete.
    body_len: Option<usize>,
}

impl Decoder {
    /// Appends input.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next frame of the input pushed so far; `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if let Some(len) = self.body_len {
            if self.buf.len() < len {
                return None;
            }
            self.body_len = None;
            return Some(Frame::Body(self.buf.drain(..len).collect()));
        }
        match find_header(&self.buf) {
            Some(0) => self.header(),
            Some(at) => Some(self.skip(at, "bytes before a `Content-Length` header".into())),
            None => {
                // Keep a tail that may be the start of a header split across reads.
                let drop = self.buf.len().saturating_sub(HEADER.len() - 1);
                (drop > 0).then(|| self.skip(drop, "bytes that are not a message header".into()))
            }
        }
    }

    /// At the end of the input: what is left over (an incomplete header or body), if any.
    pub fn finish(&mut self) -> Option<Frame> {
        let bytes = self.buf.len();
        self.buf.clear();
        let why = match self.body_len.take() {
            Some(len) => format!("a body cut short ({bytes} of {len} bytes)"),
            None => "an incomplete message at the end of the input".into(),
        };
        (bytes > 0).then_some(Frame::Skipped { bytes, why })
    }

    /// The header block at the start of the buffer.
    fn header(&mut self) -> Option<Frame> {
        match parse_header(&self.buf) {
            Ok(None) => None,
            Ok(Some((end, len))) if len > MAX_BODY => Some(self.skip(
                end,
                format!("Content-Length {len} is over the limit of {MAX_BODY} bytes"),
            )),
            Ok(Some((end, len))) => {
                self.buf.drain(..end);
                self.body_len = Some(len);
                self.next_frame()
            }
            Err((bytes, why)) => Some(self.skip(bytes, why)),
        }
    }

    fn skip(&mut self, bytes: usize, why: String) -> Frame {
        self.buf.drain(..bytes);
        Frame::Skipped { bytes, why }
    }
}

/// Where the first `Content-Length:` starts in `buf`.
fn find_header(buf: &[u8]) -> Option<usize> {
    buf.windows(HEADER.len())
        .position(|w| w.eq_ignore_ascii_case(HEADER))
}

/// Parses the header block at the start of `buf` (lines ending in `\r\n` or `\n`, closed by
/// an empty line): `Ok(Some((block length, body length)))`, `Ok(None)` when the block is
/// incomplete, `Err((bytes to skip, why))` for a malformed line (skipped through its end).
fn parse_header(buf: &[u8]) -> Result<Option<(usize, usize)>, (usize, String)> {
    let mut at = 0;
    let mut len = None;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let end = at + nl + 1;
        let line = &buf[at..at + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The block starts with `Content-Length:`, so `len` is set unless that line was bad.
            return len
                .map(|l| Some((end, l)))
                .ok_or_else(|| (end, "no Content-Length".into()));
        }
        match header_line(line) {
            Ok(Some(_)) if len.is_some() => {
                return Err((end, "a second Content-Length header".into()))
            }
            Ok(Some(l)) => len = Some(l),
            Ok(None) => {}
            Err(why) => return Err((end, why)),
        }
        at = end;
    }
    if buf.len() > MAX_HEADER {
        return Err((HEADER.len(), "a header block that does not end".into()));
    }
    Ok(None)
}

/// One header line: `Ok(Some(length))` for `Content-Length`, `Ok(None)` for another header.
fn header_line(line: &[u8]) -> Result<Option<usize>, String> {
    let text = String::from_utf8_lossy(line);
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("a header line without `:`: {:?}", clip(&text)));
    };
    let (name, value) = (name.trim(), value.trim());
    if name.eq_ignore_ascii_case("content-length") {
        return match value.parse::<usize>() {
            Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(format!("Content-Length {:?} is not a length", clip(value))),
        };
    }
    if !name.eq_ignore_ascii_case("content-type") {
        tracing::debug!("ignoring the header {:?}", clip(name));
    }
    Ok(None)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `body` as a frame.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The JSON-RPC error that answers `body`, or `None` when it is a JSON-RPC message the
/// server can take (a request or notification with a method, or a response).
pub fn reject(body: &[u8]) -> Option<Response> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_response(
                Id::Null,
                ErrorCode::ParseError,
                format!("Parse error: the message is not JSON ({e})"),
            ))
        }
    };
    let object = value.as_object();
    let method = object.is_some_and(|o| o.contains_key("method"));
    let reply = object.is_some_and(|o| o.contains_key("result") || o.contains_key("error"));
    let ok = if method {
        serde_json::from_slice::<Request>(body).is_ok()
    } else {
        reply && serde_json::from_slice::<Response>(body).is_ok()
    };
    if ok {
        return None;
    }
    // A request's id (only when it has a method: a malformed response is nobody's request).
    let id = object
        .filter(|_| method)
        .and_then(|o| serde_json::from_value::<Id>(o.get("id")?.clone()).ok())
        .unwrap_or(Id::Null);
    Some(error_response(
        id,
        ErrorCode::InvalidRequest,
        "Invalid Request: not a JSON-RPC 2.0 request, notification or response".into(),
    ))
}

fn error_response(id: Id, code: ErrorCode, message: String) -> Response {
    Response::from_error(
        id,
        Error {
            code,
            message: message.into(),
            data: None,
        },
    )
}

/// Runs `server` (given the input and output pipes it reads and writes frames on) behind
/// the tolerant framing on `input`/`output`, until it ends or `stop` completes. Output the
/// server wrote before that is flushed (waiting at most two seconds).
pub async fn serve<I, O, F, Fut>(input: I, output: O, server: F, stop: impl Future<Output = ()>)
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(DuplexStream, DuplexStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let (server_in, to_server) = tokio::io::duplex(PIPE);
    let (from_server, server_out) = tokio::io::duplex(PIPE);
    let (frames, out) = unbounded_channel();
    let reader = tokio::spawn(read_client(input, to_server, frames.clone()));
    let forward = tokio::spawn(read_server(from_server, frames));
    let writer = tokio::spawn(write_frames(output, out));
    tokio::select! {
        () = server(server_in, server_out) => {}
        () = stop => {}
    }
    // The server's pipes are closed now: the forwarder ends at its output's end, the writer
    // once every sender is gone (the reader may be blocked on an input that stays open).
    reader.abort();
    let flushed = async {
        let _ = forward.await;
        let _ = writer.await;
    };
    if tokio::time::timeout(Duration::from_secs(2), flushed)
        .await
        .is_err()
    {
        tracing::warn!("the last messages to the client were not written within 2 s");
    }
}

/// Client → server: frames checked, bad ones skipped or answered.
async fn read_client(
    mut input: impl AsyncRead + Unpin,
    mut server: DuplexStream,
    replies: UnboundedSender<Vec<u8>>,
) {
    let mut decoder = Decoder::default();
    let mut chunk = vec![0u8; PIPE];
    loop {
        while let Some(frame) = decoder.next_frame() {
            let body = match frame {
                Frame::Body(body) => body,
                Frame::Skipped { bytes, why } => {
                    tracing::warn!("skipped {bytes} bytes of client input: {why}");
                    continue;
                }
            };
            match reject(&body) {
                None => {
                    if server.write_all(&encode(&body)).await.is_err() {
                        return;
                    }
                }
                Some(answer) => {
                    tracing::warn!(
                        "answered a malformed message ({} bytes) with an error: {:?}",
                        body.len(),
                        clip(&String::from_utf8_lossy(&body))
                    );
                    if let Ok(json) = serde_json::to_vec(&answer) {
                        let _ = replies.send(encode(&json));
                    }
                }
            }
        }
        match input.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => decoder.push(&chunk[..n]),
            Err(e) => {
                tracing::error!("reading the client's input: {e}");
                break;
            }
        }
    }
    if let Some(Frame::Skipped { bytes, why }) = decoder.finish() {
        tracing::warn!("skipped {bytes} bytes of client input: {why}");
    }
}

/// Server → stdout writer: the server's output cut back into whole frames.
async fn read_server(mut from_server: DuplexStream, frames: UnboundedSender<Vec<u8>>) {
    let mut decoder = Decoder::default();
    let mut chunk = vec![0u8; PIPE];
    while let Ok(n) = from_server.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        decoder.push(&chunk[..n]);
        while let Some(frame) = decoder.next_frame() {
            match frame {
                Frame::Body(body) => {
                    let _ = frames.send(encode(&body));
                }
                Frame::Skipped { bytes, why } => {
                    tracing::error!("the server wrote {bytes} unframed bytes: {why}");
                }
            }
        }
    }
}

/// The one writer of stdout: whole frames, flushed when no more are waiting.
async fn write_frames(mut output: impl AsyncWrite + Unpin, mut frames: UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if output.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = frames.try_recv() {
            if output.write_all(&frame).await.is_err() {
                return;
            }
        }
        if output.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
