//! `cargo rmlx build` of each architecture's tiny Hugging Face checkpoint
//! (`scripts/tiny_models.py`) is byte-identical to `mlx_lm convert` of the same directory:
//! the float copy, affine 4-bit g64 and, for gpt_oss, mxfp4 — every safetensors file byte
//! for byte (each tensor, the data order, the header), config.json and the index file; the
//! same with small shards (several files); and gpt-oss's released MXFP4 layout built as
//! stored. These need no engine for the architecture.
//! And checkpoints the conversion rules cannot convert fail with located errors.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::{flat, tensors, Ws};
use crate::mlx_lm_build::{assert_same_tensors, assert_same_weight_files, Tensor};
use crate::support::{copy_model_dir, edit_config, Run};
use crate::tiny_build::{
    check_build, check_build_of, check_build_sharded, tiny_model, tiny_model_variant, Mode,
};

/// One test per listed mode: `build_matches_mlx_lm!(qwen3_moe, "qwen3_moe", [float, affine4]);`
macro_rules! build_matches_mlx_lm {
    ($name:ident, $model_type:literal, [$($mode:ident),* $(,)?]) => {
        mod $name {
            $(
                #[test]
                fn $mode() {
                    super::check_build($model_type, super::Mode::named(stringify!($mode)));
                }
            )*
        }
    };
}

build_matches_mlx_lm!(qwen3_moe, "qwen3_moe", [float, affine4]);
build_matches_mlx_lm!(phi3, "phi3", [float, affine4]);
build_matches_mlx_lm!(olmo2, "olmo2", [float, affine4]);
build_matches_mlx_lm!(smollm3, "smollm3", [float, affine4]);
build_matches_mlx_lm!(gpt_oss, "gpt_oss", [float, affine4, mxfp4]);
build_matches_mlx_lm!(qwen3_5, "qwen3_5", [float, affine4]);
build_matches_mlx_lm!(qwen3_5_moe, "qwen3_5_moe", [float, affine4]);
build_matches_mlx_lm!(gemma4_text, "gemma4_text", [float, affine4]);
build_matches_mlx_lm!(gemma4, "gemma4", [float, affine4]);
build_matches_mlx_lm!(ministral3, "ministral3", [float, affine4]);
build_matches_mlx_lm!(mistral3, "mistral3", [float, affine4]);

/// gpt-oss as released (MXFP4 `*_blocks`/`*_scales` experts, `quant_method: mxfp4`), built
/// as stored: the experts stay MXFP4 in mlx-lm's names, everything else is copied.
#[test]
fn gpt_oss_released_mxfp4_as_stored() {
    let source = tiny_model_variant("gpt_oss", "mxfp4-native");
    check_build_of(&source, "gpt_oss (released mxfp4)", Mode::Float);
}

/// A shard size that splits a tiny model into several files (its embedding alone is 1.5 MB
/// at 4 bits).
const SMALL_SHARDS: u64 = 1_000_000;

/// Sharded like mlx-lm: `make_shards` in mlx-lm's parameter order, each shard in MLX's order.
fn check_sharded(model_type: &str, mode: Mode) {
    let files = check_build_sharded(
        &tiny_model(model_type),
        model_type,
        mode,
        Some(SMALL_SHARDS),
    );
    assert!(
        files >= 3,
        "{model_type}: {files} shard(s), expected several"
    );
}

#[test]
fn sharded_qwen3_5_moe_affine4() {
    check_sharded("qwen3_5_moe", Mode::Affine4);
}

#[test]
fn sharded_gpt_oss_mxfp4() {
    check_sharded("gpt_oss", Mode::Mxfp4);
}

#[test]
fn sharded_gemma4_float() {
    check_sharded("gemma4", Mode::Float);
}

/// A file with mlx-lm's tensors in another layout (the safetensors crate's: sorted, padded
/// header) fails the byte comparison with the first differing byte and both data orders.
#[test]
fn a_different_layout_is_located() {
    let theirs = crate::tiny_build::mlx_lm_convert("qwen3_moe", Mode::Float);
    let ws = Ws::new();
    let ours = ws.path().join("ours");
    fs::create_dir_all(&ours).unwrap();
    write_f32_safetensors(&ours.join("model.safetensors"), &tensors(&theirs));
    assert_same_tensors(&ours, &theirs);
    let panic = std::panic::catch_unwind(|| assert_same_weight_files(&ours, &theirs))
        .expect_err("the layouts differ");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    for needle in [
        "model.safetensors: first difference at byte ",
        "the data orders agree on the first ",
        " of 38 vs 38 tensors, then",
        "ours:   [\"",
        "theirs: [\"",
    ] {
        assert!(message.contains(needle), "no {needle:?} in\n{message}");
    }
}

const EXIT_USAGE: i32 = 2;
const EXIT_UNSUPPORTED: i32 = 5;

/// A workspace whose model `m` is a copy of the tiny `model_type` checkpoint, its weights
/// edited by `edit`.
fn edited_source(model_type: &str, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> Ws {
    let ws = Ws::new();
    let src = ws.path().join("src");
    copy_model_dir(&tiny_model(model_type), &src, &["model.safetensors"]);
    let mut all = tensors(&tiny_model(model_type));
    edit(&mut all);
    write_f32_safetensors(&src.join("model.safetensors"), &all);
    ws.manifest("[models.m]\nsource = \"src\"\nquantize = true\n");
    ws
}

fn write_f32_safetensors(path: &Path, all: &BTreeMap<String, Tensor>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = all
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            assert_eq!(dtype, "F32", "{name}: the tiny models are float32");
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("a valid tensor");
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn assert_failed(ws: &Ws, run: &Run, exit: i32, needles: &[&str]) {
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert_eq!(run.code, Some(exit), "{}", run.describe());
    let text = flat(&run.stderr);
    for n in needles {
        assert!(text.contains(n), "no {n:?}\n{}", run.describe());
    }
    assert!(
        !ws.path().join("target").join("rmlx").join("m").exists(),
        "the failed build wrote an output"
    );
}

#[test]
fn missing_expert_is_named() {
    let gone = "model.layers.2.mlp.experts.3.up_proj.weight";
    let ws = edited_source("qwen3_moe", |t| {
        t.remove(gone).expect("the tiny model has 4 experts");
    });
    let run = ws.run(&["build"]);
    assert_failed(
        &ws,
        &run,
        EXIT_USAGE,
        &[
            "rmlx::build::source-mismatch",
            &format!("the checkpoint has no `{gone}`: config.json declares 4 experts"),
            "model.safetensors",
        ],
    );
}

#[test]
fn experts_of_different_shapes_are_named() {
    let odd = "model.layers.0.mlp.experts.1.down_proj.weight";
    let ws = edited_source("qwen3_moe", |t| {
        let (dtype, shape, bytes) = t.remove(odd).expect("present");
        let half = bytes.len() / 2;
        let shape = vec![shape[0], shape[1] / 2];
        t.insert(odd.to_string(), (dtype, shape, bytes[..half].to_vec()));
    });
    let run = ws.run(&["build"]);
    assert_failed(
        &ws,
        &run,
        EXIT_USAGE,
        &[
            "rmlx::build::source-mismatch",
            "experts of `model.layers.0.mlp.experts` disagree",
            &format!("`{odd}` is F32 [64, 32]"),
            "model.safetensors",
        ],
    );
}

#[test]
fn unsupported_architecture_is_located() {
    let ws = Ws::new();
    let src = ws.path().join("src");
    copy_model_dir(&tiny_model("qwen3_moe"), &src, &[]);
    edit_config(&src, |c| {
        c.insert("model_type".into(), "qwen9_moe".into());
    });
    ws.manifest("[models.m]\nsource = \"src\"\n");
    let run = ws.run(&["build"]);
    assert_failed(
        &ws,
        &run,
        EXIT_UNSUPPORTED,
        &[
            "rmlx::build::unsupported-architecture",
            "cannot convert model_type `qwen9_moe`",
            "config.json:",
            "converts: llama, mistral",
            "qwen3_moe",
            "gpt_oss",
        ],
    );
}
