//! Running a child process: stdin closed, output captured, killed after a time limit.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A finished (or timed-out) child process.
pub struct Run {
    pub cmdline: String,
    /// The exit code; `None` when killed by a signal or on timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// stdout (lossy UTF-8).
    pub stdout: String,
    /// stdout as printed, for byte-exact comparisons.
    pub stdout_bytes: Vec<u8>,
    /// stderr (lossy UTF-8).
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as text (a copy).
    pub fn stdout_text(&self) -> String {
        self.stdout.clone()
    }

    /// stdout followed by stderr, uncut, for searching everything the child printed.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Everything needed to understand a failure, for assertion messages.
    pub fn describe(&self) -> String {
        let status = if self.timed_out {
            "timed out (killed)".to_string()
        } else {
            match self.code {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            }
        };
        format!(
            "command: {}\nstatus: {status} after {:.2?}\n--- stderr ---\n{}\n--- stdout ---\n{}\n---",
            self.cmdline,
            self.elapsed,
            clip(&self.stderr, 12_000),
            clip(&self.stdout, 6_000)
        )
    }

    /// Asserts the child neither timed out nor panicked.
    pub fn assert_sane(&self, what: &str) {
        assert!(!self.timed_out, "{what}: timed out\n{}", self.describe());
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{what}: the binary panicked\n{}",
            self.describe()
        );
    }
}

/// The last `max` bytes of `text` (at a character boundary), marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[… {cut} bytes cut …]{}", &text[cut..])
}

fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{s:?}")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with stdin closed and its output captured (through files, so a chatty child
/// cannot block on a full pipe), killing it after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Run {
    let cmdline = shell_words(&cmd);
    let mut out = tempfile::tempfile().expect("temp file for stdout");
    let mut err = tempfile::tempfile().expect("temp file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("dup stdout file")))
        .stderr(Stdio::from(err.try_clone().expect("dup stderr file")));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
    };
    let elapsed = start.elapsed();
    let stdout_bytes = read_all(&mut out);
    Run {
        cmdline,
        code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr: String::from_utf8_lossy(&read_all(&mut err)).into_owned(),
        elapsed,
    }
}

fn read_all(file: &mut fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("rewind output file");
    file.read_to_end(&mut bytes).expect("read output file");
    bytes
}

/// `BIN rmlx` (the way cargo invokes a `cargo-<name>` subcommand) with plain, wide,
/// uncoloured diagnostics so assertions can search them; add the arguments.
pub fn rmlx_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("rmlx")
        .env("NO_COLOR", "1")
        .env("CARGO_TERM_COLOR", "never")
        .env("COLUMNS", "400")
        .env_remove("CLICOLOR_FORCE");
    cmd
}
