//! Tensor parallelism over MLX's `ring` backend with two local processes (`generate
//! --hostfile`): the same greedy tokens and step-0 logits as the single-process run (a
//! divergence is accepted only at a named near-tie), each rank reading about half of the
//! split weights, and a killed rank stopping the run with a clear error within seconds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ranks::{hostfile, rank_children};
use crate::support::{
    bin, converted, generate, scratch_dir, Generation, Variant, CHAT_PROMPT, RAW_PROMPT,
};

/// Steps compared with the single-process run.
const STEPS: usize = 12;

/// Step-0 logits may differ by the summation order of the ranks' partial sums.
const LOGIT_TOLERANCE: f64 = 1e-3;

/// Below this top-1/top-2 margin (single-process run) a different token is a near-tie.
const NEAR_TIE: f64 = 1e-3;

/// Compares the two-rank run with the single-process run of `dir`.
fn check_two_ranks(dir: &Path, prompt: &str, chat: bool) {
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    let single = generate(dir, prompt, chat, STEPS, &["--ignore-eos"]);
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let tp = generate(
        dir,
        prompt,
        chat,
        STEPS,
        &["--ignore-eos", "--hostfile", &hosts_arg],
    );
    assert_eq!(tp.prompt_ids, single.prompt_ids, "prompt ids");
    let (a, b) = (&tp.steps[0], &single.steps[0]);
    assert_eq!(a.id, b.id, "step-0 top-1");
    for ((ia, la), (ib, lb)) in a.top.iter().zip(&b.top) {
        assert_eq!(ia, ib, "step-0 top tokens");
        let (la, lb) = (la.expect("a finite logit"), lb.expect("a finite logit"));
        assert!(
            (la - lb).abs() <= LOGIT_TOLERANCE * lb.abs().max(1.0),
            "step-0 logit of {ia}: {la} (2 ranks) vs {lb} (1 process)"
        );
    }
    compare_tokens(&tp, &single);
}

/// Equal greedy tokens, or a divergence at a near-tie of the single run (to its runner-up).
fn compare_tokens(tp: &Generation, single: &Generation) {
    for (i, (a, b)) in tp.steps.iter().zip(&single.steps).enumerate() {
        if a.id == b.id {
            continue;
        }
        let margin = b.margin();
        assert!(
            margin < NEAR_TIE && b.rank(1).0 == a.id,
            "step {i}: 2 ranks chose {} where one process chose {} (margin {margin})",
            a.id,
            b.id
        );
        eprintln!("step {i}: near-tie (margin {margin}): {} vs {}", a.id, b.id);
        return;
    }
    assert_eq!(tp.steps.len(), single.steps.len(), "number of steps");
}

#[test]
fn smollm2_two_ranks_match_one_process() {
    check_two_ranks(&converted(Variant::Q4), CHAT_PROMPT, true);
}

#[test]
fn qwen2_two_ranks_match_one_process() {
    check_two_ranks(
        &crate::arch_oracle::built().join("qwen-q4g64"),
        CHAT_PROMPT,
        true,
    );
}

/// A test that the two-rank run of a tiny model matches one process on the raw prompt: `$dir`
/// gives the model directory of `$model` (its Hugging Face directory, `tiny_model`, where the
/// engine reads that layout; its `mlx_lm convert`, `mlx_lm_dense`, elsewhere).
macro_rules! tiny_two_ranks {
    ($(#[$doc:meta])* $name:ident, $dir:path, $model:literal) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            check_two_ranks(&$dir($model), RAW_PROMPT, false);
        }
    };
}

use crate::tiny_arch::mlx_lm_dense;
use crate::tiny_build::tiny_model;

tiny_two_ranks!(
    /// Qwen3-MoE: experts split inside each expert, summed after the mix.
    qwen3_moe_two_ranks_match_one_process,
    tiny_model,
    "qwen3_moe"
);
tiny_two_ranks!(
    /// OLMo 2: q/k norms over the whole projection (the ranks add their sums of squares).
    olmo2_two_ranks_match_one_process,
    tiny_model,
    "olmo2"
);
tiny_two_ranks!(
    /// Phi-3: fused qkv and gate_up projections, each part split on its own rows.
    phi3_two_ranks_match_one_process,
    tiny_model,
    "phi3"
);
tiny_two_ranks!(
    /// Ministral 3: the standard attention and MLP with YaRN and per-position query scaling.
    ministral3_two_ranks_match_one_process,
    tiny_model,
    "ministral3"
);
tiny_two_ranks!(
    /// GPT-OSS (released layout): sinks split with the heads, biased experts (fused gate_up
    /// rows and their biases split, the down bias added once).
    gpt_oss_two_ranks_match_one_process,
    tiny_model,
    "gpt_oss"
);
/// GPT-OSS as released with MXFP4 experts: the blocks and scales split on their rows
/// (gate/up) and on their groups of input columns (down).
#[test]
fn gpt_oss_mxfp4_two_ranks_match_one_process() {
    let dir = crate::tiny_build::tiny_model_variant("gpt_oss", "mxfp4-native");
    check_two_ranks(&dir, RAW_PROMPT, false);
}

tiny_two_ranks!(
    /// Qwen3.5: delta-net layers split by key-head groups (their q/k/v parts, convolution
    /// channels, z/a/b, A_log and dt_bias), gated full attention by heads.
    qwen3_5_two_ranks_match_one_process,
    mlx_lm_dense,
    "qwen3_5"
);
tiny_two_ranks!(
    /// Qwen3.5-MoE: the same with routed experts and the gated shared expert split.
    qwen3_5_moe_two_ranks_match_one_process,
    mlx_lm_dense,
    "qwen3_5_moe"
);
tiny_two_ranks!(
    /// Gemma 4 (multimodal checkpoint): shared-KV layers, per-head q/k/v norms, two head
    /// widths, double-wide MLPs and per-layer inputs.
    gemma4_two_ranks_match_one_process,
    mlx_lm_dense,
    "gemma4"
);
tiny_two_ranks!(
    /// Gemma 4 text model: its MoE branch, and full layers whose keys are their values over
    /// one global KV head (kept whole on each rank).
    gemma4_text_two_ranks_match_one_process,
    mlx_lm_dense,
    "gemma4_text"
);

/// `rank N of 2: read B bytes of weights …` lines of a `-v` run: (rank, bytes).
fn bytes_per_rank(stderr: &str) -> Vec<(usize, u64)> {
    stderr
        .lines()
        .filter(|l| l.contains("bytes of weights"))
        .filter_map(|l| {
            let rest = &l[l.find("rank ")? + 5..];
            let rank = rest.split(' ').next()?.parse().ok()?;
            let bytes = rest
                .split("read ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((rank, bytes))
        })
        .collect()
}

/// Bytes of the split tensors (the `*_proj` projections) and of the replicated rest, from the
/// safetensors headers of `dir`.
fn split_and_replicated(dir: &Path) -> (u64, u64) {
    let (mut split, mut replicated) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (name, t) in header.iter().filter(|(k, _)| *k != "__metadata__") {
            let o = &t["data_offsets"];
            let size = o[1].as_u64().unwrap() - o[0].as_u64().unwrap();
            if name.contains("_proj.") {
                split += size;
            } else {
                replicated += size;
            }
        }
    }
    (split, replicated)
}

#[test]
fn each_rank_reads_about_half_of_the_weights() {
    let dir = converted(Variant::Q4);
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    let run = crate::support::rmlx([
        "generate".as_ref(),
        dir.as_os_str(),
        "--prompt".as_ref(),
        "Hi".as_ref(),
        "-n".as_ref(),
        "1".as_ref(),
        "-v".as_ref(),
        "--hostfile".as_ref(),
        hosts.as_os_str(),
    ]);
    assert!(run.success(), "{}", run.describe());
    let mut ranks = bytes_per_rank(&run.stderr);
    ranks.sort_by_key(|r| r.0);
    assert_eq!(
        ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 1],
        "{}",
        run.stderr
    );
    let (split, replicated) = split_and_replicated(&dir);
    // Every rank reads the replicated tensors (SmolLM2's tied 8-bit embeddings: about 30%)
    // and its share of the projections: half of the MLP, and of attention 2 of the 3 KV-head
    // groups (rank 0) or 1 (rank 1), as 3 KV heads do not split evenly over 2 ranks.
    let shares: Vec<f64> = ranks
        .iter()
        .map(|(_, b)| (b - replicated) as f64 / split as f64)
        .collect();
    eprintln!(
        "replicated {replicated} bytes, split {split}; ranks read {ranks:?} (shares {shares:?})"
    );
    for (rank, share) in shares.iter().enumerate() {
        assert!(
            (0.4..0.6).contains(share),
            "rank {rank} read {share} of the split weights"
        );
    }
    let total: f64 = shares.iter().sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "the ranks' shares add up to {total}"
    );
}

/// Reads `r` to its end on a thread (a pipe nobody drains blocks its writer once full);
/// `first` hears when the first byte arrived.
fn drain(
    mut r: impl std::io::Read + Send + 'static,
    first: Option<std::sync::mpsc::Sender<()>>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
        let mut first = first;
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    })
}

#[test]
fn a_killed_rank_stops_the_run_within_seconds() {
    let dir = converted(Variant::Q4);
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    let mut launcher = Command::new(bin())
        .args(["rmlx", "generate"])
        .arg(&dir)
        .args([
            "--prompt",
            "Count",
            "-n",
            "100000",
            "--ignore-eos",
            "--hostfile",
        ])
        .arg(&hosts)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let pid = launcher.id();
    // Both pipes are drained for the whole run (rank 1 writes to the same stderr).
    let (tx, printed) = std::sync::mpsc::channel();
    let stdout = drain(launcher.stdout.take().unwrap(), Some(tx));
    let stderr = drain(launcher.stderr.take().unwrap(), None);
    // Wait until rank 1 runs and rank 0 has printed a token (both are in the step loop).
    if printed.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = launcher.kill();
        panic!("rank 0 printed nothing:\n{}", stderr.join().unwrap());
    }
    let rank1 = rank_children(pid, 1);
    assert_eq!(rank1.len(), 1, "one launched rank");
    unsafe_kill(rank1[0]);
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(10) {
            let _ = launcher.kill();
            panic!(
                "rank 0 still runs 10 s after rank 1 died:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_after = killed.elapsed();
    let (stderr, _) = (stderr.join().unwrap(), stdout.join().unwrap());
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1"),
        "the error names the dead rank:\n{stderr}"
    );
    eprintln!("rank 0 stopped {stopped_after:?} after rank 1 was killed");
}

#[test]
fn an_unreachable_peer_is_an_error_not_a_hang() {
    let dir = converted(Variant::Q4);
    let scratch = scratch_dir();
    let hosts = hostfile(scratch.path(), 2);
    // Rank 0 alone (as `mlx.launch` would start it): rank 1 never comes.
    let mut cmd = Command::new(bin());
    cmd.args(["rmlx", "generate"])
        .arg(&dir)
        .args(["--prompt", "Hi", "-n", "1"])
        .env("MLX_RANK", "0")
        .env("MLX_HOSTFILE", &hosts)
        .env("RMLX_DIST_TIMEOUT_S", "2")
        .env("NO_COLOR", "1");
    let start = Instant::now();
    let run = crate::support::run_command(cmd, Duration::from_secs(30));
    assert!(!run.timed_out && !run.success(), "{}", run.describe());
    assert!(
        run.stderr.contains("could not connect"),
        "{}",
        run.describe()
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}

fn unsafe_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}
