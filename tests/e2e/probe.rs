//! `cargo rmlx probe` on the real SmolLM2 model and on deliberately broken copies of it: every
//! healthy variant gets `ok` with an answer containing "Paris"; each breakage gets its non-ok
//! verdict; the bare untemplated seed shows why the templated path is the default.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::support::{converted, copy_model_dir, edit_config, rmlx, scratch_dir, Variant};

const WEIGHTS: &str = "model.safetensors";

/// Runs `probe --message-format json` and returns the report and the exit code.
pub(crate) fn probe(dir: &Path, extra: &[&str]) -> (Value, i32) {
    let mut args = vec![
        "probe".to_string(),
        dir.display().to_string(),
        "--message-format".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = rmlx(&args);
    assert!(
        !run.stderr.contains("panicked"),
        "probe panicked\n{}",
        run.describe()
    );
    let line = run.stdout.lines().last().unwrap_or_default().to_string();
    let report: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("probe printed no JSON report ({e})\n{}", run.describe()));
    (report, run.code.unwrap_or(-1))
}

fn verdict(report: &Value) -> &str {
    report["verdict"].as_str().unwrap_or("<none>")
}

#[test]
fn healthy_models_are_ok_and_answer_paris() {
    for variant in [Variant::Q4, Variant::Bf16] {
        let (report, code) = probe(&converted(variant), &[]);
        assert_eq!(verdict(&report), "ok", "{variant}: {report:#}");
        assert_eq!(code, 0, "{variant}: exit code of an ok probe");
        let answer = report["answer"].as_str().unwrap_or_default();
        assert!(answer.contains("Paris"), "{variant}: answer {answer:?}");
        assert_eq!(report["seed_source"], "chat-template", "{variant}");
        for key in ["prompt_ids", "steps", "evidence", "model"] {
            assert!(!report[key].is_null(), "{variant}: report lacks `{key}`");
        }
        let steps = report["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 8, "{variant}: default 8 greedy steps");
        let timing = &report["timing"];
        for key in ["load_s", "prefill_s", "decode_s"] {
            let t = timing[key].as_f64().unwrap_or(-1.0);
            assert!(t > 0.0 && t < 600.0, "{variant}: timing.{key} = {timing}");
        }
        assert!(
            timing["fidelity_s"].is_null(),
            "{variant}: no reference, {timing}"
        );
    }
}

#[test]
fn bare_seed_differs_from_the_templated_default() {
    let dir = converted(Variant::Q4);
    let (templated, _) = probe(&dir, &[]);
    let (bare, code) = probe(&dir, &["--no-template"]);
    assert_eq!(verdict(&templated), "ok");
    assert_ne!(
        verdict(&bare),
        "ok",
        "the bare seed should not pass for an instruct model: {bare:#}"
    );
    assert_ne!(code, 0);
    assert_ne!(templated["prompt_ids"], bare["prompt_ids"]);
    let source = &bare["seed_source"]["bare-seed"];
    assert!(
        source["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("--no-template"),
        "the report says why the template was not used: {bare:#}"
    );
    assert!(
        source["bos"]
            .as_str()
            .unwrap_or_default()
            .contains("<|im_start|>"),
        "the BOS comes from the resolution chain (SmolLM2's bos_token): {bare:#}"
    );
}

/// A copy of the bf16 SmolLM2 directory whose weights went through `edit`, which may change
/// a tensor's bytes (`Some(bytes)`) and returns extra tensors to add.
fn broken_copy(
    scratch: &Path,
    edit: impl Fn(&str, &TensorView<'_>) -> Option<Vec<u8>>,
    extra: impl FnOnce(&SafeTensors<'_>) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
) -> PathBuf {
    let src = converted(Variant::Bf16);
    let dir = scratch.join("model");
    copy_model_dir(&src, &dir, &[WEIGHTS]);
    let bytes = fs::read(src.join(WEIGHTS)).expect("read weights");
    let st = SafeTensors::deserialize(&bytes).expect("parse weights");
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let data = edit(&name, &view).unwrap_or_else(|| view.data().to_vec());
        owned.push((name, view.dtype(), view.shape().to_vec(), data));
    }
    owned.extend(extra(&st));
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    serialize_to_file(views, None, &dir.join(WEIGHTS)).expect("write weights");
    dir
}

const BF16_NAN: [u8; 2] = 0x7fc0u16.to_le_bytes();

#[test]
fn deliberately_broken_models_get_non_ok_verdicts() {
    let mut table = Vec::new();
    let mut check = |what: &str, dir: &Path, allowed: &[&str]| {
        let (report, code) = probe(dir, &[]);
        let v = verdict(&report).to_string();
        table.push(format!("{what:<28} {v:<18} {:?}", report["answer"]));
        assert!(
            allowed.contains(&v.as_str()),
            "{what}: verdict {v}, expected one of {allowed:?}\n{report:#}"
        );
        assert_eq!(code, 1, "{what}: exit code of a broken model");
        report
    };

    // NaN in one norm weight → non-finite logits.
    let s = scratch_dir();
    let dir = broken_copy(
        s.path(),
        |name, v| {
            (name == "model.layers.3.input_layernorm.weight")
                .then(|| BF16_NAN.repeat(v.data().len() / 2))
        },
        |_| vec![],
    );
    check("NaN in a norm weight", &dir, &["broken-nan"]);

    // Attention output zeroed in every layer → the model sees one token at a time.
    let s = scratch_dir();
    let dir = broken_copy(
        s.path(),
        |name, v| {
            name.ends_with("o_proj.weight")
                .then(|| vec![0; v.data().len()])
        },
        |_| vec![],
    );
    check(
        "zeroed attention output",
        &dir,
        &["broken-loop", "unexpected-answer"],
    );

    // LM head = the embedding with its rows shuffled (untied).
    let s = scratch_dir();
    let dir = broken_copy(
        s.path(),
        |_, _| None,
        |st| {
            let e = st.tensor("model.embed_tokens.weight").expect("embedding");
            let (rows, cols) = (e.shape()[0], e.shape()[1]);
            let row = cols * 2;
            let mut out = vec![0u8; e.data().len()];
            // A fixed permutation: i → (i * 7919 + 13) mod rows (7919 is prime to 49152).
            for i in 0..rows {
                let j = (i * 7919 + 13) % rows;
                out[i * row..(i + 1) * row].copy_from_slice(&e.data()[j * row..(j + 1) * row]);
            }
            vec![("lm_head.weight".into(), e.dtype(), e.shape().to_vec(), out)]
        },
    );
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    check(
        "shuffled LM head rows",
        &dir,
        &["unexpected-answer", "broken-loop"],
    );

    // A wrong rope_theta.
    let s = scratch_dir();
    let dir = s.path().join("model");
    copy_model_dir(&converted(Variant::Bf16), &dir, &[]);
    edit_config(&dir, |c| {
        c.insert("rope_theta".into(), 100.0.into());
    });
    check(
        "wrong rope_theta (100)",
        &dir,
        &["unexpected-answer", "broken-loop"],
    );

    // A template that drops the generation prompt.
    let s = scratch_dir();
    let dir = s.path().join("model");
    copy_model_dir(&converted(Variant::Bf16), &dir, &[]);
    let t = fs::read_to_string(dir.join("chat_template.jinja")).expect("template");
    let start = t
        .find("{% if add_generation_prompt %}")
        .expect("generation block");
    fs::write(dir.join("chat_template.jinja"), &t[..start]).expect("write template");
    let report = check(
        "template without gen. prompt",
        &dir,
        &["unexpected-answer", "broken-loop", "broken-empty"],
    );
    assert!(
        report["hints"]
            .to_string()
            .contains("add_generation_prompt"),
        "the report names the cause: {report:#}"
    );

    // A template that emits BOS twice.
    let s = scratch_dir();
    let dir = s.path().join("model");
    copy_model_dir(&converted(Variant::Bf16), &dir, &[]);
    fs::write(
        dir.join("chat_template.jinja"),
        format!("{{{{ bos_token }}}}{{{{ bos_token }}}}{t}"),
    )
    .expect("write template");
    let report = check(
        "double BOS",
        &dir,
        &["unexpected-answer", "broken-loop", "broken-empty"],
    );
    assert!(
        report["hints"].to_string().contains("double BOS"),
        "the report names the cause: {report:#}"
    );

    eprintln!("detection table:\n{}", table.join("\n"));
}

#[test]
fn golden_file_catches_a_drifted_model() {
    let s = scratch_dir();
    let good = s.path().join("good");
    copy_model_dir(&converted(Variant::Q4), &good, &[]);
    let golden = s.path().join("golden.json");
    let g = golden.display().to_string();
    let (report, code) = probe(&good, &["--bless", "--golden", &g]);
    assert_eq!((verdict(&report), code), ("ok", 0), "{report:#}");
    assert!(golden.is_file(), "--bless writes the golden file");

    // The same model compared with its golden file: no divergence.
    let (report, _) = probe(&good, &["--reference", "golden", "--golden", &g]);
    assert_eq!(verdict(&report), "ok", "{report:#}");
    assert!(
        report["fidelity"]["mean_kl"].as_f64().unwrap_or(1.0) < 0.01,
        "{report:#}"
    );

    // The bf16 variant with a wrong rope base (3000 instead of 100000): held to an answer it
    // still gives ("capital"), only the golden comparison sees the drift.
    let drifted = s.path().join("drifted");
    copy_model_dir(&converted(Variant::Bf16), &drifted, &[]);
    edit_config(&drifted, |c| {
        c.insert("rope_theta".into(), 3000.0.into());
    });
    let (report, code) = probe(
        &drifted,
        &[
            "--reference",
            "golden",
            "--golden",
            &g,
            "--expect",
            "capital",
        ],
    );
    let kl = report["fidelity"]["mean_kl"].as_f64().unwrap_or_default();
    assert_eq!(verdict(&report), "diverged", "mean KL {kl}: {report:#}");
    assert_eq!(report["evidence"]["rule"], "fidelity", "{report:#}");
    assert_eq!(code, 1);
}

#[test]
fn declared_models_are_built_then_probed_8bit_ok_and_g64_requantization_flagged() {
    let scratch = scratch_dir();
    let ws = scratch.path();
    let gguf = crate::support::smollm2_gguf();
    fs::write(
        ws.join("rmlx.toml"),
        format!(
            r#"[models.smollm2-8bit]
source = "{g}"
quantize = {{ mode = "affine", bits = 8, group-size = 32 }}

[models.smollm2-g64]
source = "{g}"
quantize = {{ mode = "affine", bits = 4, group-size = 64 }}
"#,
            g = gguf.display()
        ),
    )
    .expect("write rmlx.toml");
    let mut cmd = std::process::Command::new(crate::support::bin());
    cmd.current_dir(ws)
        .args(["rmlx", "probe", "--message-format", "json"])
        .env("CARGO_TERM_COLOR", "never");
    let run = crate::support::run_command(cmd, std::time::Duration::from_secs(900));
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    let reports: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "probe-verdict")
        .collect();
    assert_eq!(
        reports.len(),
        2,
        "one report per declared model\n{}",
        run.describe()
    );
    assert!(
        ws.join("target/rmlx/smollm2-8bit/config.json").is_file(),
        "probe built the stale models first"
    );
    let by = |name: &str| {
        reports
            .iter()
            .find(|r| r["model"] == name)
            .unwrap_or_else(|| panic!("no report for {name}\n{}", run.describe()))
    };
    let q8 = by("smollm2-8bit");
    assert_eq!(verdict(q8), "ok", "{q8:#}");
    assert!(
        q8["answer"].as_str().unwrap_or_default().contains("Paris"),
        "{q8:#}"
    );
    let g64 = by("smollm2-g64");
    assert!(
        ["unexpected-answer", "diverged"].contains(&verdict(g64)),
        "re-quantizing the 4-bit source to 4-bit g64 must be flagged: {g64:#}"
    );
    assert_eq!(run.code, Some(1), "a flagged model makes probe exit 1");
}
