#!/usr/bin/env python3
"""GGUF files of the tiny random-weight models (scripts/tiny_models.py), written the way
llama.cpp's `convert_hf_to_gguf.py` writes them for the architecture, without torch.

The converter imports torch (CUDA wheels, gigabytes); this script does the same conversion
with llama.cpp's own `gguf-py` library (pure Python + numpy: `GGUFWriter`, the tensor-name
maps, the quantizers) from the vendored copy in the llama-cpp-python source distribution.
What it does per architecture follows the converter's class for it (llama.cpp of
llama-cpp-python 0.3.36): metadata of `TextModel.set_gguf_parameters` and the class's own
keys, tensor names from `gguf.get_tensor_name_map`, llama's Q/K row permutation
(`LlamaModel.permute`), experts stacked into one 3-D tensor per projection
(`Qwen2MoeModel.modify_tensors`), and the GPT-2 BPE vocabulary of `_set_vocab_gpt2` with the
`smollm` pre-tokenizer (the tiny models carry SmolLM2's tokenizer). `--outtype` is the
converter's: f32, f16 or q8_0 (1-D tensors and norms stay f32, as the converter keeps them).
One departure: a MoE model's dense layers (Qwen3-MoE `mlp_only_layers`), which llama.cpp's
qwen3moe does not have (its converter fails), are written under llama's MLP names.

Usage: tiny_gguf.py make <tiny model dir> <out.gguf> --gguf-py <dir> [--outtype f32|q8_0]
       tiny_gguf.py list
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

# model_type -> (GGUF architecture, permute Q/K like LlamaModel)
ARCHS = {
    "llama": ("LLAMA", True),
    "qwen2": ("QWEN2", False),
    "qwen3": ("QWEN3", False),
    "olmo2": ("OLMO2", False),
    "smollm3": ("SMOLLM3", True),
    "qwen3_moe": ("QWEN3MOE", False),
}


def permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute: rows of each head interleaved for its rope layout."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def set_parameters(w, cfg, gguf):
    """TextModel.set_gguf_parameters plus the MoE keys of Qwen2MoeModel."""
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if "num_experts" in cfg:
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def set_vocab(w, model_dir, cfg, gguf):
    """_set_vocab_gpt2: tokens by id (padding up to vocab_size), types, merges, special ids."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            special = added[t].get("special", False)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True)
    special.add_to_gguf(w)


def tensors(model_dir, cfg, arch, permutes, gguf):
    """(GGUF name, float32 array) in the converter's order: each checkpoint tensor mapped,
    the experts of a layer stacked once all of them were seen."""
    weights = load_file(str(model_dir / "model.safetensors"))
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    dense_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    experts = {}
    for name in weights:
        data = weights[name].astype(np.float32)
        if permutes and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, n_head, n_head)
        if permutes and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, n_head, n_kv)
        if ".mlp.experts." in name:
            yield from stacked(name, data, cfg, experts, names)
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None and ".mlp." in name and cfg.get("mlp_only_layers"):
            # A dense layer of a MoE model (Qwen3-MoE's `mlp_only_layers`): llama.cpp's
            # qwen3moe has none, so its converter stops here; written under llama's MLP
            # names, a file only the importer (not llama.cpp) loads.
            new = dense_names.get_name(name, try_suffixes=(".weight",))
        if new is None:
            raise SystemExit(f"{name}: no GGUF name for {arch.name}")
        yield new, data


def stacked(name, data, cfg, experts, names):
    """Qwen2MoeModel.modify_tensors: the layer's experts merged per projection."""
    layer = int(name.split(".")[2])
    seen = experts.setdefault(layer, {})
    seen[name] = data
    n = cfg["num_experts"]
    if len(seen) < 3 * n:
        return
    for proj in ("down_proj", "gate_proj", "up_proj"):
        parts = [seen.pop(f"model.layers.{layer}.mlp.experts.{x}.{proj}.weight") for x in range(n)]
        merged = f"model.layers.{layer}.mlp.experts.{proj}.weight"
        yield names.get_name(merged, try_suffixes=(".weight",)), np.stack(parts)


def qtype_for(name, data, outtype, gguf):
    """The converter's choice: 1-D tensors, norms and the router stay f32."""
    Q = gguf.GGMLQuantizationType
    if outtype == "f32" or data.ndim <= 1 or name.endswith("_norm.weight"):
        return Q.F32
    if name.endswith("ffn_gate_inp.weight"):
        return Q.F32
    if outtype == "f16":
        return Q.F16
    if data.shape[-1] % 32 != 0:
        return Q.F16
    return Q.Q8_0


def make(model_dir, out, outtype, gguf):
    cfg = json.loads((model_dir / "config.json").read_text())
    model_type = cfg["model_type"]
    if model_type not in ARCHS:
        raise SystemExit(f"{model_type}: no GGUF conversion here (supported: {', '.join(ARCHS)})")
    arch_name, permutes = ARCHS[model_type]
    arch = gguf.MODEL_ARCH[arch_name]
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(f"tiny {model_type}")
    set_parameters(w, cfg, gguf)
    set_vocab(w, model_dir, cfg, gguf)
    for name, data in tensors(model_dir, cfg, arch, permutes, gguf):
        qtype = qtype_for(name, data, outtype, gguf)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("model_dir", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--gguf-py", type=Path, required=True)
    m.add_argument("--outtype", choices=["f32", "f16", "q8_0"], default="f32")
    sub.add_parser("list")
    a = p.parse_args()
    if a.cmd == "list":
        print("\n".join(ARCHS))
        return
    sys.path.insert(0, str(a.gguf_py))
    import gguf

    make(a.model_dir, a.out, a.outtype, gguf)


if __name__ == "__main__":
    main()
