//! Bad rmlx.toml files and bad sources: a located error (the file, line and column in the
//! report, the offending text underlined), the documented exit code, and nothing written.

use std::fs;

use crate::common::{bf16_source, mlx_lm_convert, Ws};
use crate::support::{copy_model_dir, edit_config, Run};

const EXIT_USAGE: i32 = 2;

/// Asserts exit code 2, the diagnostic `code`, a location `file:line:col` in the report,
/// every needle, no panic, and that the build wrote nothing.
fn assert_located(ws: &Ws, run: &Run, code: &str, location: &str, needles: &[&str]) {
    let what = format!("{code} ({location})");
    assert!(
        !run.stderr.contains("panicked"),
        "{what}: panicked\n{}",
        run.describe()
    );
    assert_eq!(run.code, Some(EXIT_USAGE), "{what}\n{}", run.describe());
    assert!(
        run.stderr.contains(code),
        "{what}: no code\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains(location),
        "{what}: not located at {location}\n{}",
        run.describe()
    );
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "{what}: no {n:?}\n{}",
            run.describe()
        );
    }
    assert!(
        !ws.path().join("target").exists(),
        "{what}: the failed build wrote {}",
        ws.path().join("target").display()
    );
}

fn build(toml: &str) -> (Ws, Run) {
    let ws = Ws::new();
    ws.manifest(toml);
    let run = ws.run(&["build"]);
    (ws, run)
}

fn bf16() -> String {
    format!("{:?}", bf16_source().display().to_string())
}

#[test]
fn unknown_key() {
    let (ws, run) = build(&format!(
        "[models.m]\nsource = {}\nquantize = {{ bits = 4, group_size = 64 }}\n",
        bf16()
    ));
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::unknown-key",
        "rmlx.toml:3:24]",
        &["unknown key `group_size`", "did you mean `group-size`?"],
    );
    let (ws, run) = build("[model.m]\nsource = \"x\"\n");
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::unknown-key",
        "rmlx.toml:1:2]",
        &["model"],
    );
}

#[test]
fn wrong_type() {
    let (ws, run) = build(&format!(
        "[models.m]\nsource = {}\nquantize = {{ bits = \"4\" }}\n",
        bf16()
    ));
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::wrong-type",
        "rmlx.toml:3:21]",
        &["`bits` must be an integer, found a string"],
    );
    let (ws, run) = build("[models.m]\nsource = \"x\"\n[serve]\nport = \"80\"\n");
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::wrong-type",
        "rmlx.toml:4:8]",
        &["port"],
    );
}

#[test]
fn missing_source_and_template() {
    let (ws, run) = build("[models.m]\nsource = \"models/none.gguf\"\n");
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::missing-source",
        "rmlx.toml:2:10]",
        &["none.gguf", "no such file or directory"],
    );
    let (ws, run) = build(&format!(
        "[models.m]\nsource = {}\nchat-template = \"nope.jinja\"\n",
        bf16()
    ));
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::missing-chat-template",
        "rmlx.toml:3:17]",
        &["nope.jinja"],
    );
    let (ws, run) = build("[models.m]\nquantize = true\n");
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::missing-key",
        "rmlx.toml:1:9]",
        &["source"],
    );
}

#[test]
fn unsupported_bits_and_group_sizes() {
    for (q, location, needle) in [
        ("{ bits = 7 }", "rmlx.toml:3:21]", "does not support 7 bits"),
        (
            "{ bits = 4, group-size = 16 }",
            "rmlx.toml:3:37]",
            "group size 16",
        ),
        (
            "{ mode = \"mxfp4\", bits = 8 }",
            "rmlx.toml:3:37]",
            "does not support 8 bits",
        ),
        (
            "{ mode = \"nvfp4\", group-size = 64 }",
            "rmlx.toml:3:43]",
            "group size 64",
        ),
        (
            "{ mode = \"fp4\" }",
            "rmlx.toml:3:21]",
            "unknown quantization mode",
        ),
    ] {
        let (ws, run) = build(&format!(
            "[models.m]\nsource = {}\nquantize = {q}\n",
            bf16()
        ));
        assert_located(
            &ws,
            &run,
            "rmlx::manifest::invalid-value",
            location,
            &[needle],
        );
    }
    // Overrides are checked the same way.
    let (ws, run) = build(&format!(
        "[models.m]\nsource = {}\n[models.m.quantize]\noverrides = {{ lm_head = {{ bits = 1 }} }}\n",
        bf16()
    ));
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::invalid-value",
        "rmlx.toml:4:34]",
        &["1 bits"],
    );
}

#[test]
fn unknown_model_name() {
    let ws = Ws::new();
    ws.manifest(&format!("[models.smollm2]\nsource = {}\n", bf16()));
    let run = ws.run(&["build", "smolm2"]);
    assert_eq!(run.code, Some(EXIT_USAGE), "{}", run.describe());
    assert!(
        run.stderr.contains("rmlx::manifest::unknown-model"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("did you mean `smollm2`?"),
        "{}",
        run.describe()
    );
    assert!(!ws.path().join("target").exists());
}

/// A source directory whose config.json disagrees with its weights: the error points at
/// the config key and names the tensor.
#[test]
fn source_config_disagrees_with_weights() {
    for (key, value, location, tensor) in [
        (
            "intermediate_size",
            2048,
            "config.json:7:3]",
            "mlp.down_proj.weight",
        ),
        (
            "num_hidden_layers",
            28,
            "config.json:8:3]",
            "layers up to 29",
        ),
        (
            "hidden_size",
            640,
            "config.json:6:3]",
            "model.embed_tokens.weight",
        ),
        (
            "num_key_value_heads",
            1,
            "config.json:10:3]",
            "self_attn.k_proj.weight",
        ),
    ] {
        let ws = Ws::new();
        let src = ws.path().join("src");
        copy_model_dir(&bf16_source(), &src, &[]);
        edit_config(&src, |c| {
            c.insert(key.into(), value.into());
        });
        ws.manifest("[models.m]\nsource = \"src\"\nquantize = true\n");
        let run = ws.run(&["build"]);
        assert_located(
            &ws,
            &run,
            "rmlx::build::source-mismatch",
            location,
            &[key, tensor],
        );
    }
}

/// An MLX-quantized source whose config.json claims other quantization settings than its
/// tensors have.
#[test]
fn quantized_source_with_wrong_quantization_block() {
    let theirs = mlx_lm_convert(&bf16_source(), &["-q"]);
    let ws = Ws::new();
    let src = ws.path().join("src");
    copy_model_dir(&theirs, &src, &[]);
    edit_config(&src, |c| {
        c.insert(
            "quantization".into(),
            serde_json::json!({"group_size": 64, "bits": 8, "mode": "affine"}),
        );
    });
    ws.manifest("[models.m]\nsource = \"src\"\n");
    let run = ws.run(&["build"]);
    assert_located(
        &ws,
        &run,
        "rmlx::build::source-mismatch",
        "config.json:",
        &[
            "is not affine 8-bit g64",
            "config.json says affine 8-bit g64",
        ],
    );
}

#[test]
fn not_a_model_file() {
    let ws = Ws::new();
    fs::write(ws.path().join("notes.txt"), "hello").unwrap();
    ws.manifest("[models.m]\nsource = \"notes.txt\"\n");
    let run = ws.run(&["build"]);
    assert_located(
        &ws,
        &run,
        "rmlx::manifest::bad-source",
        "rmlx.toml:2:10]",
        &["not a GGUF file"],
    );
}
