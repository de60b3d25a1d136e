//! A JSON-RPC client for the tests: starts the real `rmlx-lsp` binary, frames messages
//! (`Content-Length` headers) over its stdin/stdout, records every message it receives with
//! its arrival time, answers the server's requests (`window/workDoneProgress/create`,
//! `workspace/configuration`), and waits for messages with a deadline (a hang fails the
//! test).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary under test: `$RMLX_LSP_BIN` (e.g. a release build, for the benchmark), else
/// the one cargo built for this test.
pub fn lsp_bin() -> PathBuf {
    match std::env::var_os("RMLX_LSP_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_rmlx-lsp")),
    }
}

/// One message from the server.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The message.
    pub value: Value,
}

#[derive(Default)]
struct Log {
    messages: Vec<Received>,
    closed: bool,
}

/// A running `rmlx-lsp` with a test client attached.
pub struct LspClient {
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
    log: Arc<(Mutex<Log>, Condvar)>,
    next_id: i64,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

fn frame(v: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(v).expect("serialize message");
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend(body);
    out
}

fn read_message(r: &mut impl BufRead) -> Option<Value> {
    let mut len = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length:") {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; len?];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl LspClient {
    /// Starts the server (extra environment variables in `env`).
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(lsp_bin());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start_command(cmd)
    }

    /// Starts the server with `cmd` (e.g. `cargo-rmlx rmlx lsp`).
    pub fn start_command(mut cmd: Command) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for stderr");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
        let stdout = child.stdout.take().unwrap();
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let (l, w) = (log.clone(), stdin.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            while let Some(value) = read_message(&mut r) {
                // Answer the server's requests so it never waits on us.
                if let (Some(id), Some(method)) = (value.get("id"), value.get("method")) {
                    let result = match method.as_str() {
                        Some("workspace/configuration") => {
                            let n = value["params"]["items"].as_array().map_or(0, Vec::len);
                            Value::Array(vec![Value::Null; n])
                        }
                        _ => Value::Null,
                    };
                    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                    let _ = w.lock().unwrap().write_all(&frame(&reply));
                    let _ = w.lock().unwrap().flush();
                }
                let (m, cv) = &*l;
                m.lock().unwrap().messages.push(Received {
                    at: Instant::now(),
                    value,
                });
                cv.notify_all();
            }
            let (m, cv) = &*l;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        Self {
            child,
            stdin,
            log,
            next_id: 0,
            stderr_path,
            _stderr_dir: dir,
        }
    }

    /// The server's stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Writes raw bytes (several framed messages at once, for bursts).
    pub fn write_raw(&self, bytes: &[u8]) {
        let mut w = self.stdin.lock().unwrap();
        w.write_all(bytes).expect("write to rmlx-lsp");
        w.flush().expect("flush to rmlx-lsp");
    }

    /// A framed notification, not sent.
    pub fn notification_bytes(method: &str, params: Value) -> Vec<u8> {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        frame(&msg)
    }

    /// Sends a notification.
    pub fn notify(&self, method: &str, params: Value) {
        self.write_raw(&Self::notification_bytes(method, params));
    }

    /// Sends a request and waits for its response (`Err` carries a JSON-RPC error).
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        // `params: null` is invalid JSON-RPC for requests without parameters: omit it.
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        self.write_raw(&frame(&msg));
        let from = 0;
        let msg = self.wait_for(from, Duration::from_secs(120), |v| {
            v.get("id") == Some(&json!(id)) && v.get("method").is_none()
        });
        match msg.value.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(msg.value.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Number of messages received so far (a mark for [`LspClient::wait_for`]).
    pub fn mark(&self) -> usize {
        self.log.0.lock().unwrap().messages.len()
    }

    /// Every message received since `mark`.
    pub fn since(&self, mark: usize) -> Vec<Received> {
        self.log.0.lock().unwrap().messages[mark..].to_vec()
    }

    /// The first message since `mark` that satisfies `pred`; panics after `timeout`.
    pub fn wait_for(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Received {
        self.try_wait_for(mark, timeout, pred).unwrap_or_else(|| {
            panic!(
                "no matching message from rmlx-lsp within {timeout:?}\nreceived since the mark:\n{}\n--- stderr ---\n{}",
                self.since(mark)
                    .iter()
                    .map(|m| m.value.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            )
        })
    }

    /// Like [`LspClient::wait_for`], `None` on timeout.
    pub fn try_wait_for(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut log = m.lock().unwrap();
        let mut seen = mark;
        loop {
            if let Some(r) = log.messages[seen..].iter().find(|r| pred(&r.value)) {
                return Some(r.clone());
            }
            seen = log.messages.len();
            let now = Instant::now();
            if now >= deadline || log.closed {
                return None;
            }
            log = cv.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// `publishDiagnostics` for `uri` since `mark` (with `version`, when given).
    pub fn wait_diagnostics(
        &self,
        mark: usize,
        uri: &str,
        version: Option<i64>,
        timeout: Duration,
    ) -> Received {
        self.wait_for(mark, timeout, |v| is_diagnostics(v, uri, version))
    }

    /// `initialize` + `initialized`, with `init_options` and the client capabilities the
    /// tests need (work-done progress, versioned document changes).
    pub fn initialize(&mut self, root: &Path, init_options: Value) -> Value {
        let root_uri = file_uri(root);
        let result = self
            .request(
                "initialize",
                json!({
                    "processId": std::process::id(),
                    "rootUri": root_uri,
                    "capabilities": {
                        "window": {"workDoneProgress": true},
                        "workspace": {"workspaceEdit": {"documentChanges": true}},
                        "textDocument": {"publishDiagnostics": {"relatedInformation": true, "versionSupport": true}}
                    },
                    "initializationOptions": init_options,
                }),
            )
            .unwrap_or_else(|e| panic!("initialize failed: {e}\n{}", self.stderr()));
        self.notify("initialized", json!({}));
        result
    }

    /// `textDocument/didOpen`.
    pub fn open(&self, uri: &str, language: &str, version: i64, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}}),
        );
    }

    /// A framed full-text `textDocument/didChange`, not sent.
    pub fn change_bytes(uri: &str, version: i64, text: &str) -> Vec<u8> {
        Self::notification_bytes(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
        )
    }

    /// `textDocument/didChange` with the full text.
    pub fn change(&self, uri: &str, version: i64, text: &str) {
        self.write_raw(&Self::change_bytes(uri, version, text));
    }

    /// `textDocument/didSave`.
    pub fn save(&self, uri: &str) {
        self.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": uri}}),
        );
    }

    /// The exit status, once the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for rmlx-lsp")
    }

    /// `shutdown` then `exit`; the exit status (the process must end within 30 s).
    pub fn shutdown_and_exit(mut self) -> ExitStatus {
        let r = self.request("shutdown", Value::Null);
        assert_eq!(r, Ok(Value::Null), "shutdown response\n{}", self.stderr());
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for rmlx-lsp") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("rmlx-lsp did not exit after `exit`\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LspClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Is `v` a `publishDiagnostics` for `uri` (and `version`, when given)?
pub fn is_diagnostics(v: &Value, uri: &str, version: Option<i64>) -> bool {
    v["method"] == "textDocument/publishDiagnostics"
        && v["params"]["uri"] == uri
        && version.is_none_or(|n| v["params"]["version"] == json!(n))
}

/// The `file:` URI of a path.
pub fn file_uri(p: &Path) -> String {
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let mut out = String::from("file://");
    for b in p.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
