//! The process' place in a tensor-parallel run: the MLX distributed [`Group`] it joined (one
//! per process, started once by [`init`] from the environment MLX's backend reads — `ring`:
//! `MLX_RANK` and `MLX_HOSTFILE`; `nccl`: `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP`,
//! `NCCL_PORT` — with a bounded wait for the peers), its [`Shard`] (rank, size; size 1 when no
//! group was started, and every collective is then the identity), and the collectives the
//! engine and the follower ranks use: [`Group::all_sum`], [`Group::all_gather`] and
//! [`Group::broadcast`] of small host values from rank 0.

use std::sync::OnceLock;
use std::time::Duration;

use mlx_rs::{Array, Dtype};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::mlx::ffi::{self, DistGroup};

/// This process' rank among `size` tensor-parallel processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Rank, `0..size`.
    pub rank: usize,
    /// Number of ranks (1: no tensor parallelism).
    pub size: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self::SINGLE
    }
}

impl Shard {
    /// One process holding the whole model.
    pub const SINGLE: Shard = Shard { rank: 0, size: 1 };

    /// The shard of this process: its group's rank and size once [`init`] ran, else
    /// [`Shard::SINGLE`].
    pub fn current() -> Shard {
        GROUP.get().map_or(Shard::SINGLE, |g| Shard {
            rank: g.rank,
            size: g.size,
        })
    }

    /// Whether this is a single-process run.
    pub fn is_single(self) -> bool {
        self.size <= 1
    }
}

/// An MLX distributed group this process belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    raw: DistGroup,
    rank: usize,
    size: usize,
}

static GROUP: OnceLock<Group> = OnceLock::new();

/// How long [`init`] waits for every peer to connect, unless `RMLX_DIST_TIMEOUT_S` says
/// otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The connect timeout: `RMLX_DIST_TIMEOUT_S` (seconds) or [`DEFAULT_CONNECT_TIMEOUT`].
pub fn connect_timeout() -> Duration {
    std::env::var("RMLX_DIST_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs_f64)
}

/// Starts this process' group on `backend` from the environment the backend reads, waiting at
/// most `timeout` for the peers (MLX's ring backend waits for a peer that never comes
/// forever; the wait runs on its own thread and is abandoned — the process is expected to
/// exit with the error). Starting twice returns the first group.
pub fn init(backend: &str, timeout: Duration) -> Result<Group> {
    if let Some(g) = GROUP.get() {
        return Ok(*g);
    }
    // MLX errors raised inside the group's start must reach mlx-rs' handler, not mlx-c's
    // default one that exits: any mlx-rs operation installs it.
    let zero = Array::from_f32(0.0);
    let _ = mlx_rs::ops::add(&zero, &zero);
    let (tx, rx) = std::sync::mpsc::channel();
    let name = backend.to_string();
    std::thread::Builder::new()
        .name("rmlx-dist-init".into())
        .spawn(move || {
            let _ = tx.send(DistGroup::init(&name));
        })
        .map_err(|e| {
            Diagnostic::error(
                code::Engine::DistInit,
                format!("cannot start a thread: {e}"),
            )
        })?;
    let raw =
        match rx.recv_timeout(timeout) {
            Ok(r) => r?,
            Err(_) => return Err(Diagnostic::error(
                code::Engine::DistUnreachable,
                format!(
                "rank {} could not connect to every peer of the `{backend}` group within {:.0} s",
                std::env::var("MLX_RANK").unwrap_or_else(|_| "?".into()),
                timeout.as_secs_f64()
            ),
            )
            .with_help(
                "check that every rank was started, that the hostfile's addresses are reachable \
                 from each host and that the ports are free (RMLX_DIST_TIMEOUT_S sets the wait)",
            )),
        };
    let group = Group {
        raw,
        rank: raw.rank(),
        size: raw.size(),
    };
    tracing::info!(
        rank = group.rank,
        size = group.size,
        backend,
        "joined the distributed group"
    );
    Ok(*GROUP.get_or_init(|| group))
}

/// The group [`init`] started, if any.
pub fn group() -> Option<Group> {
    GROUP.get().copied()
}

impl Group {
    /// This process' rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Element-wise sum of `x` over the ranks (lazy).
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        ffi::all_sum(x, self.raw)
    }

    /// Every rank's `x` concatenated along axis 0, in rank order (lazy).
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        ffi::all_gather(x, self.raw)
    }

    /// Rank 0's `values` on every rank (the others pass a slice of the same length, whose
    /// contents are ignored): one sum where every other rank contributes zeros.
    pub fn broadcast(&self, values: &[u32]) -> Result<Vec<u32>> {
        let mine: Vec<u32> = if self.rank == 0 {
            values.to_vec()
        } else {
            vec![0; values.len()]
        };
        let sum = self
            .all_sum(&Array::from_slice(&mine, &[mine.len() as i32]))?
            .as_dtype(Dtype::Uint32)?;
        sum.eval()?;
        Ok(sum.as_slice::<u32>().to_vec())
    }
}

/// `x` summed over the ranks of this process' group; `x` itself when there is none.
pub fn all_sum(x: Array) -> Result<Array> {
    match group() {
        Some(g) if g.size > 1 => g.all_sum(&x),
        _ => Ok(x),
    }
}
