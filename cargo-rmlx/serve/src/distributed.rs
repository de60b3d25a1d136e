//! `serve --hostfile` (or rmlx.toml's `[distributed]`): tensor-parallel serving. Rank 0 runs
//! the HTTP server as usual; each model version it loads is wrapped in a [`Leading`] network
//! that, before every forward pass, broadcasts a command to the other ranks, which run
//! [`follow`] instead of a server: the same pass on their shard of the same version. The
//! commands (small `u32` vectors broadcast from rank 0, [`Cmd`]):
//!
//! - `Load(version, path)`: load that model directory (rank 0 loads it too, then probes it:
//!   the probe's passes are forward commands like any other, so the probe gate covers every
//!   rank, and hot reload is a new version loaded beside the old one);
//! - `Forward(version, offset, ids)`: run `ids` on that version's cache, which starts afresh
//!   at offset 0 and must otherwise stand at `offset` (a mismatch ends the follower: the ranks
//!   lost step);
//! - `Drop(version)`: a retired version; `Stop`: the server stops.
//!
//! Each command and the evaluation of its pass hold one lock on rank 0, so the passes of
//! several model threads (an old and a new version during a reload) reach the ranks one
//! whole pass at a time. The caches stay in step because a distributed server generates one
//! sequence at a time (`--max-batch 1`) without a prompt cache (set by the CLI, logged).
//!
//! A rank that dies (the launcher's watcher, or a collective that fails) takes every model out
//! of service for good: `/health` says `unavailable` with the dead rank's error, requests get
//! 503 with it, reloads fail with it; the server keeps answering until it is stopped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::Duration;

use mlx_rs::Array;
use tokio::sync::{mpsc::UnboundedSender, watch};

use super::registry::Registry;
use super::worker::{Event, JobError};
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::dist::Group;
use crate::engine::network::Network;
use crate::engine::{DtypePolicy, Model};
use crate::session::Session;
use crate::snapshot::Snapshot;

const CODE_DESYNC: Code = Code::Serve(code::Serve::DistributedDesync);

/// A command word (the first of every header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Load = 1,
    Forward = 2,
    Drop = 3,
    Stop = 4,
}

impl Cmd {
    fn from_word(w: u32) -> Option<Cmd> {
        [Cmd::Load, Cmd::Forward, Cmd::Drop, Cmd::Stop]
            .into_iter()
            .find(|c| *c as u32 == w)
    }
}

/// Header: command, version, and two command-specific words.
const HEADER: usize = 4;

/// Rank 0's side: the group and the lock that keeps whole passes together.
struct Leader {
    group: Group,
    lock: Mutex<()>,
}

static LEADER: OnceLock<Leader> = OnceLock::new();
static FAILED: OnceLock<Diagnostic> = OnceLock::new();
static REGISTRY: Mutex<Option<Weak<Registry>>> = Mutex::new(None);

/// Flips to `true` when a rank dies (requests in flight wait on it).
static DIED: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

fn leader() -> Option<&'static Leader> {
    LEADER.get()
}

impl Leader {
    /// The lock of one whole pass; the dead rank's error instead once one died (the thread
    /// holding the lock may then wait in a collective forever, so the wait is a poll).
    fn pass(&self) -> Result<MutexGuard<'_, ()>> {
        loop {
            if let Some(d) = failure() {
                return Err(d);
            }
            match self.lock.try_lock() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(e)) => return Ok(e.into_inner()),
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Broadcasts a header and its payload; a failure takes the server out of service.
    fn send(&self, cmd: Cmd, version: u64, words: [u32; 2], payload: &[u32]) -> Result<()> {
        if let Some(d) = failure() {
            return Err(d);
        }
        let header = [cmd as u32, version_word(version)?, words[0], words[1]];
        let sent = self.group.broadcast(&header).and_then(|_| {
            if payload.is_empty() {
                Ok(Vec::new())
            } else {
                self.group.broadcast(payload)
            }
        });
        sent.map(|_| ()).map_err(collective_failed)
    }
}

fn version_word(version: u64) -> Result<u32> {
    u32::try_from(version).map_err(|_| {
        Diagnostic::error(
            code::Serve::DistributedVersion,
            format!("model version {version} does not fit the ranks' protocol"),
        )
    })
}

/// Makes this process rank 0 of a distributed server over `group`.
pub fn lead(group: Group) {
    tracing::info!(
        ranks = group.size(),
        "distributed serving: rank 0 serves HTTP, the other ranks follow its passes"
    );
    let _ = LEADER.set(Leader {
        group,
        lock: Mutex::new(()),
    });
}

/// Whether this server runs over several ranks.
pub fn is_distributed() -> bool {
    leader().is_some()
}

/// Why the ranks can no longer run, once one died.
pub fn failure() -> Option<Diagnostic> {
    FAILED.get().cloned()
}

/// A collective failed on rank 0: most likely a rank died, which the launcher's watcher
/// names within a tenth of a second — wait that long for its error (it says which rank),
/// else take the models out of service with this one.
fn collective_failed(d: Diagnostic) -> Diagnostic {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while failure().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if failure().is_none() {
        rank_died(Diagnostic::error(
            code::Engine::DistRankDied,
            format!("a rank stopped answering: {}", d.message),
        ));
    }
    failure().unwrap_or(d)
}

/// Adds `distributed` to a `/health` body when the server runs over several ranks: their
/// number and `state` — `ok`, or `rank-died` with the error.
pub fn describe(body: &mut serde_json::Value) {
    let Some(l) = leader() else { return };
    body["distributed"] = match failure() {
        None => serde_json::json!({"ranks": l.group.size(), "state": "ok"}),
        Some(d) => serde_json::json!({
            "ranks": l.group.size(),
            "state": "rank-died",
            "error": {"code": d.code, "message": d.message},
        }),
    };
}

/// A rank died (the launcher's watcher calls this): every model goes out of service and
/// the requests in flight end with the error.
pub fn rank_died(d: Diagnostic) {
    if FAILED.set(d.clone()).is_ok() {
        tracing::error!("{}: {} — the models are out of service", d.code, d.message);
    }
    DIED.send_replace(true);
    let registry = REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(Weak::upgrade);
    if let (Some(r), Some(d)) = (registry, failure()) {
        r.out_of_service(&d);
    }
}

/// Ends the request behind `events` with the dead rank's error if a rank dies before the
/// request ends (its model thread may wait in a collective forever and never answer). Call
/// from the server's runtime.
pub fn end_on_rank_death(events: &UnboundedSender<Event>) {
    if !is_distributed() {
        return;
    }
    let events = events.clone();
    let mut died = DIED.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = events.closed() => {}
            Ok(_) = died.wait_for(|d| *d) => {
                if let Some(d) = failure() {
                    let _ = events.send(Event::Error(JobError::Internal(d)));
                }
            }
        }
    });
}

/// The registry a dead rank takes out of service (the server calls this once it exists).
pub fn attach(registry: &Arc<Registry>) {
    *REGISTRY.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(registry));
    if let Some(d) = failure() {
        registry.out_of_service(&d);
    }
}

/// Loads version `version` of `dir` for a model thread: on every rank when distributed (the
/// network then leads the others' passes), else here only.
pub fn load_session(dir: &Path, policy: DtypePolicy, version: u64) -> Result<Session> {
    let Some(l) = leader() else {
        return Session::load(dir, policy);
    };
    let path = dir.to_string_lossy().into_owned();
    if dir.to_str().is_none() {
        return Err(Diagnostic::error(
            code::Serve::DistributedPath,
            format!("{path}: the ranks need a UTF-8 path"),
        ));
    }
    let bytes: Vec<u32> = path.bytes().map(u32::from).collect();
    {
        let _pass = l.pass()?;
        l.send(Cmd::Load, version, [bytes.len() as u32, 0], &bytes)?;
    }
    let mut session = Session::load(dir, policy)?;
    session
        .model
        .net
        .wrap(|inner| Box::new(Leading { inner, version }));
    Ok(session)
}

/// Held by a model thread: when it ends, the other ranks free its version.
#[derive(Debug)]
pub struct Retire(pub u64);

impl Drop for Retire {
    fn drop(&mut self) {
        let Some(l) = leader() else { return };
        if let Err(d) = l
            .pass()
            .and_then(|_pass| l.send(Cmd::Drop, self.0, [0, 0], &[]))
        {
            tracing::debug!("cannot tell the ranks to drop v{}: {}", self.0, d.message);
        }
    }
}

/// The server stops: the other ranks end their loops.
pub fn stop() {
    if let Some(l) = leader() {
        if let Err(d) = l.pass().and_then(|_pass| l.send(Cmd::Stop, 0, [0, 0], &[])) {
            tracing::debug!("cannot stop the ranks: {}", d.message);
        }
    }
}

/// Rank 0's network: every pass is announced to the other ranks and evaluated under the
/// leader's lock (the residual stream is evaluated here, so all of the pass' collectives run
/// before another thread's command can be sent).
#[derive(Debug)]
struct Leading {
    inner: Box<dyn Network>,
    version: u64,
}

impl Network for Leading {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let l = leader().ok_or_else(|| {
            Diagnostic::error(
                code::Serve::DistributedNoGroup,
                "a distributed model runs without its group (internal error)",
            )
        })?;
        let words = host_ids(ids)?;
        let _pass = l.pass()?;
        let offset = u32::try_from(cache.offset).unwrap_or(u32::MAX);
        l.send(
            Cmd::Forward,
            self.version,
            [offset, words.len() as u32],
            &words,
        )?;
        let h = self.inner.hidden(ids, cache)?;
        h.eval().map_err(|e| collective_failed(e.into()))?;
        Ok(h)
    }

    fn logits(&self, hidden: &Array) -> Result<Array> {
        self.inner.logits(hidden)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        self.inner.cache_kinds()
    }
}

/// `ids` (`[1, L]` int32) on the host as broadcast words.
fn host_ids(ids: &Array) -> Result<Vec<u32>> {
    let ids = ids.as_dtype(mlx_rs::Dtype::Int32)?;
    ids.eval()?;
    Ok(ids.as_slice::<i32>().iter().map(|&t| t as u32).collect())
}

/// A rank other than 0 of a distributed server: runs rank 0's commands until it stops.
pub fn follow(group: Group, policy: DtypePolicy) -> Result<()> {
    tracing::info!(rank = group.rank(), "following rank 0's passes");
    let mut models: HashMap<u32, (Model, Option<Cache>)> = HashMap::new();
    loop {
        let header = group.broadcast(&[0; HEADER])?;
        let (version, a, b) = (header[1], header[2], header[3]);
        match Cmd::from_word(header[0]) {
            Some(Cmd::Load) => {
                let path = receive_path(&group, a)?;
                match Snapshot::open(Path::new(&path)).and_then(|s| Model::load(&s, policy)) {
                    Ok(m) => {
                        models.insert(version, (m, None));
                    }
                    // Rank 0 most likely fails the same way; a pass on it would end us.
                    Err(d) => tracing::warn!("v{version}: {}: {}", d.code, d.message),
                }
            }
            Some(Cmd::Forward) => {
                let ids = group.broadcast(&vec![0; b as usize])?;
                let (model, cache) = models.get_mut(&version).ok_or_else(|| {
                    desync(format!(
                        "rank 0 ran version {version}, which this rank lacks"
                    ))
                })?;
                follow_pass(model, cache, a as usize, &ids)?;
            }
            Some(Cmd::Drop) => {
                models.remove(&version);
            }
            Some(Cmd::Stop) => return Ok(()),
            None => return Err(desync(format!("unknown command word {}", header[0]))),
        }
    }
}

fn receive_path(group: &Group, len: u32) -> Result<String> {
    let words = group.broadcast(&vec![0; len as usize])?;
    let bytes: Vec<u8> = words.iter().map(|&w| w as u8).collect();
    String::from_utf8(bytes).map_err(|_| desync("a model path that is not UTF-8".into()))
}

/// One of rank 0's passes on this rank's shard: a fresh cache at offset 0, else the cache
/// must stand where rank 0's does.
fn follow_pass(model: &Model, cache: &mut Option<Cache>, offset: usize, ids: &[u32]) -> Result<()> {
    if offset == 0 {
        *cache = Some(model.net.new_cache());
    }
    let cache = cache
        .as_mut()
        .filter(|c| c.offset == offset)
        .ok_or_else(|| {
            desync(format!(
                "rank 0's cache stands at {offset}, this rank's does not"
            ))
        })?;
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
    model.net.hidden(&input, cache)?.eval()?;
    Ok(())
}

fn desync(what: String) -> Diagnostic {
    Diagnostic::error(CODE_DESYNC, format!("the ranks lost step: {what}"))
        .with_help("a distributed server generates one sequence at a time; report this as a bug")
}
