#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers: `cargo rmlx serve` next to `mlx_lm.server`
(its batch generation on: `--decode-concurrency`) and llama.cpp's server as
llama-cpp-python runs it (`python -m llama_cpp.server`, the GGUF the model directory was
converted from; that server runs one request at a time — it has no parallel slots — and
is started with `--interrupt_requests False` so requests queue instead of cutting each
other off).

Starts each server on a free loopback port with the same model directory, waits until it
answers, then for each concurrency level runs that many clients, each sending streaming
chat requests one after another (`stream_options.include_usage`, greedy, `max_tokens`), and
prints one markdown table row per server and level:

- TTFT: time from sending the request to the first content chunk (queue wait included);
- decode tok/s: per request, (completion tokens - 1) / (last chunk - first content chunk);
- request latency p50 / p99;
- throughput (aggregate tok/s): completion tokens of all requests / wall time of the level;
- aggregate decode tok/s: clients × the mean per-request decode rate (as BENCHMARKS.md's GPU
  section defines it: what the clients decode at once, prefills and queue waits left out);
- the 1-minute load average at the end of the level (the cores may be shared).

After the table, ratios: each server's aggregate throughput and aggregate decode at each
level against its own single stream, and rmlx's throughput against each other server at the
same level.

Every request has its own prompt (a number in front of the question), so a server's prompt
cache only ever helps with the shared template prefix. Only loopback addresses are used;
every loop is bounded.

usage:
  python3 scripts/bench_serve.py --model target/test-models/smollm2-q4 \
      --rmlx-bin target/release/cargo-rmlx --mlx-lm-python target/oracle-venv/bin/python \
      [--concurrency 1,4,16] [--requests 16] [--max-tokens 32] [--max-batch 8] \
      [--servers rmlx,mlx-lm,llama-cpp --gguf model.gguf --llama-python target/llama-venv/bin/python \
       --llama-pythonpath DIR] [--json out.json]

llama-cpp-python's server needs its `[server]` extras (uvicorn, fastapi, sse-starlette,
starlette-context, pydantic-settings); `--llama-pythonpath` adds a directory holding them
(`pip install --target DIR …`) without touching the venv.

Only the standard library is needed for the client side.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

QUESTION = "Write a long story about a dragon who learns to fly."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=600, path="/health"):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def one_request(port, model, i, max_tokens):
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": f"{i}. {QUESTION}"}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first = None
    last = None
    chunks = 0
    usage = None
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if obj.get("usage"):
            usage = obj["usage"]
        for ch in obj.get("choices") or []:
            if (ch.get("delta") or {}).get("content"):
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
                chunks += 1
    end = time.perf_counter()
    c.close()
    tokens = usage["completion_tokens"] if usage else chunks
    decode = (tokens - 1) / (last - first) if first is not None and last > first else None
    return {
        "ttft": (first - t0) if first is not None else None,
        "latency": end - t0,
        "tokens": tokens,
        "decode_tps": decode,
    }


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_level(port, model, clients, total, max_tokens, offset):
    per_client = max(1, total // clients)
    results = []
    errors = []
    lock = threading.Lock()

    def client(ci):
        for j in range(per_client):
            try:
                res = one_request(port, model, offset + ci * per_client + j, max_tokens)
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(ci,)) for ci in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    wall = time.perf_counter() - t0
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    decs = [r["decode_tps"] for r in results if r["decode_tps"] is not None]
    lats = [r["latency"] for r in results]
    toks = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:3],
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p99": percentile(ttfts, 99),
        "decode_tps_mean": statistics.mean(decs) if decs else float("nan"),
        "aggregate_decode_tps": clients * statistics.mean(decs) if decs else float("nan"),
        "latency_p50": percentile(lats, 50),
        "latency_p99": percentile(lats, 99),
        "throughput_tps": toks / wall if wall > 0 else float("nan"),
        "wall_s": wall,
    }


def start_rmlx(args, port, log):
    cmd = [args.rmlx_bin, "rmlx", "serve", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--queue-depth", "64", "--no-probe"]
    if args.max_batch:
        cmd += ["--max-batch", str(args.max_batch)]
    return subprocess.Popen(cmd, stdout=log, stderr=log), os.path.basename(os.path.normpath(args.model))


def start_mlx_lm(args, port, log):
    cmd = [args.mlx_lm_python, "-m", "mlx_lm", "server", "--model", args.model,
           "--host", "127.0.0.1", "--port", str(port),
           "--decode-concurrency", str(max(levels_of(args)))]
    return subprocess.Popen(cmd, stdout=log, stderr=log), args.model


def start_llama_cpp(args, port, log):
    if not args.gguf:
        raise SystemExit("--servers llama-cpp needs --gguf (the GGUF the model was converted from)")
    env = dict(os.environ)
    if args.llama_pythonpath:
        env["PYTHONPATH"] = args.llama_pythonpath
    threads = str(len(os.sched_getaffinity(0)))
    cmd = [args.llama_python, "-m", "llama_cpp.server", "--model", args.gguf,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
           "--n_threads", threads, "--n_threads_batch", threads,
           "--interrupt_requests", "False", "--model_alias", "gguf"]
    return subprocess.Popen(cmd, stdout=log, stderr=log, env=env), "gguf"


STARTERS = {"rmlx": start_rmlx, "mlx-lm": start_mlx_lm, "llama-cpp": start_llama_cpp}


def levels_of(args):
    return [int(x) for x in args.clients.split(",")]


def print_ratios(rows):
    """Each server against its own single stream; rmlx against the others per level."""
    by = {(r["server"], r["clients"]): r["throughput_tps"] for r in rows}
    servers = sorted({r["server"] for r in rows}, key=lambda s: (s != "rmlx", s))
    levels = sorted({r["clients"] for r in rows})
    print()
    dec = {(r["server"], r["clients"]): r["aggregate_decode_tps"] for r in rows}
    for s in servers:
        base = by.get((s, levels[0]))
        parts = [f"{c}: {by[(s, c)] / base:.2f}x" for c in levels if (s, c) in by and base]
        print(f"{s} aggregate vs its {levels[0]} stream(s): " + ", ".join(parts))
        base = dec.get((s, levels[0]))
        parts = [f"{c}: {dec[(s, c)] / base:.2f}x" for c in levels if (s, c) in dec and base]
        print(f"{s} aggregate decode vs its {levels[0]} stream(s): " + ", ".join(parts))
    for other in servers:
        if other == "rmlx":
            continue
        parts = [f"{c}: {by[('rmlx', c)] / by[(other, c)]:.2f}x" for c in levels
                 if ("rmlx", c) in by and by.get((other, c))]
        print(f"rmlx / {other} aggregate: " + ", ".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rmlx-bin", default="target/release/cargo-rmlx")
    ap.add_argument("--mlx-lm-python", default="target/oracle-venv/bin/python")
    ap.add_argument("--clients", "--concurrency", dest="clients", default="1,4,16")
    ap.add_argument("--max-batch", type=int, help="rmlx's --max-batch (default: its own)")
    ap.add_argument("--gguf", help="GGUF for llama-cpp (the file the model was converted from)")
    ap.add_argument("--llama-python", default="target/llama-venv/bin/python")
    ap.add_argument("--llama-pythonpath", help="extra PYTHONPATH with llama_cpp.server's extras")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (≥ clients)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--servers", default="rmlx,mlx-lm")
    ap.add_argument("--json")
    args = ap.parse_args()
    levels = levels_of(args)
    rows = []
    for name in args.servers.split(","):
        port = free_port()
        log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        start = STARTERS[name]
        proc, model = start(args, port, log)
        try:
            # llama-cpp-python's server has no /health; its model list answers once loaded.
            wait_ready(port, proc, path="/v1/models" if name == "llama-cpp" else "/health")
            one_request(port, model, 0, 4)  # warm-up
            for li, c in enumerate(levels):
                total = max(args.requests, c)
                r = run_level(port, model, c, total, args.max_tokens, 1000 * (li + 1))
                r["server"] = name
                r["load_avg"] = os.getloadavg()[0]  # other processes share the cores
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"{name} log: {log.name}", file=sys.stderr)
    print("| server | clients | requests | errors | TTFT p50 s | TTFT p99 s | decode tok/s (mean per request) | latency p50 s | latency p99 s | throughput tok/s | aggregate decode tok/s | load avg (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['errors']} | "
            f"{r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['decode_tps_mean']:.1f} | "
            f"{r['latency_p50']:.2f} | {r['latency_p99']:.2f} | {r['throughput_tps']:.1f} | "
            f"{r['aggregate_decode_tps']:.1f} | {r['load_avg']:.1f} |"
        )
    print_ratios(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
