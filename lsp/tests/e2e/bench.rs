//! The latency benchmark of BENCHMARKS.md ("Language server"), ignored by default:
//!
//! ```sh
//! cargo build --release -p rmlx-lsp
//! RMLX_LSP_BIN=target/release/rmlx-lsp cargo test -p rmlx-lsp --test e2e bench -- --ignored --nocapture
//! ```
//!
//! 1. didChange → publishDiagnostics on the largest real template of the corpus
//!    (`scripts/fetch-templates.sh`), template-only checks (no tokenizer), debounce 0: 200
//!    timed edits after 20 warm-up edits, one at a time; median, p99, max. The same with the
//!    template inside the SmolLM2 model directory (tokenizer checks too), and with the
//!    default debounce.
//! 2. didSave → the probe verdict diagnostic with the model cached (after a first, cold
//!    probe that loads it): 10 saves.
//!
//! Prints one JSON object and writes it to `target/lsp-bench.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{file_uri, is_diagnostics, LspClient};
use crate::model::{copy_model, repo_root, run_script, scratch};

fn stats(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let pct = |p: f64| ms[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    json!({
        "n": n,
        "median_ms": round(pct(0.5)),
        "p90_ms": round(pct(0.9)),
        "p99_ms": round(pct(0.99)),
        "max_ms": round(ms[n - 1]),
        "min_ms": round(ms[0]),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The largest `*.jinja` of the corpus.
fn largest_template() -> PathBuf {
    let out = run_script("fetch-templates.sh", &[]);
    let corpus = PathBuf::from(out.lines().last().expect("corpus directory").trim());
    let mut best: Option<(u64, PathBuf)> = None;
    for part in std::fs::read_dir(&corpus).expect("read the corpus") {
        let part = part.unwrap().path();
        if !part.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&part).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "jinja") {
                let len = f.metadata().unwrap().len();
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((len, f));
                }
            }
        }
    }
    best.expect("templates in the corpus").1
}

/// Times `n` edits (after `warm` untimed ones), each waited for before the next.
fn edit_latency(
    c: &LspClient,
    uri: &str,
    base: &str,
    first_version: i64,
    warm: usize,
    n: usize,
) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(n);
    let mut diags = 0;
    for i in 0..warm + n {
        let v = first_version + i as i64;
        // A realistic edit: a comment at the end changes on every keystroke.
        let text = format!("{base}{{#- edit {i} -#}}");
        let m = c.mark();
        let t0 = Instant::now();
        c.change(uri, v, &text);
        let r = c.wait_diagnostics(m, uri, Some(v), Duration::from_secs(60));
        if i >= warm {
            times.push((r.at - t0).as_secs_f64() * 1e3);
            diags = r.value["params"]["diagnostics"]
                .as_array()
                .map_or(0, Vec::len);
        }
    }
    (times, diags)
}

fn lint_bench(dir: &Path, file: &Path, text: &str, debounce: u64, n: usize) -> Value {
    std::fs::write(file, text).unwrap();
    let uri = file_uri(file);
    let mut c = LspClient::start(&[]);
    c.initialize(dir, json!({"debounceMs": debounce, "probe": false}));
    let m = c.mark();
    c.open(&uri, "jinja", 1, text);
    c.wait_diagnostics(m, &uri, Some(1), Duration::from_secs(120));
    let (times, diags) = edit_latency(&c, &uri, text, 2, 20, n);
    let _ = c.shutdown_and_exit();
    let mut s = stats(times);
    s["diagnostics"] = json!(diags);
    s["debounce_ms"] = json!(debounce);
    s
}

#[test]
#[ignore = "benchmark; see the module documentation"]
fn bench() {
    let largest = largest_template();
    let text = std::fs::read_to_string(&largest).unwrap();
    let dir = scratch();

    // Template-only: no model directory around the file.
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let template_only = lint_bench(&plain, &plain.join("chat_template.jinja"), &text, 0, 200);
    let debounced = lint_bench(&plain, &plain.join("chat_template.jinja"), &text, 75, 50);
    // With the SmolLM2 tokenizer (tokenizer checks, token counts).
    let model = copy_model(&dir.path().join("smollm2-q4"));
    let with_tokenizer = lint_bench(
        dir.path(),
        &model.join("chat_template.jinja"),
        &text,
        0,
        200,
    );

    // didSave → probe verdict.
    let smol =
        std::fs::read_to_string(crate::model::smollm2().join("chat_template.jinja")).unwrap();
    let path = model.join("chat_template.jinja");
    std::fs::write(&path, &smol).unwrap();
    let uri = file_uri(&path);
    let mut c = LspClient::start(&[]);
    c.initialize(dir.path(), json!({"probeOnOpen": false}));
    let probe_msg = |v: &Value| {
        is_diagnostics(v, &uri, None)
            && v["params"]["diagnostics"].as_array().is_some_and(|d| {
                d.iter().any(|d| {
                    d["code"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("rmlx::probe::"))
                })
            })
    };
    let m = c.mark();
    c.open(&uri, "jinja", 1, &smol);
    c.wait_diagnostics(m, &uri, Some(1), Duration::from_secs(120));
    let m = c.mark();
    let t0 = Instant::now();
    c.save(&uri);
    let r = c.wait_for(m, Duration::from_secs(600), probe_msg);
    let cold_ms = (r.at - t0).as_secs_f64() * 1e3;
    let mut warm = Vec::new();
    let mut verdict = String::new();
    for _ in 0..10 {
        let m = c.mark();
        let t0 = Instant::now();
        c.save(&uri);
        let r = c.wait_for(m, Duration::from_secs(600), probe_msg);
        warm.push((r.at - t0).as_secs_f64() * 1e3);
        verdict = r.value["params"]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|d| {
                d["code"]
                    .as_str()
                    .filter(|c| c.starts_with("rmlx::probe::"))
                    .map(str::to_string)
            })
            .unwrap_or_default();
    }
    let _ = c.shutdown_and_exit();

    let report = json!({
        "binary": crate::client::lsp_bin().display().to_string(),
        "template": largest.strip_prefix(repo_root()).unwrap_or(&largest).display().to_string(),
        "template_bytes": text.len(),
        "template_lines": text.lines().count(),
        "did_change_to_publish": {
            "template_only": template_only,
            "template_only_default_debounce": debounced,
            "with_smollm2_tokenizer": with_tokenizer,
        },
        "did_save_to_probe_verdict": {
            "model": "SmolLM2-135M-Instruct Q4_1 (MLX affine 4-bit g32)",
            "cold_ms_including_load": round(cold_ms),
            "cached": stats(warm),
            "verdict": verdict,
        },
    });
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    println!("{pretty}");
    std::fs::write(repo_root().join("target").join("lsp-bench.json"), &pretty).unwrap();
}
