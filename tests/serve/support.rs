//! Machinery of the server tests: the real test model (SmolLM2-135M-Instruct converted by
//! the binary under test with `--keep-quantized`, from `rmlx-test-support`, whose paths,
//! processes and scripts are re-exported here), a server process on a free loopback port,
//! and a real HTTP client (ureq).
//!
//! Nothing here skips: when the model cannot be obtained, the test fails and says why.
//! Every wait is bounded; server processes die with the test process (PR_SET_PDEATHSIG).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use rmlx_test_support::{
    converted, copy_model_dir, rmlx_command, run_script, venv_python, Variant,
};
pub use rmlx_test_support::{models_dir, repo_root, run_command};

/// The name the test model is served under (its directory's name).
pub const MODEL_NAME: &str = "smollm2-q4";
pub const QWEN_GGUF: &str = "qwen2.5-coder-0.5b/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
/// The name the shared Qwen2.5 build is served under.
pub const QWEN_NAME: &str = "qwen-serve-q4";
pub const CAPITAL_QUESTION: &str = "What is the capital of France?";

/// How long a server may take to load and probe its model.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long fetching or building a model may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest single HTTP request in these tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cargo-rmlx"))
}

/// A fresh scratch directory under `target/e2e-tmp` (removed when dropped).
pub fn scratch_dir() -> tempfile::TempDir {
    rmlx_test_support::scratch_dir("e2e-tmp", "serve-")
}

/// The SmolLM2 model directory converted by the binary under test with `--keep-quantized`
/// (shared with the e2e tests; see `rmlx_test_support::smollm2`). Never write into it.
pub fn model_dir() -> PathBuf {
    converted(bin(), Variant::Q4)
}

/// A copy of the model directory in `into` (weights hard-linked), for tests that edit it.
pub fn copy_model(into: &Path) -> PathBuf {
    copy_model_dir(&model_dir(), &into.join(MODEL_NAME), &[])
}

// ----------------------------------------------------------------------------------------
// The server process

/// A running `cargo-rmlx serve`, killed when dropped.
pub struct Server {
    pid: u32,
    child: Mutex<Option<Child>>,
    pub base: String,
    log: PathBuf,
    _logfile: tempfile::NamedTempFile,
    pub api_key: Option<String>,
}

impl Server {
    /// Starts `cargo-rmlx rmlx serve --port 0 ARGS…` and waits until it listens.
    pub fn start(args: &[String], cwd: &Path) -> Server {
        Self::start_with_env(args, cwd, &[])
    }

    /// [`Self::start`] with `env` set in the server's environment (the engine's switches,
    /// such as `RMLX_HOST_KERNELS=0`), whatever the test process' environment holds.
    pub fn start_with_env(args: &[String], cwd: &Path, env: &[(&str, &str)]) -> Server {
        let logfile = tempfile::NamedTempFile::new().expect("log file");
        let log = logfile.path().to_path_buf();
        let out = logfile.reopen().expect("reopen log");
        let err = logfile.reopen().expect("reopen log");
        let mut cmd = Command::new(bin());
        cmd.args(["rmlx", "serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .env("CARGO_TERM_COLOR", "never")
            .env_remove("RMLX_API_KEY")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that spawned it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // PR_SET_PDEATHSIG follows the spawning *thread*: spawn from one that lives as long
        // as the test process.
        let child = spawner().spawn(cmd);
        let pid = child.id();
        let api_key = args
            .iter()
            .position(|a| a == "--api-key")
            .and_then(|i| args.get(i + 1).cloned());
        let mut server = Server {
            pid,
            child: Mutex::new(Some(child)),
            base: String::new(),
            log,
            _logfile: logfile,
            api_key,
        };
        let start = Instant::now();
        loop {
            let text = server.log();
            if let Some(i) = text.find("Listening on http://") {
                let rest = &text[i + "Listening on ".len()..];
                let url = rest.split_whitespace().next().unwrap_or_default();
                server.base = url.to_string();
                break;
            }
            if let Some(status) = server.exited() {
                panic!("the server exited ({status}) before listening\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the server did not listen within 120 s\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts a server for the test model with `extra` arguments and waits until it is ready.
    pub fn model(extra: &[&str]) -> Server {
        Self::model_with_env(extra, &[])
    }

    /// [`Self::model`] with `env` set in the server's environment (see
    /// [`Self::start_with_env`]).
    pub fn model_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec![model_dir().display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let s = Server::start_with_env(&args, &repo_root(), env);
        s.wait_ready();
        s
    }

    /// Waits until `/health` answers 200.
    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let h = self.get("/health");
            if h.status == 200 {
                return;
            }
            assert!(
                h.json["status"] != "unavailable",
                "no model became ready: {}\n{}",
                h.text,
                self.log()
            );
            if let Some(status) = self.exited() {
                panic!("the server exited ({status})\n{}", self.log());
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "the server was not ready within {READY_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&self) -> Option<String> {
        let mut g = self.child.lock().unwrap();
        let child = g.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&self, within: Duration) -> Option<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            let mut g = self.child.lock().unwrap();
            if let Some(child) = g.as_mut() {
                if let Ok(Some(s)) = child.try_wait() {
                    return Some(s);
                }
            }
            drop(g);
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds the API key when the server needs one.
    pub fn auth(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        match &self.api_key {
            Some(k) => req.header("authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    pub fn auth_get(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match &self.api_key {
            Some(k) => req.header("authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    /// POST a JSON body; (status, headers, parsed body).
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        let req = self.auth(agent().post(&self.url(path)));
        reply(
            req.header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> Reply {
        let req = self.auth(agent().post(&self.url(path)));
        reply(
            req.header("content-type", "application/json")
                .send(&body[..]),
        )
    }

    /// GET; (status, headers, parsed body or the text as a JSON string).
    pub fn get(&self, path: &str) -> Reply {
        reply(self.auth_get(agent().get(&self.url(path))).call())
    }

    /// The value of one sample in `/metrics` (sum over label sets containing `labels`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").text;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|x| l.contains(x))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

type SpawnReq = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A thread that lives as long as the test process and spawns the servers.
struct Spawner(Mutex<mpsc::Sender<SpawnReq>>);

impl Spawner {
    fn spawn(&self, cmd: Command) -> Child {
        let (tx, rx) = mpsc::channel();
        self.0
            .lock()
            .unwrap()
            .send((cmd, tx))
            .expect("spawner thread");
        rx.recv()
            .expect("spawner reply")
            .unwrap_or_else(|e| panic!("cannot start the server: {e}"))
    }
}

fn spawner() -> &'static Spawner {
    static S: OnceLock<Spawner> = OnceLock::new();
    S.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // Keep this thread (the children's parent for PDEATHSIG) alive until exit.
            loop {
                std::thread::park();
            }
        });
        Spawner(Mutex::new(tx))
    })
}

// ----------------------------------------------------------------------------------------
// HTTP

pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build(),
    )
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

/// An open server-sent-events response, read event by event.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<Box<dyn Read + Send>>,
}

impl EventStream {
    pub fn open(server: &Server, path: &str, body: &Value) -> EventStream {
        let req = server.auth(agent().post(&server.url(path)));
        let r = req
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let reader: Box<dyn Read + Send> = Box::new(r.into_body().into_reader());
        EventStream {
            status,
            headers,
            reader: BufReader::new(reader),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next `data:` payload; `None` at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).ok()?;
            if n == 0 {
                return None;
            }
            if let Some(d) = line.trim_end().strip_prefix("data:") {
                return Some(d.trim_start().to_string());
            }
        }
    }

    /// All remaining payloads.
    pub fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next_data() {
            out.push(d);
        }
        out
    }
}

/// A one-message chat request.
pub fn chat_body(content: &str, max_tokens: usize) -> Value {
    serde_json::json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    })
}

/// Decode passes so far that ran more than one sequence (from the batch-size histogram).
pub fn multi_sequence_passes(s: &Server) -> f64 {
    s.metric("rmlx_batch_size_count", &[]) - s.metric("rmlx_batch_size_bucket", &["le=\"1\""])
}

/// The python of the venv with the pinned `openai` package (`tests/serve/openai-venv.sh`,
/// which installs it on first use).
pub fn openai_python() -> String {
    venv_python("tests/serve/openai-venv.sh", "the pinned `openai` package")
        .display()
        .to_string()
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `serve DIR --watch --debounce-ms 300`, started and ready.
pub fn start_watching(dir: &Path, scratch: &Path) -> Server {
    let args = vec![
        dir.display().to_string(),
        "--watch".into(),
        "--debounce-ms".into(),
        "300".into(),
    ];
    let s = Server::start(&args, scratch);
    s.wait_ready();
    s
}

/// Qwen2.5-Coder-0.5B-Instruct built (4-bit, group 64) by the binary under test from its
/// GGUF in a workspace under `target/test-models/serve-qwen/` (`cargo rmlx build` keeps it
/// fresh by fingerprint).
pub fn qwen_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(build_qwen)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_qwen() -> Result<PathBuf, String> {
    let gguf = models_dir().join(QWEN_GGUF);
    if !gguf.is_file() {
        let run = run_script("scripts/fetch-models.sh", &["--all"], SETUP_TIMEOUT);
        if !run.success() || !gguf.is_file() {
            return Err(format!(
                "the Qwen2.5 test model is not available\n{}",
                run.describe()
            ));
        }
    }
    let ws = models_dir().join("serve-qwen");
    fs::create_dir_all(&ws).map_err(|e| e.to_string())?;
    let manifest = format!(
        "[models.{QWEN_NAME}]\nsource = \"{}\"\nquantize = {{ mode = \"affine\", bits = 4, \
         group-size = 64 }}\n",
        gguf.display()
    );
    fs::write(ws.join("rmlx.toml"), manifest).map_err(|e| e.to_string())?;
    let mut build = rmlx_command(bin());
    build.current_dir(&ws).arg("build");
    let run = run_command(build, SETUP_TIMEOUT);
    if !run.success() {
        return Err(format!(
            "building the Qwen2.5 test model failed\n{}",
            run.describe()
        ));
    }
    Ok(ws.join("target").join("rmlx").join(QWEN_NAME))
}
