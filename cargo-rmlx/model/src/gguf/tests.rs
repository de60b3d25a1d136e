//! Tests of the whole GGUF path on synthetic files: a tiny GGUF writer, reader validation
//! (bad magic, bad version, truncation, absurd counts) and end-to-end imports of a tiny llama.

use std::path::Path;
use std::str::FromStr;

use half::{bf16, f16};
use serde_json::Value;

use super::arch::unpermute_rows;
use super::quants::{self, GgmlType};
use super::reader::MetaValue;
use super::tokenizer::tests::tiny_vocab;
use super::*;

/// Writes GGUF files for tests.
pub(crate) struct GgufWriter {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, MetaValue)>,
    pub tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(a) => {
            out.extend(a.first().map_or(0, type_id).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(&mut self, k: &str, v: MetaValue) -> &mut Self {
        self.kvs.push((k.to_owned(), v));
        self
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_owned(), dims.to_vec(), ty, data));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = align(offset + data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        out
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }
}

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.to_owned())
}

fn err_code(path: &Path) -> (&'static str, String) {
    let e = GgufFile::open(path).unwrap_err();
    (e.code.as_str(), e.message.clone())
}

#[test]
fn reader_round_trips_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let mut w = GgufWriter::new();
    w.alignment = 64;
    w.kv("general.alignment", MetaValue::U32(64))
        .kv("general.architecture", s("llama"))
        .kv("u8", MetaValue::U8(7))
        .kv("i8", MetaValue::I8(-7))
        .kv("u16", MetaValue::U16(700))
        .kv("i16", MetaValue::I16(-700))
        .kv("i32", MetaValue::I32(-70000))
        .kv("u64", MetaValue::U64(1 << 40))
        .kv("i64", MetaValue::I64(-(1 << 40)))
        .kv("f32", MetaValue::F32(0.5))
        .kv("f64", MetaValue::F64(0.25))
        .kv("flag", MetaValue::Bool(true))
        .kv("strs", MetaValue::Array(vec![s("a b"), s(""), s("Ġ")]))
        .kv(
            "nested",
            MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I32(1)])]),
        );
    let f: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.tensor("m", &[3, 2], GgmlType::F32, f);
    w.tensor("v", &[5], GgmlType::F16, vec![0; 10]);
    w.write(&path);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("u8"), Some(7));
    assert_eq!(g.get("i8"), Some(&MetaValue::I8(-7)));
    assert_eq!(g.get_u32("u16"), Some(700));
    assert_eq!(g.get("i16").and_then(MetaValue::as_i64), Some(-700));
    assert_eq!(g.get_u32("i32"), None);
    assert_eq!(g.get_u64("u64"), Some(1 << 40));
    assert_eq!(g.get("i64").and_then(MetaValue::as_i64), Some(-(1 << 40)));
    assert_eq!(g.get_f32("f32"), Some(0.5));
    assert_eq!(g.get_f64("f64"), Some(0.25));
    assert_eq!(g.get_bool("flag"), Some(true));
    assert_eq!(g.get_str_array("strs"), Some(vec!["a b", "", "Ġ"]));
    assert_eq!(g.get_array("nested").map(|a| a.len()), Some(1));
    assert_eq!(g.get_str("missing"), None);
    let m = g.tensor("m").unwrap();
    assert_eq!(m.shape(), vec![2, 3]);
    assert_eq!(m.info.row_len(), 3);
    assert_eq!(m.info.n_rows(), 2);
    assert_eq!(
        quants::dequantize(m.ggml_type(), &m.read().unwrap()).unwrap(),
        [0., 1., 2., 3., 4., 5.]
    );
    let v = g.tensor("v").unwrap();
    assert_eq!(v.info.offset % 64, 0);
    assert_eq!(v.read().unwrap().len(), 10);
    assert!(g.tensor("nope").is_none());
}

#[test]
fn reader_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let mut w = GgufWriter::new();
    w.kv("general.architecture", s("llama"));
    w.tensor("t", &[32, 4], GgmlType::Q8_0, vec![0; 4 * 34]);
    let good = w.bytes();

    let mut b = good.clone();
    b[0] = b'X';
    std::fs::write(&path, &b).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::bad-magic");

    std::fs::write(&path, b"GG").unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::bad-magic");

    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::unsupported-version");

    // Cut into the tensor data: the error names the tensor and both sizes.
    std::fs::write(&path, &good[..128 + 100]).unwrap(); // data starts at 128
    let (code, msg) = err_code(&path);
    assert_eq!(code, "rmlx::gguf::truncated");
    assert!(msg.contains("`t`") && msg.contains("136 bytes"), "{msg}");

    // Cut into the header.
    std::fs::write(&path, &good[..40]).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::truncated");

    // Absurd counts are refused before allocating.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::bad-count");
    let mut w2 = GgufWriter::new();
    w2.kv("arr", MetaValue::Array(vec![s("x")]));
    let mut b = w2.bytes();
    // The array length sits after magic, version, counts, key, value type and element type.
    let at = 4 + 4 + 8 + 8 + 8 + 3 + 4 + 4;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::bad-count");

    // Row length not a multiple of the block size.
    let mut w3 = GgufWriter::new();
    w3.tensor("q", &[16, 1], GgmlType::Q4_0, vec![0; 18]);
    w3.write(&path);
    assert_eq!(err_code(&path).0, "rmlx::gguf::bad-tensor");

    // Unknown ggml type id.
    let mut b = good.clone();
    // header (24) + the one key/value (8 + 20 key bytes, 4 type, 8 + 5 value bytes), then the
    // tensor info: name (8 + 1), n_dims (4), two dims (16), type.
    let info_start = 4 + 4 + 8 + 8 + (8 + 20 + 4 + 8 + 5);
    let ty_at = info_start + 8 + 1 + 4 + 16;
    assert_eq!(
        u32::from_le_bytes(b[ty_at..ty_at + 4].try_into().unwrap()),
        8
    );
    b[ty_at..ty_at + 4].copy_from_slice(&77u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert_eq!(err_code(&path).0, "rmlx::gguf::unsupported-type");
}

// ---- a tiny llama ----

const HIDDEN: u64 = 64;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
const HEAD_DIM: u64 = HIDDEN / HEADS;
const FF: u64 = 256;

struct Rng(u64);
impl Rng {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u8
    }
    fn f16(&mut self) -> [u8; 2] {
        let v = (self.byte() as f32 + 1.0) / 2048.0 * if self.byte() & 1 == 0 { 1.0 } else { -1.0 };
        f16::from_f32(v).to_le_bytes()
    }
}

/// Random blocks of a quantized type with sane f16 scales.
fn blocks(ty: GgmlType, n_values: u64, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = n_values as usize / ty.block_size();
    let mut out = Vec::new();
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..ty.type_size()).map(|_| rng.byte()).collect();
        let scale_at: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[],
        };
        for &a in scale_at {
            b[a..a + 2].copy_from_slice(&rng.f16());
        }
        out.extend(b);
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn tiny_llama(embed_ty: GgmlType) -> GgufWriter {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (tokens, types, merges) = tiny_vocab();
    let vocab = tokens.len() as u64;
    let mut w = GgufWriter::new();
    w.kv("general.architecture", s("llama"))
        .kv("llama.block_count", MetaValue::U32(1))
        .kv("llama.context_length", MetaValue::U32(2048))
        .kv("llama.embedding_length", MetaValue::U32(HIDDEN as u32))
        .kv("llama.feed_forward_length", MetaValue::U32(FF as u32))
        .kv("llama.attention.head_count", MetaValue::U32(HEADS as u32))
        .kv(
            "llama.attention.head_count_kv",
            MetaValue::U32(KV_HEADS as u32),
        )
        .kv("llama.rope.freq_base", MetaValue::F32(100000.0))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .kv(
            "llama.rope.dimension_count",
            MetaValue::U32(HEAD_DIM as u32),
        )
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv(
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.iter().map(|t| s(t)).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t as i32)).collect()),
        )
        .kv(
            "tokenizer.ggml.merges",
            MetaValue::Array(merges.iter().map(|m| s(m)).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .kv("tokenizer.ggml.padding_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .kv(
            "tokenizer.chat_template",
            s("{{ bos_token }}{{ messages[0]['content'] }}"),
        );
    let norm: Vec<f32> = (0..HIDDEN).map(|i| 1.0 + i as f32 / 64.0).collect();
    w.tensor(
        "token_embd.weight",
        &[HIDDEN, vocab],
        embed_ty,
        blocks(embed_ty, HIDDEN * vocab, &mut rng),
    );
    w.tensor(
        "output_norm.weight",
        &[HIDDEN],
        GgmlType::F32,
        f32_bytes(&norm),
    );
    w.tensor(
        "blk.0.attn_norm.weight",
        &[HIDDEN],
        GgmlType::F32,
        f32_bytes(&norm),
    );
    w.tensor(
        "blk.0.ffn_norm.weight",
        &[HIDDEN],
        GgmlType::F32,
        f32_bytes(&norm),
    );
    let kv = KV_HEADS * HEAD_DIM;
    for (name, dims, ty) in [
        ("blk.0.attn_q.weight", [HIDDEN, HIDDEN], GgmlType::Q4_1),
        ("blk.0.attn_k.weight", [HIDDEN, kv], GgmlType::Q4_0),
        ("blk.0.attn_v.weight", [HIDDEN, kv], GgmlType::Q8_0),
        ("blk.0.attn_output.weight", [HIDDEN, HIDDEN], GgmlType::Q4_1),
        ("blk.0.ffn_gate.weight", [HIDDEN, FF], GgmlType::Q4_1),
        ("blk.0.ffn_down.weight", [FF, HIDDEN], GgmlType::Q6_K),
    ] {
        w.tensor(name, &dims, ty, blocks(ty, dims[0] * dims[1], &mut rng));
    }
    let up: Vec<u8> = (0..HIDDEN * FF)
        .flat_map(|i| f16::from_f32((i % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect();
    w.tensor("blk.0.ffn_up.weight", &[HIDDEN, FF], GgmlType::F16, up);
    w
}

/// Reads one tensor of a safetensors file as (dtype, shape, bytes).
fn st_tensor(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
) -> (safetensors::Dtype, Vec<usize>, Vec<u8>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn import_tiny_llama_keeps_legacy_quants_and_unpermutes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    tiny_llama(GgmlType::Q8_0).write(&src);
    let out = dir.path().join("models").join("tiny");
    let report = import(&src, &out, &ImportOptions::default()).unwrap();
    assert_eq!(report.architecture.name, "llama");
    assert_eq!(report.quantized.len(), 6, "{:?}", report.quantized);
    assert_eq!(report.dequantized, ["model.layers.0.mlp.down_proj.weight"]);
    assert_eq!(report.dense.len(), 5);
    assert_eq!(report.architecture.to_string(), "llama");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
        assert!(report.files.iter().any(|x| x == f));
    }
    // No temporary directory is left next to the output (only its lock file).
    let mut leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    leftovers.sort();
    assert_eq!(leftovers, [".tiny.lock", "tiny"]);

    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["hidden_size"], HIDDEN);
    assert_eq!(cfg["intermediate_size"], FF);
    assert_eq!(cfg["num_attention_heads"], HEADS);
    assert_eq!(cfg["num_key_value_heads"], KV_HEADS);
    assert_eq!(cfg["head_dim"], HEAD_DIM);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["rope_theta"], 100000.0);
    assert_eq!(cfg["max_position_embeddings"], 2048);
    assert_eq!(cfg["vocab_size"], tiny_vocab().0.len());
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["bos_token_id"], 1);
    assert_eq!(cfg["eos_token_id"], 2);
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let q = &cfg["quantization"];
    assert_eq!(q["group_size"], 32);
    assert_eq!(q["bits"], 4);
    assert_eq!(q["mode"], "affine");
    assert_eq!(q["model.embed_tokens"]["bits"], 8);
    assert_eq!(q["model.layers.0.self_attn.v_proj"]["bits"], 8);
    assert!(q.get("model.layers.0.self_attn.q_proj").is_none());
    assert_eq!(cfg["quantization_config"], *q);

    let gguf = GgufFile::open(&src).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("lm_head.weight").is_err());
    assert!(st.tensor("model.layers.0.mlp.down_proj.scales").is_err());

    // Quantized tensors: MLX dequantization equals GGUF dequantization, rows un-permuted for
    // q/k and untouched otherwise.
    for (gname, hname, bits, heads) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj",
            4,
            Some(HEADS),
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj",
            4,
            Some(KV_HEADS),
        ),
        (
            "blk.0.attn_v.weight",
            "model.layers.0.self_attn.v_proj",
            8,
            None,
        ),
        ("token_embd.weight", "model.embed_tokens", 8, None),
    ] {
        let t = gguf.tensor(gname).unwrap();
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let reference = quants::dequantize(t.ggml_type(), &t.read().unwrap()).unwrap();
        let src_rows: Vec<usize> = match heads {
            Some(h) => unpermute_rows(rows, h as usize).unwrap(),
            None => (0..rows).collect(),
        };
        let (wd, ws, wb) = st_tensor(&st, &format!("{hname}.weight"));
        let (sd, ss, sb) = st_tensor(&st, &format!("{hname}.scales"));
        let (bd, bs, bb) = st_tensor(&st, &format!("{hname}.biases"));
        assert_eq!(wd, safetensors::Dtype::U32);
        assert_eq!(ws, vec![rows, cols * bits / 32]);
        assert_eq!((sd, bd), (safetensors::Dtype::F16, safetensors::Dtype::F16));
        assert_eq!(ss, vec![rows, cols / 32]);
        assert_eq!(bs, ss);
        let mlx =
            quants::mlx_affine_dequantize(&u32s(&wb), &f16s(&sb), &f16s(&bb), bits as u32, 32);
        for r in 0..rows {
            let src_row = src_rows[r];
            for c in 0..cols {
                let (a, b) = (mlx[r * cols + c], reference[src_row * cols + c]);
                assert!(a == b, "{hname}[{r},{c}] = {a}, GGUF row {src_row} has {b}");
            }
        }
    }

    // Dense tensors: bf16 of the f32 values.
    let t = gguf.tensor("blk.0.ffn_down.weight").unwrap();
    let reference = quants::dequantize(t.ggml_type(), &t.read().unwrap()).unwrap();
    let (d, shape, b) = st_tensor(&st, "model.layers.0.mlp.down_proj.weight");
    assert_eq!(d, safetensors::Dtype::BF16);
    assert_eq!(shape, vec![HIDDEN as usize, FF as usize]);
    for (i, c) in b.chunks_exact(2).enumerate() {
        assert_eq!(
            bf16::from_le_bytes([c[0], c[1]]),
            bf16::from_f32(reference[i])
        );
    }
    let (d, shape, _) = st_tensor(&st, "model.norm.weight");
    assert_eq!(
        (d, shape),
        (safetensors::Dtype::BF16, vec![HIDDEN as usize])
    );
    let (d, shape, _) = st_tensor(&st, "model.layers.0.mlp.up_proj.weight");
    assert_eq!(
        (d, shape),
        (safetensors::Dtype::BF16, vec![FF as usize, HIDDEN as usize])
    );
    assert_eq!(
        st.names().len(),
        6 * 3 + 5,
        "6 quantized modules x 3 + 3 norms + down_proj + up_proj"
    );

    // Tokenizer files.
    let tok = tokenizers::Tokenizer::from_str(
        &std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let text = "Hello world 12345";
    let enc = tok.encode(text, true).unwrap();
    let pieces = enc.get_tokens();
    assert_eq!(&pieces[pieces.len() - 5..], ["1", "2", "3", "4", "5"]);
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["model_max_length"], 2048);
    assert_eq!(
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        tc["chat_template"].as_str().unwrap()
    );
    let gc = read_json(&out.join("generation_config.json"));
    assert_eq!(gc["bos_token_id"], 1);
    assert_eq!(gc["eos_token_id"], 2);

    // Importing again replaces the directory atomically.
    std::fs::write(out.join("stale.txt"), "x").unwrap();
    let opts = ImportOptions {
        keep_quantized: false,
        dtype: Dtype::Float16,
    };
    let report = import(&src, &out, &opts).unwrap();
    assert!(report.quantized.is_empty());
    assert!(!out.join("stale.txt").exists());
    let cfg = read_json(&out.join("config.json"));
    assert!(cfg.get("quantization").is_none());
    assert_eq!(cfg["torch_dtype"], "float16");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (d, shape, b) = st_tensor(&st, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(d, safetensors::Dtype::F16);
    assert_eq!(shape, vec![(KV_HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
    let t = gguf.tensor("blk.0.attn_k.weight").unwrap();
    let reference = quants::dequantize(t.ggml_type(), &t.read().unwrap()).unwrap();
    let src_rows = unpermute_rows(shape[0], KV_HEADS as usize).unwrap();
    let got = f16s(&b);
    for r in 0..shape[0] {
        for c in 0..shape[1] {
            assert_eq!(
                got[r * shape[1] + c],
                f16::from_f32(reference[src_rows[r] * shape[1] + c])
            );
        }
    }
}

#[test]
fn import_falls_back_to_dense_when_bias_overflows_f16() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    let mut w = tiny_llama(GgmlType::Q8_0);
    // Give the embedding one block with d = 1000: -128 * d overflows f16.
    let embd = &mut w.tensors[0];
    assert_eq!(embd.0, "token_embd.weight");
    embd.3[0..2].copy_from_slice(&f16::from_f32(1000.0).to_le_bytes());
    w.write(&src);
    let out = dir.path().join("out");
    let report = import(&src, &out, &ImportOptions::default()).unwrap();
    let embed = report
        .tensors
        .iter()
        .find(|t| t.gguf_name == "token_embd.weight")
        .unwrap();
    assert_eq!(embed.action, TensorAction::Dequantized);
    let cfg = read_json(&out.join("config.json"));
    // Now only v_proj is 8-bit: it keeps its override, the embedding gets none.
    assert!(cfg["quantization"].get("model.embed_tokens").is_none());
    assert_eq!(
        cfg["quantization"]["model.layers.0.self_attn.v_proj"]["bits"],
        8
    );
}

#[test]
fn import_errors_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.gguf");
    let mut w = tiny_llama(GgmlType::Q8_0);
    w.kvs[0].1 = s("mamba");
    w.write(&src);
    let out = dir.path().join("out");
    let e = import(&src, &out, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::unsupported-architecture");
    assert!(!out.exists());

    let mut w = tiny_llama(GgmlType::Q8_0);
    w.tensor("blk.0.mystery.weight", &[4], GgmlType::F32, vec![0; 16]);
    w.write(&src);
    let e = import(&src, &out, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::unknown-tensor");

    let mut w = tiny_llama(GgmlType::Q8_0);
    w.kvs.retain(|(k, _)| k != "tokenizer.ggml.model");
    w.kv("tokenizer.ggml.model", s("bert"));
    w.write(&src);
    let e = import(&src, &out, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::unsupported-tokenizer");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only x.gguf"
    );
}

fn set_kv(w: &mut GgufWriter, key: &str, v: MetaValue) {
    match w.kvs.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = v,
        None => {
            w.kv(key, v);
        }
    }
}

#[test]
fn metadata_sizes_are_checked_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.gguf");
    let out = dir.path().join("out");
    let cases: [(&str, MetaValue, &str, &str); 4] = [
        (
            "llama.block_count",
            MetaValue::U32(u32::MAX),
            "rmlx::gguf::size-limit",
            "4294967295",
        ),
        (
            "llama.block_count",
            MetaValue::U32(2),
            "rmlx::gguf::bad-metadata",
            "tensors for 1 blocks",
        ),
        (
            "llama.embedding_length",
            MetaValue::U64(1 << 40),
            "rmlx::gguf::size-limit",
            "1099511627776",
        ),
        (
            "tokenizer.ggml.eos_token_id",
            MetaValue::U64(1 << 32),
            "rmlx::gguf::bad-metadata",
            "4294967296",
        ),
    ];
    for (key, value, code, needle) in cases {
        let mut w = tiny_llama(GgmlType::Q8_0);
        set_kv(&mut w, key, value);
        w.write(&src);
        let e = import(&src, &out, &ImportOptions::default()).unwrap_err();
        assert_eq!(e.code, code, "{key}: {}", e.message);
        assert!(
            e.message.contains(key) && e.message.contains(needle),
            "{key}: {}",
            e.message
        );
        assert!(!out.exists());
    }
}

#[test]
fn a_gguf_that_shrinks_after_open_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.gguf");
    tiny_llama(GgmlType::Q8_0).write(&src);
    let gguf = GgufFile::open(&src).unwrap();
    let last = gguf.tensors().last().unwrap().clone();
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.set_len(gguf.data_offset() + last.offset).unwrap();
    let e = gguf.view(&last).read().unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::truncated");
    assert!(
        e.message.contains(&format!("`{}`", last.name)) && e.message.contains("shrank"),
        "{}",
        e.message
    );
    // The import of the shrunk file fails the same way and leaves nothing behind.
    let out = dir.path().join("out");
    let e = import(&src, &out, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::truncated");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "x.gguf")
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn a_directory_is_not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(dir.path()).unwrap_err();
    assert_eq!(e.code, "rmlx::gguf::not-a-file");
    assert!(e.message.contains("is a directory"), "{}", e.message);
}

#[test]
fn import_to_respects_existing_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.gguf");
    tiny_llama(GgmlType::Q8_0).write(&src);
    let opts = ImportOptions::default();
    for existing in [Existing::Refuse, Existing::Replace] {
        let e = import_to(&src, &src, &opts, existing).unwrap_err();
        assert_eq!(e.code, "rmlx::convert::output-is-input");
        assert!(src.is_file());
    }
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let e = import_to(&src, &file, &opts, Existing::Refuse).unwrap_err();
    assert_eq!(e.code, "rmlx::convert::output-exists");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    import_to(&src, &file, &opts, Existing::Replace).unwrap();
    assert!(file.join("config.json").is_file());

    // Leftovers of killed runs are removed by the next writer of that output.
    let out = dir.path().join("out");
    for stale in [".out.rmlx-import-1-0", ".out.tmp-1", ".out.old-1"] {
        std::fs::create_dir_all(dir.path().join(stale).join("x")).unwrap();
    }
    import_to(&src, &out, &opts, Existing::Refuse).unwrap();
    let e = import_to(&src, &out, &opts, Existing::Refuse).unwrap_err();
    assert_eq!(e.code, "rmlx::convert::output-exists");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    assert_eq!(left, [".file.lock", ".out.lock"]);
}
