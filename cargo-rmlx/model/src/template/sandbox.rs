//! The template sandbox: renders run in worker processes with an address-space limit and
//! a wall-clock deadline, so that what no in-process check can bound — minijinja's own
//! `~` and `+` building ever larger strings, a value too big to print, a stack that
//! overflows anyway — ends a worker, never the program (`serve`, the language server,
//! `render`). The failure becomes an `rmlx::template::resources` diagnostic naming the
//! template's file; the next render starts a fresh worker.
//!
//! A worker is the running executable re-executed with [`WORKER_ARG`]; front-ends opt in
//! with one call to [`init`] at the top of `main` (which also runs the worker loop when
//! the process is one). Library callers that never call it render in-process, through the
//! same function ([`super::ChatTemplate::render`] → `render_vars`), with every in-process
//! limit still applied. `RMLX_TEMPLATE_SANDBOX=off` turns the sandbox off (logged).
//!
//! Protocol: one JSON object per line each way. A request carries the template's key (a
//! hash of its text and options), its text when the worker may not have it compiled yet,
//! and the render variables; the answer is `{"ok": text}`, `{"err": facts}` (a located
//! template error, see [`super::ErrorFacts`]) or `{"need_source": true}`. Workers keep up
//! to [`CACHED_TEMPLATES`] compiled templates and are reused across renders.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{ChatTemplate, ErrorFacts, TemplateOptions, TemplateOrigin};
use crate::diagnostic::Result;

/// The hidden first argument that makes the executable a template worker.
pub const WORKER_ARG: &str = "--rmlx-template-worker";

/// Memory a worker may use beyond what it had when it started (libraries loaded): 1 GiB.
pub const WORKER_MEMORY_BYTES: u64 = 1 << 30;

/// Longest one render may take in a worker.
pub const RENDER_DEADLINE: Duration = Duration::from_secs(10);

/// Compiled templates a worker keeps.
pub const CACHED_TEMPLATES: usize = 16;

static ENABLED: AtomicBool = AtomicBool::new(false);
static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// Front-end hook, first thing in `main`: when this process was started as a template
/// worker, serves renders on stdin/stdout and exits; otherwise enables the sandbox for
/// every render of this process.
pub fn init() {
    if std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG) {
        std::process::exit(worker_main());
    }
    ENABLED.store(true, Ordering::SeqCst);
}

/// The worker pool when the sandbox is on (decided, and logged, at the first render).
fn pool() -> Option<&'static Pool> {
    if !ENABLED.load(Ordering::SeqCst) {
        return None;
    }
    POOL.get_or_init(|| {
        let off = std::env::var("RMLX_TEMPLATE_SANDBOX").is_ok_and(|v| v == "off" || v == "0");
        if off {
            warn!("RMLX_TEMPLATE_SANDBOX=off: chat templates render in this process, without the memory limit");
            return None;
        }
        let max = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        debug!(workers = max, "template sandbox on");
        Some(Pool {
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
            max,
        })
    })
    .as_ref()
}

/// Renders `vars` with `t` in a worker when the sandbox is on; `None` when it is off.
pub(crate) fn render(t: &ChatTemplate, vars: &serde_json::Value) -> Option<Result<String>> {
    let pool = pool()?;
    Some(pool.render(t, Some(vars)))
}

/// Compiles `t`'s text in a worker first when the sandbox is on: minijinja folds constant
/// expressions while compiling (`('x' * 10**8) ~ …`), which can need as much memory as a
/// render. `None` when the sandbox is off.
pub(crate) fn compile(t: &ChatTemplate) -> Option<Result<()>> {
    let pool = pool()?;
    Some(pool.render(t, None).map(|_| ()))
}

#[derive(Serialize, Deserialize)]
struct Request {
    key: String,
    source: Option<String>,
    fuel: Option<u64>,
    now: Option<i64>,
    /// `None`: only compile.
    vars: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(String),
    Err(ErrorFacts),
    NeedSource(bool),
}

struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Worker>,
    /// Workers alive (idle or busy).
    live: usize,
}

impl Pool {
    fn render(&self, t: &ChatTemplate, vars: Option<&serde_json::Value>) -> Result<String> {
        let mut worker = self.take(t)?;
        match worker.render(t, vars) {
            Ok(answer) => {
                self.give_back(worker);
                match answer {
                    Answer::Ok(text) => Ok(text),
                    Answer::Err(facts) => Err(t.diagnostic_from(facts)),
                    Answer::NeedSource(_) => {
                        Err(t
                            .resource_error("the template sandbox answered out of protocol".into()))
                    }
                }
            }
            Err(failure) => {
                let why = worker.end(failure);
                self.retire();
                Err(t.resource_error(why))
            }
        }
    }

    /// An idle worker, a new one while fewer than `max` live, else waits for one.
    fn take(&self, t: &ChatTemplate) -> Result<Worker> {
        let mut state = lock(&self.state);
        loop {
            if let Some(w) = state.idle.pop() {
                return Ok(w);
            }
            if state.live < self.max {
                state.live += 1;
                drop(state);
                return Worker::spawn().map_err(|e| {
                    self.retire();
                    t.resource_error(format!("cannot start the template sandbox: {e}"))
                });
            }
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn give_back(&self, w: Worker) {
        lock(&self.state).idle.push(w);
        self.freed.notify_one();
    }

    fn retire(&self) {
        let mut state = lock(&self.state);
        state.live = state.live.saturating_sub(1);
        drop(state);
        self.freed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool's state stays consistent across a panic elsewhere: keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a worker could not answer.
enum Failure {
    Io(std::io::Error),
    Deadline,
    Garbled(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    buf: Vec<u8>,
    /// Template keys this worker has been sent.
    known: HashSet<String>,
}

impl Worker {
    fn spawn() -> std::io::Result<Worker> {
        let exe = if cfg!(target_os = "linux") {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut child = Command::new(exe)
            .arg(WORKER_ARG)
            .env_remove("RUST_LOG")
            // A failed allocation would print a backtrace, slowly, for nobody.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("worker pipes missing"));
        };
        debug!(pid = child.id(), "template worker started");
        Ok(Worker {
            child,
            stdin,
            stdout,
            buf: Vec::new(),
            known: HashSet::new(),
        })
    }

    fn render(
        &mut self,
        t: &ChatTemplate,
        vars: Option<&serde_json::Value>,
    ) -> std::result::Result<Answer, Failure> {
        let deadline = Instant::now() + RENDER_DEADLINE;
        let mut req = Request {
            key: t.key.to_string(),
            source: None,
            fuel: t.opts.fuel,
            now: t.opts.now,
            vars: vars.cloned(),
        };
        if !self.known.contains(&req.key) {
            req.source = Some(t.source().to_string());
        }
        let mut answer = self.exchange(&req, deadline)?;
        if matches!(answer, Answer::NeedSource(_)) && req.source.is_none() {
            req.source = Some(t.source().to_string());
            answer = self.exchange(&req, deadline)?;
        }
        self.known.insert(req.key);
        Ok(answer)
    }

    fn exchange(
        &mut self,
        req: &Request,
        deadline: Instant,
    ) -> std::result::Result<Answer, Failure> {
        let mut line = serde_json::to_vec(req).map_err(|e| Failure::Garbled(e.to_string()))?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush())
            .map_err(Failure::Io)?;
        let answer = self.read_line(deadline)?;
        serde_json::from_slice(&answer).map_err(|e| Failure::Garbled(e.to_string()))
    }

    /// One line from the worker, waiting at most until `deadline`.
    fn read_line(&mut self, deadline: Instant) -> std::result::Result<Vec<u8>, Failure> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(nl + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.stdout, left).map_err(Failure::Io)? {
                return Err(Failure::Deadline);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stdout.read(&mut chunk) {
                Ok(0) => {
                    return Err(Failure::Io(std::io::Error::from(
                        std::io::ErrorKind::UnexpectedEof,
                    )))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Ends the worker after a failure; says what happened, for the diagnostic.
    fn end(mut self, failure: Failure) -> String {
        if matches!(failure, Failure::Deadline) {
            let _ = self.child.kill();
        }
        drop(self.stdin);
        let status = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        // The line that says why (Rust's allocation-failure or stack-overflow message),
        // else the last one.
        let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
        let last = lines()
            .find(|l| l.contains("memory allocation") || l.contains("overflowed its stack"))
            .or_else(|| lines().next_back())
            .unwrap_or("")
            .to_string();
        let how = match (&failure, &status) {
            (Failure::Deadline, _) => format!(
                "the render did not finish within {} s and was stopped",
                RENDER_DEADLINE.as_secs()
            ),
            (_, Ok(st)) => describe_exit(st, &last),
            (Failure::Io(e), Err(_)) => format!("the render process failed: {e}"),
            (Failure::Garbled(e), Err(_)) => format!("the render process answered garbage: {e}"),
        };
        warn!(pid = self.child.id(), "template worker ended: {how}");
        how
    }
}

fn describe_exit(st: &std::process::ExitStatus, last: &str) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = st.signal() {
            let what = if last.contains("overflowed its stack") {
                "overflowed its stack".to_string()
            } else if last.contains("memory allocation") {
                format!(
                    "ran out of memory (limit {} MiB)",
                    WORKER_MEMORY_BYTES >> 20
                )
            } else {
                format!("was killed by signal {sig}")
            };
            return if last.is_empty() {
                format!("the render {what}")
            } else {
                format!("the render {what}: {last}")
            };
        }
    }
    format!("the render process exited ({st}): {last}")
}

/// Waits until `fd` has data (or EOF) for at most `timeout`.
#[cfg(unix)]
fn readable(out: &ChildStdout, timeout: Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: out.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(unix))]
fn readable(_out: &ChildStdout, _timeout: Duration) -> std::io::Result<bool> {
    Ok(true)
}

/// The worker: limits itself, then answers requests until stdin closes.
fn worker_main() -> i32 {
    limit_memory();
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut cache: HashMap<String, ChatTemplate> = HashMap::new();
    for line in stdin.lines() {
        let Ok(line) = line else { return 1 };
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(&mut cache, req),
            Err(e) => Answer::Err(ErrorFacts::internal(format!("bad sandbox request: {e}"))),
        };
        let Ok(mut out) = serde_json::to_vec(&answer) else {
            return 1;
        };
        out.push(b'\n');
        if stdout
            .write_all(&out)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return 1;
        }
    }
    0
}

fn answer(cache: &mut HashMap<String, ChatTemplate>, req: Request) -> Answer {
    if !cache.contains_key(&req.key) {
        let Some(source) = req.source else {
            return Answer::NeedSource(true);
        };
        if cache.len() >= CACHED_TEMPLATES {
            cache.clear();
        }
        let opts = TemplateOptions {
            fuel: req.fuel,
            now: req.now,
        };
        let origin = TemplateOrigin::Inline {
            name: "sandboxed".into(),
        };
        match ChatTemplate::compile_facts(source, origin, &opts) {
            Ok(t) => {
                cache.insert(req.key.clone(), t);
            }
            Err(facts) => return Answer::Err(facts),
        }
    }
    let Some(t) = cache.get(&req.key) else {
        return Answer::NeedSource(true);
    };
    let Some(vars) = &req.vars else {
        return Answer::Ok(String::new());
    };
    match t.render_here(vars) {
        Ok(text) => Answer::Ok(text),
        Err(facts) => Answer::Err(facts),
    }
}

/// RLIMIT_AS = what the worker has mapped now + [`WORKER_MEMORY_BYTES`] (never above an
/// inherited limit), and no core files.
#[cfg(unix)]
fn limit_memory() {
    let base = current_address_space().unwrap_or(0);
    let want = base.saturating_add(WORKER_MEMORY_BYTES);
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to rlimit structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_AS, &mut cur) == 0 {
            let soft = (want as libc::rlim_t).min(cur.rlim_max);
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: cur.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
        }
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

#[cfg(not(unix))]
fn limit_memory() {}

/// Bytes of address space mapped now (Linux: /proc/self/statm).
fn current_address_space() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
