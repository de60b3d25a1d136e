#!/usr/bin/env python3
"""Cold-process wall time of `cargo rmlx probe MODEL_DIR` next to the same 8-token greedy run
with `python -m mlx_lm generate` (mlx-lm 0.32.2 from the oracle venv; same model directory,
same seed question through the chat template), interleaved, median of N runs.

    python3 scripts/bench_probe.py MODEL_DIR [RUNS]
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    model = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    venv = subprocess.run(
        ["bash", str(REPO / "scripts/oracle-venv.sh")], check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]
    rmlx = REPO / "target/release/cargo-rmlx"
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(wall([str(rmlx), "rmlx", "probe", model]))
        theirs.append(
            wall([venv, "-m", "mlx_lm", "generate", "--model", model, "--prompt",
                  "What is the capital of France?", "--max-tokens", "8", "--temp", "0"])
        )
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"{'command (median of %d, cold process)' % runs:<44} {'wall s':>8}")
    print(f"{'cargo rmlx probe':<44} {o:>8.2f}")
    print(f"{'python -m mlx_lm generate --max-tokens 8':<44} {t:>8.2f}")
    print(f"ratio (mlx-lm / rmlx): {t / o:.2f}x")


if __name__ == "__main__":
    main()
