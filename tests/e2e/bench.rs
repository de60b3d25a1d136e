//! `cargo rmlx bench` in a short mode on the real SmolLM2 model (4-bit), next to the
//! references: one JSON row per runner and prompt length with positive numbers, the
//! reference rows with their ratios, and the cold probe timing row. No timing assertions:
//! this only checks that the harness and the references run.

use serde_json::Value;

use crate::support::{converted, rmlx, smollm2_gguf, venv_python, Variant};

fn number(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {row}"))
}

#[test]
fn short_bench_reports_every_runner_as_json() {
    let dir = converted(Variant::Q4);
    let gguf = smollm2_gguf();
    let oracle = venv_python("oracle-venv.sh", "the mlx-lm reference");
    let llama = venv_python("llama-venv.sh", "the llama.cpp reference");
    let run = rmlx([
        "bench".as_ref(),
        dir.as_os_str(),
        "--prompt-tokens".as_ref(),
        "16".as_ref(),
        "--decode-tokens".as_ref(),
        "4".as_ref(),
        "--repeat".as_ref(),
        "1".as_ref(),
        "--message-format".as_ref(),
        "json".as_ref(),
        "--compare-mlx-lm".as_ref(),
        "--python".as_ref(),
        oracle.as_os_str(),
        "--compare-llama-cpp".as_ref(),
        gguf.as_os_str(),
        "--llama-python".as_ref(),
        llama.as_os_str() as &std::ffi::OsStr,
    ]);
    assert!(run.success(), "bench failed\n{}", run.describe());
    let rows: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{}", run.describe()))
        })
        .collect();

    let throughput: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "throughput").collect();
    let runners: Vec<(&str, &str)> = throughput
        .iter()
        .map(|r| {
            (
                r["runner"].as_str().unwrap_or("?"),
                r["dtype"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        runners,
        [
            ("rmlx", "float32"),
            ("mlx-lm", "model"),
            ("mlx-lm", "float32"),
            ("llama.cpp", "gguf")
        ],
        "{}",
        run.describe()
    );
    for row in &throughput {
        assert_eq!(row["prompt_tokens"], 16, "{row}");
        assert_eq!(row["decode_tokens"], 4, "{row}");
        assert_eq!(row["repeat"], 1, "{row}");
        for key in ["prefill_tok_s", "decode_tok_s", "ttft_s", "peak_rss_mib"] {
            assert!(number(row, key) > 0.0, "`{key}` is not positive in {row}");
        }
        let ours = row["runner"] == "rmlx";
        for key in ["prefill_ratio", "decode_ratio"] {
            if ours {
                assert!(row[key].is_null(), "our own row has a `{key}`: {row}");
            } else {
                assert!(number(row, key) > 0.0, "`{key}` is not positive in {row}");
            }
        }
    }

    let probe: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "probe").collect();
    assert_eq!(probe.len(), 1, "one probe timing row\n{}", run.describe());
    assert_eq!(probe[0]["runner"], "rmlx", "{}", probe[0]);
    assert_eq!(
        probe[0]["exit_code"], 0,
        "the probe of SmolLM2 is ok: {}",
        probe[0]
    );
    assert!(number(probe[0], "wall_s") > 0.0, "{}", probe[0]);
}
