//! Starting a tensor-parallel run (the engine side is `engine::dist`): the [`hostfile`] in
//! MLX's formats and the [`launch`]er that starts the other ranks (this binary again, locally
//! or over ssh, as `mlx.launch` does) and watches them. [`join`] is what a front-end calls:
//! a process started as a rank (`MLX_RANK` set, by our launcher or by `mlx.launch`) joins its
//! group; a process given a hostfile and no rank becomes rank 0 and launches the others.
//! Rank 0 prints; the other ranks run the same command with their stdout discarded, in
//! lockstep (every collective is in the model's forward pass, and greedy or seeded sampling of
//! the identical summed logits picks the same tokens on every rank).

pub mod hostfile;
pub mod launch;

use std::path::Path;

use crate::diagnostic::Result;
use crate::engine::dist;

/// The environment variable naming the backend for ranks we start (`ring` by default).
pub const BACKEND_ENV: &str = "RMLX_DIST_BACKEND";

/// This process' part in a run, as [`join`] leaves it.
#[derive(Debug)]
pub enum Role {
    /// No hostfile and not started as a rank: one process.
    Single,
    /// A rank of a group someone else started (our launcher or `mlx.launch`).
    Rank(dist::Group),
    /// Rank 0 with the ranks it launched.
    Launcher(launch::Ranks),
}

impl Role {
    /// Whether this process is one of several ranks.
    pub fn is_distributed(&self) -> bool {
        !matches!(self, Role::Single)
    }

    /// The group this process joined, if any.
    pub fn group(&self) -> Option<dist::Group> {
        match self {
            Role::Single => None,
            Role::Rank(g) => Some(*g),
            Role::Launcher(ranks) => ranks.group(),
        }
    }

    /// Waits for launched ranks to finish (they run the same steps) and returns `code`, or
    /// the error of a rank that failed.
    pub fn finish(self, code: u8) -> Result<u8> {
        match self {
            Role::Launcher(ranks) => ranks.finish().map(|()| code),
            Role::Single | Role::Rank(_) => Ok(code),
        }
    }
}

/// Joins or starts the run this process belongs to (see the module docs). `on_rank_failure`
/// is called (on a watcher thread) when a launched rank dies; it should report and exit.
pub fn join(
    hostfile: Option<&Path>,
    on_rank_failure: fn(crate::diagnostic::Diagnostic),
) -> Result<Role> {
    if std::env::var_os("MLX_RANK").is_some() {
        let backend = std::env::var(BACKEND_ENV).unwrap_or_else(|_| "ring".into());
        let group = dist::init(&backend, dist::connect_timeout())?;
        if group.rank() > 0 {
            launch::discard_stdout();
        }
        return Ok(Role::Rank(group));
    }
    let Some(path) = hostfile else {
        return Ok(Role::Single);
    };
    let file = hostfile::Hostfile::read(path)?;
    if file.hosts.len() < 2 {
        tracing::info!("{}: one host; running in one process", path.display());
        return Ok(Role::Single);
    }
    launch::Ranks::start(&file, on_rank_failure).map(Role::Launcher)
}
