//! Every kind of source: a GGUF file (imported first; Q4_1 blocks kept exactly when the
//! declared settings are their own), an MLX-quantized directory (copied when the settings
//! match, dequantized with a warning when they differ), and the output options (shards, a
//! chat-template override).

use std::fs;

use crate::common::{
    assert_same_tensors, bf16_source, flat, json, mlx_lm_convert, read, tensors, with_status, Ws,
};
use crate::support::{
    converted, generate, oracle, smollm2_gguf, OracleDtype, Variant, CHAT_PROMPT,
};

/// SmolLM2's GGUF holds Q4_1 layers and a Q8_0 embedding. Declared as affine 4-bit g32, the
/// layers are kept exactly as `cargo rmlx convert --keep-quantized` writes them, the
/// embedding is re-quantized (with a warning), and the model answers correctly.
#[test]
fn gguf_source() {
    let ws = Ws::new();
    let gguf = smollm2_gguf();
    ws.manifest(&format!(
        "[models.smol]\nsource = {:?}\nquantize = {{ mode = \"affine\", bits = 4, group-size = 32 }}\n",
        gguf.display().to_string()
    ));
    let run = ws.build_ok(&[]);
    assert_eq!(with_status(&run, "Building"), ["smol"], "{}", run.stderr);
    let text = flat(&run.stderr);
    assert!(
        text.contains("rmlx::build::requantize")
            && text.contains(
                "1 module of `smol` (e.g. `model.embed_tokens`) is stored as affine \
                              8-bit g32 in the source"
            ),
        "expected a re-quantization warning for the Q8_0 embedding\n{}",
        run.stderr
    );
    let ours = tensors(&ws.out("smol"));
    let kept = tensors(&converted(Variant::Q4));
    let mut same = 0;
    for (name, t) in &kept {
        if name.starts_with("model.embed_tokens.") {
            continue;
        }
        assert_eq!(ours.get(name), Some(t), "{name} was not kept exactly");
        same += 1;
    }
    assert_eq!(same, kept.len() - 3);
    assert_eq!(ours["model.embed_tokens.weight"].1, [49152, 576 * 4 / 32]);
    let config = json(&ws.out("smol").join("config.json"));
    assert_eq!(
        config["quantization"],
        serde_json::json!({"group_size": 32, "bits": 4, "mode": "affine"})
    );
    let out = ws.run(&[
        "generate",
        "smol",
        "--chat",
        "--prompt",
        CHAT_PROMPT,
        "-n",
        "12",
    ]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("Paris"), "{}", out.describe());
    // mlx-lm loads it too (kept float16 scales next to re-quantized bfloat16 ones).
    let theirs = oracle(&ws.out("smol"), CHAT_PROMPT, true, OracleDtype::Model);
    assert!(
        theirs.text.contains("Paris"),
        "mlx-lm answered {:?}",
        theirs.text
    );
}

/// An MLX-quantized directory as the source: the same settings copy it (no warning, the
/// tensors unchanged); other settings dequantize and re-quantize with a warning; `false`
/// writes it dense.
#[test]
fn mlx_quantized_source() {
    let theirs = mlx_lm_convert(&bf16_source(), &["-q"]);
    let ws = Ws::new();
    let src = format!("{:?}", theirs.display().to_string());
    ws.manifest(&format!(
        "[models.same]\nsource = {src}\nquantize = true\n\n\
         [models.asis]\nsource = {src}\n\n\
         [models.g32]\nsource = {src}\nquantize = {{ bits = 4, group-size = 32 }}\n\n\
         [models.dense]\nsource = {src}\nquantize = false\n"
    ));
    let run = ws.build_ok(&[]);
    assert_eq!(
        with_status(&run, "Building"),
        ["asis", "dense", "g32", "same"],
        "{}",
        run.stderr
    );
    assert_same_tensors(&ws.out("same"), &theirs);
    assert_same_tensors(&ws.out("asis"), &theirs);
    assert_eq!(
        read(&ws.out("same").join("config.json")),
        read(&theirs.join("config.json"))
    );
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("rmlx::build::"))
        .collect();
    assert_eq!(
        warnings,
        ["rmlx::build::requantize", "rmlx::build::dequantize"],
        "{}",
        run.stderr
    );
    assert!(
        flat(&run.stderr).contains(
            "211 modules of `g32` (e.g. `model.embed_tokens`) are stored as affine 4-bit g64 \
             in the source; they are dequantized and re-quantized to affine 4-bit g32, which \
             loses quality"
        ),
        "{}",
        run.stderr
    );
    let g32 = json(&ws.out("g32").join("config.json"));
    assert_eq!(g32["quantization"]["group_size"], 32);
    let dense = json(&ws.out("dense").join("config.json"));
    assert!(dense.get("quantization").is_none() && dense.get("quantization_config").is_none());
    let t = tensors(&ws.out("dense"));
    assert_eq!(t["model.embed_tokens.weight"].0, "BF16");
    assert!(!t.keys().any(|k| k.ends_with(".scales")));
    // Both re-encoded outputs run in our engine and in mlx-lm.
    for name in ["g32", "dense"] {
        let ours = generate(&ws.out(name), CHAT_PROMPT, true, 4, &[]);
        let reference = oracle(&ws.out(name), CHAT_PROMPT, true, OracleDtype::Model);
        assert_eq!(ours.prompt_ids, reference.prompt_ids, "{name}");
    }
}

/// Shards past the shard size (with the index mlx-lm writes), a chat-template override
/// and `dtype`, all loadable by both tools.
#[test]
fn shards_and_template_override() {
    let ws = Ws::new();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                    {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    fs::write(ws.path().join("plain.jinja"), template).unwrap();
    ws.manifest(&format!(
        "[models.sharded]\nsource = {:?}\nchat-template = \"plain.jinja\"\ndtype = \"float32\"\n\
         quantize = {{ bits = 8, group-size = 64 }}\n",
        bf16_source().display().to_string()
    ));
    let run = crate::common::cargo_rmlx(
        ws.path(),
        &["build"],
        &[("RMLX_MAX_SHARD_BYTES", "40000000".as_ref())],
    );
    assert!(run.success(), "{}", run.describe());
    let out = ws.out("sharded");
    let index = json(&out.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort();
    files.dedup();
    assert!(files.len() >= 3, "expected several shards, got {files:?}");
    assert_eq!(
        files[0],
        format!("model-00001-of-{:05}.safetensors", files.len())
    );
    for f in &files {
        assert!(out.join(f).is_file(), "{f} named by the index is missing");
    }
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(read(&out.join("chat_template.jinja")), template);
    let config = json(&out.join("config.json"));
    assert_eq!(config["torch_dtype"], "float32");
    assert_eq!(tensors(&out)["model.layers.0.mlp.up_proj.scales"].0, "F32");
    let ours = generate(&out, "Hi", true, 4, &[]);
    let reference = oracle(&out, "Hi", true, OracleDtype::Model);
    assert_eq!(ours.prompt_ids, reference.prompt_ids);
    assert_eq!(ours.generated_ids, reference.generated_ids[..4]);
}
