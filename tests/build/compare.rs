//! `cargo rmlx build` next to `mlx_lm convert` on the same dense bf16 source: the
//! safetensors files are byte-identical (same MLX quantizer, same module choice, same dtype
//! rule, same tensor order and header), config.json and the index file are byte-identical
//! too, and each tool loads the other's output.

use std::path::{Path, PathBuf};

use crate::common::{assert_same_tensors, bf16_source, json, mlx_lm_convert, read, shared_build};
use crate::mlx_lm_build::assert_same_weight_files;
use crate::support::{generate, oracle, OracleDtype, CHAT_PROMPT};

const AFFINE: &str = "quantize = { mode = \"affine\", bits = 4, group-size = 64 }";
const MXFP4: &str = "quantize = { mode = \"mxfp4\" }";

fn ours_affine() -> PathBuf {
    shared_build("cmp-affine", AFFINE)
}

fn theirs_affine() -> PathBuf {
    // `-q` alone is mlx-lm's default: affine, 4 bits, group size 64.
    mlx_lm_convert(&bf16_source(), &["-q"])
}

fn ours_mxfp4() -> PathBuf {
    shared_build("cmp-mxfp4", MXFP4)
}

fn theirs_mxfp4() -> PathBuf {
    mlx_lm_convert(&bf16_source(), &["-q", "--q-mode", "mxfp4"])
}

fn assert_same_files(ours: &Path, theirs: &Path, file: &str) {
    assert_eq!(
        read(&ours.join(file)),
        read(&theirs.join(file)),
        "{file} differs between {} and {}",
        ours.display(),
        theirs.display()
    );
}

#[test]
fn affine_4bit_g64_is_byte_identical_to_mlx_lm_convert() {
    let (ours, theirs) = (ours_affine(), theirs_affine());
    let n = assert_same_tensors(&ours, &theirs);
    // 30 layers x 7 projections + the embedding, each weight/scales/biases, + 61 norms.
    assert_eq!(n, (30 * 7 + 1) * 3 + 61);
    assert_eq!(assert_same_weight_files(&ours, &theirs), 1);
    assert_same_files(&ours, &theirs, "config.json");
    assert_same_files(&ours, &theirs, "model.safetensors.index.json");
    let config = json(&ours.join("config.json"));
    let q = serde_json::json!({"group_size": 64, "bits": 4, "mode": "affine"});
    assert_eq!(config["quantization"], q);
    assert_eq!(config["quantization_config"], q);
}

#[test]
fn mxfp4_is_byte_identical_to_mlx_lm_convert() {
    let (ours, theirs) = (ours_mxfp4(), theirs_mxfp4());
    let n = assert_same_tensors(&ours, &theirs);
    // Microscaling modes have no biases.
    assert_eq!(n, (30 * 7 + 1) * 2 + 61);
    assert_eq!(assert_same_weight_files(&ours, &theirs), 1);
    assert_same_files(&ours, &theirs, "config.json");
    assert_same_files(&ours, &theirs, "model.safetensors.index.json");
    let config = json(&ours.join("config.json"));
    assert_eq!(
        config["quantization"],
        serde_json::json!({"group_size": 32, "bits": 4, "mode": "mxfp4"})
    );
}

/// `dtype = "float16"` is `mlx_lm convert --dtype float16`: the weights are cast before
/// quantizing, so scales and biases are float16. The weight files are byte-identical; config.json
/// differs in exactly one value: mlx-lm keeps the source's `torch_dtype` ("bfloat16") even
/// though it stored float16, we write the dtype the tensors are in.
#[test]
fn declared_dtype_matches_mlx_lm_dtype_flag() {
    let ours = shared_build("cmp-f16", &format!("{AFFINE}\ndtype = \"float16\""));
    let theirs = mlx_lm_convert(&bf16_source(), &["-q", "--dtype", "float16"]);
    assert_same_tensors(&ours, &theirs);
    assert_same_weight_files(&ours, &theirs);
    let mut a = json(&ours.join("config.json"));
    let mut b = json(&theirs.join("config.json"));
    assert_eq!(a["torch_dtype"], "float16");
    assert_eq!(b["torch_dtype"], "bfloat16");
    a["torch_dtype"] = "x".into();
    b["torch_dtype"] = "x".into();
    assert_eq!(a, b);
}

/// Ours runs mlx-lm's directory and mlx-lm runs ours; each tool gives the same greedy run
/// on both directories, and the two tools agree on the first token.
fn cross_load(ours: &Path, theirs: &Path) {
    let steps = 8;
    let ours_on_theirs = generate(theirs, CHAT_PROMPT, true, steps, &["--ignore-eos"]);
    let ours_on_ours = generate(ours, CHAT_PROMPT, true, steps, &["--ignore-eos"]);
    assert_eq!(ours_on_theirs.prompt_ids, ours_on_ours.prompt_ids);
    assert_eq!(ours_on_theirs.generated_ids, ours_on_ours.generated_ids);
    let theirs_on_ours = oracle(ours, CHAT_PROMPT, true, OracleDtype::Model);
    let theirs_on_theirs = oracle(theirs, CHAT_PROMPT, true, OracleDtype::Model);
    assert_eq!(theirs_on_ours.prompt_ids, theirs_on_theirs.prompt_ids);
    assert_eq!(theirs_on_ours.generated_ids, theirs_on_theirs.generated_ids);
    assert_eq!(theirs_on_ours.prompt_ids, ours_on_ours.prompt_ids);
    // The engines compute in different dtypes (float32 here, the stored dtype in mlx-lm);
    // the first token must agree whenever both are confident about it.
    let (a, b) = (&ours_on_ours.steps[0], &theirs_on_ours.steps[0]);
    if a.margin() > 0.5 && b.margin() > 0.5 {
        assert_eq!(
            a.rank(0).0,
            b.rank(0).0,
            "first token differs between the tools"
        );
    }
}

#[test]
fn affine_outputs_load_in_both_tools() {
    cross_load(&ours_affine(), &theirs_affine());
}

#[test]
fn mxfp4_outputs_load_in_both_tools() {
    cross_load(&ours_mxfp4(), &theirs_mxfp4());
}
