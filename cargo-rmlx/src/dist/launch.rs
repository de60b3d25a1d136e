//! The launcher: rank 0 starts ranks 1… of a [`Hostfile`] — this binary with the same
//! arguments, locally as child processes or over `ssh` with a shell script that sets the
//! environment (the ring hostfile written to a temporary file there), as `mlx.launch` does —
//! then joins the group itself. A watcher thread reports a rank that dies (non-zero exit or
//! signal; a rank that exits successfully is done) within a tenth of a second; local ranks die with their launcher
//! (`PR_SET_PDEATHSIG`), and every rank notices a lost peer at its next collective.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::hostfile::{Host, Hostfile};
use super::BACKEND_ENV;
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::engine::dist;

/// How long [`Ranks::finish`] waits for the other ranks after rank 0 is done.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

const CODE_DIED: Code = Code::Engine(code::Engine::DistRankDied);

/// The ranks rank 0 launched, and the group it joined with them.
#[derive(Debug)]
pub struct Ranks {
    children: Arc<Mutex<Vec<(usize, Child)>>>,
    finishing: Arc<AtomicBool>,
    ring_file: Option<PathBuf>,
    group: Option<dist::Group>,
}

impl Ranks {
    /// Starts ranks `1..` of `file`, then joins the group as rank 0. `on_failure` runs on the
    /// watcher thread when a rank dies before [`Self::finish`].
    pub fn start(file: &Hostfile, on_failure: fn(Diagnostic)) -> Result<Self> {
        let backend = file
            .backend
            .clone()
            .or_else(|| std::env::var(BACKEND_ENV).ok())
            .unwrap_or_else(|| "ring".into());
        let ring_json = file.ring_json();
        let ring_file =
            std::env::temp_dir().join(format!("rmlx-hosts-{}.json", std::process::id()));
        std::fs::write(&ring_file, &ring_json)
            .map_err(|e| Diagnostic::io(code::Dist::Launch, "cannot write", &ring_file, &e))?;
        let mut env: Vec<(String, String)> = file.envs.clone();
        env.push((BACKEND_ENV.into(), backend.clone()));
        env.extend(nccl_env(file, &backend));
        let mut ranks = Self {
            children: Arc::new(Mutex::new(Vec::new())),
            finishing: Arc::new(AtomicBool::new(false)),
            ring_file: Some(ring_file.clone()),
            group: None,
        };
        for (rank, host) in file.hosts.iter().enumerate().skip(1) {
            let child = spawn_rank(rank, host, &env, &ring_file, &ring_json)?;
            tracing::info!(rank, pid = child.id(), host = ?host.ssh, "started rank");
            ranks.lock().push((rank, child));
        }
        for (k, v) in &env {
            std::env::set_var(k, v);
        }
        std::env::set_var("MLX_HOSTFILE", &ring_file);
        std::env::set_var("MLX_RANK", "0");
        ranks.watch(on_failure);
        ranks.group = Some(dist::init(&backend, dist::connect_timeout())?);
        Ok(ranks)
    }

    /// The group rank 0 joined.
    pub fn group(&self) -> Option<dist::Group> {
        self.group
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Child)>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watcher thread: a rank that exits before `finish` is a failure of the run.
    fn watch(&self, on_failure: fn(Diagnostic)) {
        let (children, finishing) = (self.children.clone(), self.finishing.clone());
        let spawned = std::thread::Builder::new()
            .name("rmlx-dist-watch".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                if finishing.load(Ordering::SeqCst) {
                    return;
                }
                let mut guard = children.lock().unwrap_or_else(PoisonError::into_inner);
                let exited = guard
                    .iter_mut()
                    .find_map(|(rank, c)| c.try_wait().ok().flatten().map(|s| (*rank, s)));
                // A rank that exits successfully has done its part (its last collective was
                // also rank 0's); `finish` may not have been called yet.
                if let Some((rank, _)) = exited.filter(|(_, s)| s.success()) {
                    guard.retain(|(r, _)| *r != rank);
                    continue;
                }
                if let Some((rank, status)) = exited {
                    kill_all(&mut guard);
                    drop(guard);
                    on_failure(died(rank, status));
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot watch the ranks ({e}); a dead rank is noticed at the next collective only"
            );
        }
    }

    /// Waits (bounded) for the other ranks to exit after rank 0's work is done.
    pub fn finish(self) -> Result<()> {
        self.finishing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + FINISH_TIMEOUT;
        let mut children = std::mem::take(&mut *self.lock());
        for (rank, child) in &mut children {
            loop {
                match child.try_wait() {
                    Ok(Some(s)) if s.success() => break,
                    Ok(Some(s)) => return Err(died(*rank, s)),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        return Err(Diagnostic::error(
                            CODE_DIED,
                            format!(
                                "rank {rank} did not finish within {} s of rank 0",
                                FINISH_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        kill_all(&mut self.lock());
        if let Some(f) = self.ring_file.take() {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn kill_all(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

fn died(rank: usize, status: ExitStatus) -> Diagnostic {
    Diagnostic::error(
        CODE_DIED,
        format!("rank {rank} stopped ({status}); the run cannot go on without it"),
    )
    .with_help("its own error is printed above; every rank holds part of every layer")
}

/// `nccl`'s rendezvous: rank 0's first IP and port, and the world size (what `mlx.launch`
/// sets for it).
fn nccl_env(file: &Hostfile, backend: &str) -> Vec<(String, String)> {
    if backend != "nccl" {
        return Vec::new();
    }
    let first = file.hosts[0].addrs.first().cloned().unwrap_or_default();
    let (ip, port) = first.rsplit_once(':').unwrap_or((first.as_str(), "32323"));
    vec![
        ("NCCL_HOST_IP".into(), ip.into()),
        ("NCCL_PORT".into(), port.into()),
        ("MLX_WORLD_SIZE".into(), file.hosts.len().to_string()),
    ]
}

/// Whether `host` is this machine.
fn is_local(host: &Host) -> bool {
    host.ssh
        .as_deref()
        .is_none_or(|h| matches!(h, "localhost" | "127.0.0.1" | "::1"))
}

fn spawn_rank(
    rank: usize,
    host: &Host,
    env: &[(String, String)],
    ring_file: &std::path::Path,
    ring_json: &str,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| {
        Diagnostic::error(
            code::Dist::Launch,
            format!("cannot find this program's path: {e}"),
        )
    })?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = if is_local(host) {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("MLX_HOSTFILE", ring_file)
            .env("MLX_RANK", rank.to_string());
        // SAFETY: `prctl` is async-signal-safe; it only asks the kernel to send SIGTERM to the
        // child when this process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd
    } else {
        let mut cmd = Command::new("ssh");
        cmd.arg(host.ssh.as_deref().unwrap_or_default())
            .arg(remote_script(rank, env, ring_json, &exe, &args));
        cmd
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn().map_err(|e| {
        Diagnostic::error(code::Dist::Launch, format!("cannot start rank {rank}: {e}"))
    })
}

/// The shell script an ssh'd rank runs: same working directory when it exists there, the
/// environment, the ring hostfile in a temporary file, then this program with our arguments.
fn remote_script(
    rank: usize,
    env: &[(String, String)],
    ring_json: &str,
    exe: &std::path::Path,
    args: &[OsString],
) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut s = format!("cd {} 2>/dev/null; ", quote(&cwd.to_string_lossy()));
    for (k, v) in env {
        s += &format!("export {k}={}; ", quote(v));
    }
    s += &format!(
        "f=$(mktemp); echo {} >\"$f\"; export MLX_HOSTFILE=\"$f\"; ",
        quote(ring_json)
    );
    s += &format!(
        "export MLX_RANK={rank}; exec {}",
        quote(&exe.to_string_lossy())
    );
    for a in args {
        s += &format!(" {}", quote(&a.to_string_lossy()));
    }
    s
}

/// `s` single-quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Points this process' stdout at `/dev/null` (ranks other than 0 print nothing).
pub fn discard_stdout() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: both descriptors are open; dup2 atomically replaces fd 1.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_script_sets_the_rank_environment_and_quotes() {
        let s = remote_script(
            1,
            &[("A".into(), "x y".into())],
            r#"[["10.0.0.1:1"],["10.0.0.2:2"]]"#,
            std::path::Path::new("/opt/cargo-rmlx"),
            &["generate".into(), "it's".into()],
        );
        assert!(s.contains("export A='x y'; "), "{s}");
        assert!(
            s.contains(r#"echo '[["10.0.0.1:1"],["10.0.0.2:2"]]' >"$f""#),
            "{s}"
        );
        assert!(
            s.ends_with(r"exec '/opt/cargo-rmlx' 'generate' 'it'\''s'"),
            "{s}"
        );
        assert!(s.contains("export MLX_RANK=1; "), "{s}");
    }
}
