#!/usr/bin/env python3
"""Synthetic models of real architectures' shapes, for speed measurements at real sizes.

    synthetic_model.py list
    synthetic_model.py make NAME OUT_DIR --tokenizer DIR [--bits 4|8] [--group-size N]
                                         [--layers N] [--gguf FILE.gguf]

`make` writes an MLX model directory (config.json with mlx-lm's `quantization` block,
model.safetensors, the tokenizer files of DIR) whose weights are random but laid out exactly
as `mlx_lm convert -q` lays out the real checkpoint: every Linear and the embedding quantized
(affine, `bits`, `group_size`; MoE routers 8-bit g64 as mlx-lm's qwen3_moe predicate says),
norms in bfloat16. Weight values do not change throughput, so these directories measure speed
honestly; they prove nothing about numerics (the oracle tests do that on real models). Label
every number measured on them as synthetic.

The weights are written tensor by tensor, straight from a seeded random generator to the file
(random packed integers, random bfloat16 scales), so peak memory stays at one tensor: a
Qwen3-8B-shaped model is made in seconds to minutes where it will run, with numpy only (no
torch, no registry access).

`--gguf` (llama-family only, group size 32) also writes a GGUF of the *same* weights for
llama.cpp: 4-bit groups of 32 are exactly Q4_1 (scale, min) and 8-bit groups of 32 with the
bias at -128·scale (this script writes 8-bit that way) are exactly Q8_0; q/k rows are permuted
into llama.cpp's rope layout, the llama3 rope scaling goes in as `rope_freqs`, the vocabulary
and merges come from the tokenizer's tokenizer.json. (`--group-size 32` is then required.)

Published configurations used (the model cards' config.json):
- llama-3.2-1b: meta-llama/Llama-3.2-1B-Instruct — hidden 2048, 16 layers, 32 heads / 8 KV
  heads, head_dim 64, MLP 8192, vocab 128256, rope_theta 5e5 with llama3 scaling (factor 32,
  low/high freq factors 1/4, original context 8192), rms_norm_eps 1e-5, tied embeddings.
- qwen3-8b: Qwen/Qwen3-8B — hidden 4096, 36 layers, 32 heads / 8 KV heads, head_dim 128,
  MLP 12288, vocab 151936, rope_theta 1e6, rms_norm_eps 1e-6, q/k norms, untied LM head.
- qwen3-30b-a3b: Qwen/Qwen3-30B-A3B — hidden 2048, 48 layers, 32 heads / 4 KV heads,
  head_dim 128, 128 experts of MLP 768, top-8 with renormalised weights, vocab 151936,
  rope_theta 1e6, rms_norm_eps 1e-6, q/k norms, untied LM head.
- smollm2-135m: HuggingFaceTB/SmolLM2-135M-Instruct — hidden 576, 30 layers, 9 / 3 heads,
  head_dim 64, MLP 1536, vocab 49152, rope_theta 1e5, tied (for checking the script against
  the real model's speed).
"""

import argparse
import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

LLAMA_3_2_1B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
}

QWEN3_8B = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
}

QWEN3_30B_A3B = {
    "model_type": "qwen3_moe",
    "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
}

SMOLLM2_135M = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}

MODELS = {
    "llama-3.2-1b": LLAMA_3_2_1B,
    "qwen3-8b": QWEN3_8B,
    "qwen3-30b-a3b": QWEN3_30B_A3B,
    "smollm2-135m": SMOLLM2_135M,
}

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json"]


# ---------------------------------------------------------------------------- tensors

class Quant:
    """An affine-quantized `[..., out, inp]` Linear: weight, scales, biases."""

    def __init__(self, name, shape, bits, group):
        self.name, self.shape, self.bits, self.group = name, tuple(shape), bits, group

    def tensors(self):
        *lead, out, inp = self.shape
        if inp % self.group:
            raise SystemExit(f"{self.name}: {inp} input features are not groups of {self.group}")
        packed = (*lead, out, inp * self.bits // 32)
        groups = (*lead, out, inp // self.group)
        return [
            (f"{self.name}.weight", "U32", packed, lambda rng: packed_bytes(rng, packed)),
            (f"{self.name}.scales", "BF16", groups, lambda rng: self.scale_bits(rng, groups)),
            (f"{self.name}.biases", "BF16", groups, lambda rng: self.bias_bits(rng, groups)),
        ]

    def scale(self, rng, shape):
        """Scales giving weights of standard deviation ~1/sqrt(inp), rounded to bfloat16."""
        inp = self.shape[-1]
        levels = 2 ** self.bits
        q_std = np.sqrt((levels * levels - 1) / 12.0)
        base = 1.0 / np.sqrt(inp) / q_std
        s = base * (0.75 + 0.5 * rng.random(shape, dtype=np.float32))
        return to_bf16_bits(s.astype(np.float32))

    def scale_bits(self, rng, shape):
        return self.scale(rng, shape).tobytes()

    def bias_bits(self, rng, shape):
        # The same generator state as `scale_bits` saw: the bias is derived from the scale
        # (centred weights; -128·scale for 8 bits, which makes 8-bit groups of 32 exactly Q8_0).
        s = from_bf16_bits(self.scale(rng, shape))
        centre = 128.0 if self.bits == 8 else (2 ** self.bits - 1) / 2.0
        return to_bf16_bits((-centre * s).astype(np.float32)).tobytes()


def norm_tensor(name, size):
    return (name, "BF16", (size,), lambda rng: to_bf16_bits(
        (1.0 + 0.1 * (rng.random(size, dtype=np.float32) - 0.5)).astype(np.float32)).tobytes())


def packed_bytes(rng, shape):
    n = int(np.prod(shape)) * 4
    return rng.bytes(n)


def to_bf16_bits(a):
    """float32 → bfloat16 bit patterns (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def rng_for(seed, name):
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def model_tensors(cfg, bits, group):
    """(name, dtype, shape, generator) of every tensor, mlx-lm's layout after `convert -q`."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    hd, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    qkn = cfg["model_type"] in ("qwen3", "qwen3_moe")
    out = []
    overrides = {}

    def quant(name, shape, b=bits, g=group):
        out.extend(Quant(name, shape, b, g).tensors())

    quant("model.embed_tokens", (cfg["vocab_size"], h))
    for i in range(layers):
        p = f"model.layers.{i}"
        out.append(norm_tensor(f"{p}.input_layernorm.weight", h))
        out.append(norm_tensor(f"{p}.post_attention_layernorm.weight", h))
        quant(f"{p}.self_attn.q_proj", (nh * hd, h))
        quant(f"{p}.self_attn.k_proj", (nkv * hd, h))
        quant(f"{p}.self_attn.v_proj", (nkv * hd, h))
        quant(f"{p}.self_attn.o_proj", (h, nh * hd))
        if qkn:
            out.append(norm_tensor(f"{p}.self_attn.q_norm.weight", hd))
            out.append(norm_tensor(f"{p}.self_attn.k_norm.weight", hd))
        if cfg["model_type"] == "qwen3_moe":
            e, mi = cfg["num_experts"], cfg["moe_intermediate_size"]
            # mlx-lm's qwen3_moe quant_predicate: the router is 8-bit in groups of 64.
            quant(f"{p}.mlp.gate", (e, h), 8, 64)
            overrides[f"{p}.mlp.gate"] = {"group_size": 64, "bits": 8}
            quant(f"{p}.mlp.switch_mlp.gate_proj", (e, mi, h))
            quant(f"{p}.mlp.switch_mlp.up_proj", (e, mi, h))
            quant(f"{p}.mlp.switch_mlp.down_proj", (e, h, mi))
        else:
            mi = cfg["intermediate_size"]
            quant(f"{p}.mlp.gate_proj", (mi, h))
            quant(f"{p}.mlp.up_proj", (mi, h))
            quant(f"{p}.mlp.down_proj", (h, mi))
    out.append(norm_tensor("model.norm.weight", h))
    if not cfg["tie_word_embeddings"]:
        quant("lm_head", (cfg["vocab_size"], h))
    return sorted(out, key=lambda t: t[0]), overrides


# ---------------------------------------------------------------------------- safetensors

DTYPE_BYTES = {"U32": 4, "BF16": 2, "F32": 4}


def write_safetensors(path, tensors, seed):
    """Writes `tensors` to `path` one at a time (header first: every size is known)."""
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape)) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, (name, dtype, shape, make) in enumerate(tensors):
            # Scales and biases of one layer share a generator seed (see Quant.bias_bits).
            key = name.rsplit(".", 1)[0] + (".weight" if name.endswith(".weight") else ".sb")
            data = make(rng_for(seed, key))
            assert len(data) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
            f.write(data)
            if i % 50 == 0:
                print(f"  {i + 1}/{len(tensors)} tensors, {f.tell() / 2**30:.2f} GiB", file=sys.stderr)
    return offset


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return header, 8 + n


# ---------------------------------------------------------------------------- make

def make(args):
    cfg = dict(MODELS[args.name])
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Path(args.tokenizer)
    if not (tok / "tokenizer.json").is_file():
        raise SystemExit(f"--tokenizer {tok}: no tokenizer.json there")
    tensors, overrides = model_tensors(cfg, args.bits, args.group_size)
    cfg["quantization"] = {"group_size": args.group_size, "bits": args.bits, "mode": "affine", **overrides}
    cfg["quantization_config"] = cfg["quantization"]
    cfg["rmlx_synthetic"] = {"name": args.name, "seed": args.seed,
                             "note": "random weights of the published shape: for speed only"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copyfile(tok / name, out / name)
    total = write_safetensors(out / "model.safetensors", tensors, args.seed)
    print(f"wrote {out} ({total / 2**30:.2f} GiB of weights, {len(tensors)} tensors)")
    if args.gguf:
        write_gguf(out, cfg, Path(args.gguf), args)


# ---------------------------------------------------------------------------- GGUF

GGUF_F32, GGUF_Q4_1, GGUF_Q8_0 = 0, 3, 8
GGML_FTYPE = {4: 3, 8: 7}  # MOSTLY_Q4_1, MOSTLY_Q8_0


class GgufWriter:
    """A minimal GGUF v3 writer: metadata, tensor infos, 32-byte aligned data."""

    def __init__(self):
        self.kv = []
        self.infos = []

    def add(self, key, value, kind):
        self.kv.append((key, value, kind))

    @staticmethod
    def string(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    def encode_value(self, value, kind):
        scalar = {"u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?"), "u64": (10, "<Q")}
        if kind in scalar:
            code, fmt = scalar[kind]
            return struct.pack("<I", code) + struct.pack(fmt, value)
        if kind == "str":
            return struct.pack("<I", 8) + self.string(value)
        if kind == "arr_str":
            return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(self.string(v) for v in value)
        if kind == "arr_i32":
            return struct.pack("<IIQ", 9, 5, len(value)) + np.asarray(value, dtype="<i4").tobytes()
        raise ValueError(kind)

    def write(self, path, tensors):
        """`tensors`: (name, ggml type, shape (outer first), byte size, producer of bytes)."""
        with open(path, "wb") as f:
            f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(self.kv)))
            for key, value, kind in self.kv:
                f.write(self.string(key) + self.encode_value(value, kind))
            offset = 0
            for name, ggml, shape, size, _ in tensors:
                dims = list(reversed(shape))
                f.write(self.string(name) + struct.pack("<I", len(dims)))
                f.write(struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml, offset))
                offset += size + (-size % 32)
            f.write(b"\0" * (-f.tell() % 32))
            for name, _, _, size, produce in tensors:
                data = produce()
                assert len(data) == size, name
                f.write(data)
                f.write(b"\0" * (-size % 32))


def write_gguf(mlx_dir, cfg, path, args):
    if cfg["model_type"] != "llama" or args.group_size != 32:
        raise SystemExit("--gguf: llama-family models in groups of 32 only (exact Q4_1 / Q8_0)")
    header, base = read_safetensors_header(mlx_dir / "model.safetensors")
    blob = np.memmap(mlx_dir / "model.safetensors", dtype=np.uint8, mode="r")

    def raw(name):
        h = header[name]
        b, e = h["data_offsets"]
        return blob[base + b: base + e], h["shape"]

    w = GgufWriter()
    add_llama_metadata(w, cfg, args)
    add_vocabulary(w, mlx_dir, cfg)
    tensors = []

    def quantized(gguf_name, mlx_name, permute_heads=None):
        packed, shape = raw(f"{mlx_name}.weight")
        rows, cols = shape[0], shape[1] * 32 // args.bits
        size = rows * cols // 32 * (20 if args.bits == 4 else 34)
        order = rope_permutation(rows, permute_heads) if permute_heads else None

        def produce():
            return quant_blocks(raw(f"{mlx_name}.weight")[0], raw(f"{mlx_name}.scales")[0],
                                raw(f"{mlx_name}.biases")[0], rows, cols, args.bits, order)

        tensors.append((gguf_name, GGUF_Q4_1 if args.bits == 4 else GGUF_Q8_0, (rows, cols), size, produce))

    def norm(gguf_name, mlx_name):
        data, shape = raw(mlx_name)
        tensors.append((gguf_name, GGUF_F32, tuple(shape), int(np.prod(shape)) * 4,
                        lambda: from_bf16_bits(np.frombuffer(raw(mlx_name)[0], dtype="<u2")).tobytes()))

    quantized("token_embd.weight", "model.embed_tokens")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        norm(f"blk.{i}.attn_norm.weight", f"{p}.input_layernorm.weight")
        quantized(f"blk.{i}.attn_q.weight", f"{p}.self_attn.q_proj", cfg["num_attention_heads"])
        quantized(f"blk.{i}.attn_k.weight", f"{p}.self_attn.k_proj", cfg["num_key_value_heads"])
        quantized(f"blk.{i}.attn_v.weight", f"{p}.self_attn.v_proj")
        quantized(f"blk.{i}.attn_output.weight", f"{p}.self_attn.o_proj")
        norm(f"blk.{i}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight")
        quantized(f"blk.{i}.ffn_gate.weight", f"{p}.mlp.gate_proj")
        quantized(f"blk.{i}.ffn_up.weight", f"{p}.mlp.up_proj")
        quantized(f"blk.{i}.ffn_down.weight", f"{p}.mlp.down_proj")
    norm("output_norm.weight", "model.norm.weight")
    if not cfg["tie_word_embeddings"]:
        quantized("output.weight", "lm_head")
    if (rs := cfg.get("rope_scaling")) and rs.get("rope_type") == "llama3":
        freqs = llama3_rope_factors(cfg)
        tensors.append(("rope_freqs.weight", GGUF_F32, (len(freqs),), len(freqs) * 4, freqs.tobytes))
    w.write(path, tensors)
    print(f"wrote {path} (same weights, {'Q4_1' if args.bits == 4 else 'Q8_0'})")


def rope_permutation(rows, heads):
    """Row order of llama.cpp's q/k layout: per head, the Hugging Face rows
    [0, half, 1, half + 1, …] (the inverse of the un-permutation its importers apply)."""
    idx = np.arange(rows).reshape(heads, 2, rows // heads // 2)
    return idx.swapaxes(1, 2).reshape(rows)


def quant_blocks(packed, scales, biases, rows, cols, bits, order):
    """MLX affine groups of 32 → Q4_1 (d, m, 16 bytes: x[j] | x[j+16] << 4) or Q8_0 (d, int8)."""
    chunk = max(1, (1 << 24) // cols)
    out = []
    row_order = order if order is not None else np.arange(rows)
    packed = np.frombuffer(packed, dtype=np.uint8).reshape(rows, cols * bits // 8)
    s = from_bf16_bits(np.frombuffer(scales, dtype="<u2").reshape(rows, cols // 32)).astype("<f2")
    b = from_bf16_bits(np.frombuffer(biases, dtype="<u2").reshape(rows, cols // 32)).astype("<f2")
    for start in range(0, rows, chunk):
        sel = row_order[start:start + chunk]
        n = len(sel)
        p, d, m = packed[sel], s[sel], b[sel]
        if bits == 4:
            vals = np.empty((n, cols), dtype=np.uint8)
            vals[:, 0::2] = p & 0x0F
            vals[:, 1::2] = p >> 4
            vals = vals.reshape(n, cols // 32, 32)
            qs = (vals[:, :, :16] | (vals[:, :, 16:] << 4)).astype(np.uint8)
            block = np.concatenate([d.reshape(n, -1, 1).view(np.uint8), m.reshape(n, -1, 1).view(np.uint8), qs], axis=2)
        else:
            q = (p.astype(np.int16) - 128).astype(np.int8).reshape(n, cols // 32, 32)
            block = np.concatenate([d.reshape(n, -1, 1).view(np.uint8), q.view(np.uint8)], axis=2)
        out.append(np.ascontiguousarray(block).tobytes())
    return b"".join(out)


def llama3_rope_factors(cfg):
    """Per-frequency divisors of llama3 rope scaling, as llama.cpp's converter writes them."""
    rs, hd = cfg["rope_scaling"], cfg["head_dim"]
    base = cfg["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype="<f4")


def add_llama_metadata(w, cfg, args):
    w.add("general.architecture", "llama", "str")
    w.add("general.name", f"synthetic {args.name}", "str")
    w.add("general.file_type", GGML_FTYPE[args.bits], "u32")
    w.add("llama.context_length", cfg["max_position_embeddings"], "u32")
    w.add("llama.embedding_length", cfg["hidden_size"], "u32")
    w.add("llama.block_count", cfg["num_hidden_layers"], "u32")
    w.add("llama.feed_forward_length", cfg["intermediate_size"], "u32")
    w.add("llama.attention.head_count", cfg["num_attention_heads"], "u32")
    w.add("llama.attention.head_count_kv", cfg["num_key_value_heads"], "u32")
    w.add("llama.attention.key_length", cfg["head_dim"], "u32")
    w.add("llama.attention.value_length", cfg["head_dim"], "u32")
    w.add("llama.rope.dimension_count", cfg["head_dim"], "u32")
    w.add("llama.rope.freq_base", float(cfg["rope_theta"]), "f32")
    w.add("llama.attention.layer_norm_rms_epsilon", float(cfg["rms_norm_eps"]), "f32")
    w.add("llama.vocab_size", cfg["vocab_size"], "u32")


def add_vocabulary(w, mlx_dir, cfg):
    """gpt2-style BPE vocabulary of tokenizer.json, padded to `vocab_size` like the
    converters do."""
    tj = json.loads((mlx_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    special = set()
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    n = cfg["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # unused
    for tok, i in vocab.items():
        if i < n:
            tokens[i] = tok
            types[i] = 3 if i in special else 1
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    pre = "llama-bpe" if n >= 128000 else "smollm"
    w.add("tokenizer.ggml.model", "gpt2", "str")
    w.add("tokenizer.ggml.pre", pre, "str")
    w.add("tokenizer.ggml.tokens", tokens, "arr_str")
    w.add("tokenizer.ggml.token_type", types, "arr_i32")
    w.add("tokenizer.ggml.merges", merges, "arr_str")
    bos = cfg["bos_token_id"]
    eos = cfg["eos_token_id"]
    w.add("tokenizer.ggml.bos_token_id", bos, "u32")
    w.add("tokenizer.ggml.eos_token_id", eos[0] if isinstance(eos, list) else eos, "u32")


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    mk = sub.add_parser("make")
    mk.add_argument("name", choices=sorted(MODELS))
    mk.add_argument("out")
    mk.add_argument("--tokenizer", required=True, help="directory with tokenizer.json of the family")
    mk.add_argument("--bits", type=int, choices=[4, 8], default=4)
    mk.add_argument("--group-size", type=int, default=64)
    mk.add_argument("--layers", type=int, help="fewer layers (quick checks)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--gguf", help="also write a GGUF of the same weights (llama, group 32)")
    args = ap.parse_args()
    if args.cmd == "list":
        for name, cfg in MODELS.items():
            print(f"{name}: {cfg['model_type']}, hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers")
        return
    make(args)


if __name__ == "__main__":
    main()
