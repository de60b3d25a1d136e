//! Local tensor-parallel runs in tests (shared by `tests/e2e` and `tests/serve`): a ring
//! hostfile of loopback ranks, and the processes a launcher started as a given rank.

use std::path::{Path, PathBuf};

/// A ring hostfile of `n` loopback ranks on free ports, written to `dir/hosts.json`.
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("port").port()
        })
        .collect();
    let hosts: Vec<Vec<String>> = ports
        .iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let path = dir.join("hosts.json");
    std::fs::write(&path, serde_json::to_string(&hosts).unwrap()).expect("write hostfile");
    path
}

/// The children of `pid` started as rank `rank` (not its template sandbox workers).
pub fn rank_children(pid: u32, rank: usize) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let env = format!("MLX_RANK={rank}");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|c: &u32| {
            std::fs::read(format!("/proc/{c}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|v| v == env.as_bytes())
        })
        .collect()
}
