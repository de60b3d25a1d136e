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
(`Qwen2MoeModel.modify_tensors`), GPT-OSS's split of the fused expert biases and its
lossless repacking of released MXFP4 experts into ggml's MXFP4 blocks
(`GptOssModel.modify_tensors`, `repack_mxfp4`), and the GPT-2 BPE vocabulary of `_set_vocab_gpt2` with the
`smollm` pre-tokenizer (the tiny models carry SmolLM2's tokenizer). `--outtype` is the
converter's: f32, f16 or q8_0 (1-D tensors and norms stay f32, as the converter keeps them);
`q8_0-values` is the q8_0 file with every Q8_0 tensor replaced by gguf-py's float32
dequantization of it (the oracle of a Q8_0 import where llama.cpp cannot run the model);
`mxfp4` is f32 for a source in gpt-oss's released layout, whose MXFP4 experts the converter
keeps MXFP4 (with `f32`, the same experts are written dense: the values the converter writes
for a checkpoint whose experts are not MXFP4).
Departures: a MoE model's dense layers (Qwen3-MoE `mlp_only_layers`), which llama.cpp's
qwen3moe does not have (its converter fails), are written under llama's MLP names; Gemma 4's
converter writes its own `gemma4` tokenizer model (SentencePiece-style BPE from
`LlamaHfVocab`), which the tiny models' byte-level SmolLM2 vocabulary is not, so their GGUF
carries it as `gpt2` like the other families.

Usage: tiny_gguf.py make <tiny model dir> <out.gguf> --gguf-py <dir> [--outtype f32|q8_0|q8_0-values|mxfp4]
       tiny_gguf.py list
"""

import argparse
import json
import math
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
    "phi3": ("PHI3", False),
    "gpt_oss": ("GPT_OSS", False),
    "ministral3": ("MISTRAL3", True),
    "qwen3_5": ("QWEN35", False),
    "qwen3_5_moe": ("QWEN35MOE", False),
    "gemma4_text": ("GEMMA4", False),
    "gemma4": ("GEMMA4", False),
}


class RawMxfp4:
    """A tensor already in ggml's MXFP4 block layout (bytes [..., rows, blocks * 17])."""

    def __init__(self, data):
        self.data = data


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
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(cfg.get("rope_theta", rope.get("rope_theta")))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg["model_type"] == "gpt_oss":
        set_gpt_oss_parameters(w, cfg, gguf)
    if cfg["model_type"] == "ministral3":
        set_ministral3_parameters(w, rope, gguf)
    if cfg["model_type"] in ("qwen3_5", "qwen3_5_moe"):
        set_qwen3_5_parameters(w, cfg, rope)
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if "num_experts" in cfg or "num_local_experts" in cfg:
        w.add_expert_count(cfg.get("num_experts", cfg.get("num_local_experts")))
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg.get("moe_intermediate_size", cfg["intermediate_size"]))
    if "shared_expert_intermediate_size" in cfg:
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if cfg["model_type"] == "phi3":
        set_phi3_parameters(w, cfg)


def set_gpt_oss_parameters(w, cfg, gguf):
    """TextModel's YaRN keys for GPT-OSS's `rope_scaling`, and GptOssModel's sliding window."""
    w.add_sliding_window(cfg["sliding_window"])
    rs = cfg.get("rope_scaling")
    if rs:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])


def set_ministral3_parameters(w, rope, gguf):
    """TextModel's YaRN keys from `rope_parameters`, and Ministral3Model's own: the YaRN log
    multiplier (`mscale_all_dim`) and Llama 4's attention temperature scale."""
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    w.add_rope_scaling_yarn_log_mul(rope["mscale_all_dim"])
    w.add_attn_temperature_scale(rope["llama_4_scaling_beta"])


def set_qwen3_5_parameters(w, cfg, rope):
    """Qwen3NextModel's delta-net keys, the recurrent layers, the rotated width, and
    `_Qwen35MRopeMixin`'s rope sections (padded to 4)."""
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    w.add_recurrent_layers([t == "linear_attention" for t in cfg["layer_types"]])
    w.add_full_attention_interval(cfg.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(cfg["head_dim"] * rope.get("partial_rotary_factor", 0.25)))
    sections = list(rope.get("mrope_section", [11, 11, 10]))
    w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])


def set_gemma4_parameters(w, cfg, gguf):
    """Gemma4Model.set_gguf_parameters over Gemma3Model's and TextModel's, each key written once
    with its final value: head widths per layer type, per-layer KV heads (with
    `num_global_key_value_heads`) and MLP widths (double-wide KV-shared layers), the layer
    kinds, shared-KV layers, per-layer input width, both RoPE bases and rotated widths."""
    n = cfg["num_hidden_layers"]
    swa = [t == "sliding_attention" for t in cfg["layer_types"]]
    rope = cfg["rope_parameters"]
    ghd, hd = cfg["global_head_dim"], cfg["head_dim"]
    w.add_block_count(n)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    shared = cfg["num_kv_shared_layers"]
    n_ff = cfg["intermediate_size"]
    if cfg.get("use_double_wide_mlp"):
        w.add_feed_forward_length([n_ff if i < n - shared else 2 * n_ff for i in range(n)])
    else:
        w.add_feed_forward_length(n_ff)
    w.add_head_count(cfg["num_attention_heads"])
    kv, kv_full = cfg["num_key_value_heads"], cfg.get("num_global_key_value_heads")
    w.add_head_count_kv([kv if s else kv_full for s in swa] if kv_full is not None else kv)
    w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("enable_moe_block"):
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["top_k_experts"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(cfg.get("hidden_size_per_layer_input") or 0)
    w.add_sliding_window_pattern(swa)
    w.add_key_length(ghd)
    w.add_value_length(ghd)
    w.add_key_length_swa(hd)
    w.add_value_length_swa(hd)
    w.add_rope_dimension_count(ghd)
    partial_swa = rope["sliding_attention"].get("partial_rotary_factor", 1.0)
    w.add_rope_dimension_count_swa(int(hd * partial_swa))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def set_phi3_parameters(w, cfg):
    """Phi3MiniModel's own keys: rotated width, original context, sliding window (0: none),
    longrope's attention factor."""
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_rope_dimension_count(int(cfg.get("partial_rotary_factor", 1.0) * head_dim))
    orig = cfg["original_max_position_embeddings"]
    w.add_rope_scaling_orig_ctx_len(orig)
    w.add_sliding_window(cfg.get("sliding_window") or 0)
    scale = cfg["max_position_embeddings"] / orig
    if cfg.get("rope_scaling") and scale > 1.0:
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)))


def extra_tensors(cfg):
    """Phi3MiniModel.generate_extra_tensors: the longrope factors as global f32 tensors;
    Gemma4Model's: the full layers' proportional RoPE as `rope_freqs` (1 for a rotated pair,
    1e30 for a pass-through one)."""
    if cfg["model_type"] in ("gemma4_text", "gemma4"):
        full = cfg["rope_parameters"]["full_attention"]
        ghd = cfg["global_head_dim"]
        rotated = int(ghd * full["partial_rotary_factor"] / 2)
        yield "rope_freqs.weight", np.array([1.0] * rotated + [1e30] * (ghd // 2 - rotated), dtype=np.float32)
        return
    rs = cfg.get("rope_scaling") or {}
    if cfg["model_type"] != "phi3" or not rs.get("long_factor"):
        return
    yield "rope_factors_long.weight", np.array(rs["long_factor"], dtype=np.float32)
    yield "rope_factors_short.weight", np.array(rs["short_factor"], dtype=np.float32)


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


def tensors(model_dir, cfg, arch, permutes, gguf, outtype):
    """(GGUF name, float32 array) in the converter's order: each checkpoint tensor mapped,
    the experts of a layer stacked once all of them were seen."""
    weights = load_file(str(model_dir / "model.safetensors"))
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    dense_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    experts = {}
    yield from extra_tensors(cfg)
    if cfg["model_type"] == "gpt_oss":
        yield from gpt_oss_tensors(weights, names, keep_mxfp4=outtype == "mxfp4")
        return
    if cfg["model_type"] in ("qwen3_5", "qwen3_5_moe"):
        yield from qwen3_5_tensors(weights, cfg, names)
        return
    if cfg["model_type"] in ("gemma4_text", "gemma4"):
        yield from gemma4_tensors(weights, names)
        return
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


def gpt_oss_tensors(weights, names, keep_mxfp4):
    """GptOssModel: sinks get `.weight`; the fused expert biases split into gate (even
    columns) and up (odd); released MXFP4 experts repacked (`repack_mxfp4`), or written as
    their float32 values, the fused gate_up rows split the same way."""
    expert = mxfp4_blocks if keep_mxfp4 else mxfp4_values
    for name, data in weights.items():
        if name.endswith("_scales"):
            continue
        if name.endswith("_blocks"):
            base = name.removesuffix("_blocks")
            scales = weights[base + "_scales"]
            if base.endswith("gate_up_proj"):
                for proj, rows in (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))):
                    new = names.get_name(base.replace("gate_up_proj", proj) + ".weight", try_suffixes=(".weight",))
                    yield new, expert(data[:, rows], scales[:, rows])
            else:
                new = names.get_name(base + ".weight", try_suffixes=(".weight",))
                yield new, expert(data, scales)
            continue
        data = data.astype(np.float32)
        if name.endswith("gate_up_proj_bias"):
            for proj, part in (("gate_proj", data[..., ::2]), ("up_proj", data[..., 1::2])):
                new = names.get_name(name.replace("gate_up_proj_bias", proj + ".bias"), try_suffixes=(".bias",))
                yield new, np.ascontiguousarray(part)
            continue
        if name.endswith("down_proj_bias"):
            name = name.replace("down_proj_bias", "down_proj.bias")
        if name.endswith(".sinks"):
            name += ".weight"
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"{name}: no GGUF name for gpt-oss")
        yield new, data


def qwen3_5_tensors(weights, cfg, names):
    """Qwen3NextModel + _LinearAttentionVReorderBase on the text model (vision tower and MTP
    left out): A as -exp(A_log), dt_bias as `dt_proj.bias`, conv1d squeezed to [C, K], norms
    stored +1 (all but the delta-net's gated norm), value heads reordered from grouped by key
    head to tiled when there are more value than key heads, fused experts split."""
    for name, data in weights.items():
        if name.startswith(("model.visual.", "mtp.")):
            continue
        name = name.replace("model.language_model.", "model.")
        data = data.astype(np.float32)
        if name.endswith("mlp.experts.gate_up_proj"):
            n_ff = data.shape[-2] // 2
            for proj, part in (("gate_proj", data[..., :n_ff, :]), ("up_proj", data[..., n_ff:, :])):
                new = names.get_name(name.replace("gate_up_proj", proj) + ".weight", try_suffixes=(".weight",))
                yield new, np.ascontiguousarray(part)
            continue
        if name.endswith("mlp.experts.down_proj"):
            name += ".weight"
        data = reorder_value_heads(name, data, cfg)
        if name.endswith(".A_log"):
            data = -np.exp(data)
        elif name.endswith(".dt_bias"):
            name = name.removesuffix(".dt_bias") + ".dt_proj.bias"
        elif "conv1d" in name:
            data = data.squeeze()
        elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            data = data + np.float32(1.0)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"{name}: no GGUF name for qwen35")
        yield new, np.ascontiguousarray(data)


def gemma4_tensors(weights, names):
    """Gemma4Model on the text model (the multimodal wrapper's `model.language_model.` prefix
    dropped, its towers skipped as the converter's text model does): `layer_scalar` and the
    fused expert tensors get `.weight` (filter_tensors), the router's input scale becomes
    `ffn_gate_inp.scale` and its per-expert scale `ffn_down_exps.scale` (modify_tensors);
    norms unshifted; the K/V projections of KV-shared layers written as they are."""
    for name, data in weights.items():
        if name.startswith(("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")):
            continue
        name = name.replace("model.language_model.", "model.")
        data = data.astype(np.float32)
        if name.endswith((".router.scale", ".router.per_expert_scale")):
            bid = int(name.split(".")[2])
            blk = "ffn_gate_inp" if name.endswith(".router.scale") else "ffn_down_exps"
            yield f"blk.{bid}.{blk}.scale", data
            continue
        if name.endswith(".layer_scalar") or (".experts." in name and not name.endswith(".weight")):
            name += ".weight"
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"{name}: no GGUF name for gemma4")
        yield new, data


def reorder_value_heads(name, data, cfg):
    """_LinearAttentionVReorderBase: value heads grouped by key head [g0v0, g0v1, g1v0, ...]
    become tiled [g0v0, g1v0, g0v1, ...] in every delta-net tensor indexed by value head."""
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    if nk == nv or "linear_attn." not in name:
        return data
    dk, dv, r = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], nv // nk

    def tiled(t, axis, head_dim):
        t = np.moveaxis(t, axis, 0)
        rest = t.shape[1:]
        t = t.reshape(nk, r, head_dim, *rest).swapaxes(0, 1).reshape(nk * r * head_dim, *rest)
        return np.ascontiguousarray(np.moveaxis(t, 0, axis))

    qk = 2 * nk * dk
    if ".in_proj_qkv." in name or ".conv1d." in name:
        return np.concatenate([data[:qk], tiled(data[qk:], 0, dv)], axis=0)
    if ".in_proj_z." in name:
        return tiled(data, 0, dv)
    if ".in_proj_b." in name or ".in_proj_a." in name or name.endswith((".A_log", ".dt_bias")):
        return tiled(data, 0, 1)
    if ".out_proj." in name:
        return tiled(data, 1, dv)
    return data


def mxfp4_codes(blocks):
    """The 4-bit codes of released MXFP4 blocks (byte k: value 2k low, 2k + 1 high nibble),
    32 per group."""
    lo, hi = blocks & 0x0F, blocks >> 4
    return np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)


def mxfp4_blocks(blocks, scales):
    """ggml's block_mxfp4 from released MXFP4: per group the E8M0 scale byte, then 16 bytes
    holding values j (low nibble) and j + 16 (high)."""
    codes = mxfp4_codes(blocks)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    raw = np.concatenate([scales[..., None], qs.astype(np.uint8)], axis=-1)
    return RawMxfp4(np.ascontiguousarray(raw.reshape(*blocks.shape[:-2], blocks.shape[-2] * 17)))


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def mxfp4_values(blocks, scales):
    """Released MXFP4 blocks as float32 [.., rows, cols]: E2M1 value x 2^(scale - 127)."""
    values = E2M1[mxfp4_codes(blocks)] * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return np.ascontiguousarray(values.reshape(*blocks.shape[:-2], -1))


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
    """The converter's choice (ModelBase.prepare_tensors): 1-D tensors, norms, tensors other
    than weights (biases, scales), routers and the delta-net convolution stay f32."""
    Q = gguf.GGMLQuantizationType
    if outtype in ("f32", "mxfp4") or data.ndim <= 1 or name.endswith("_norm.weight"):
        return Q.F32
    if not name.endswith(".weight"):
        return Q.F32
    if name.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")):
        return Q.F32
    if outtype == "f16":
        return Q.F16
    if data.shape[-1] % 32 != 0:
        return Q.F16
    return Q.Q8_0


def make(model_dir, out, outtype, gguf):
    cfg = json.loads((model_dir / "config.json").read_text())
    model_type = cfg["model_type"]
    if model_type in ("qwen3_5", "qwen3_5_moe", "gemma4"):
        # Qwen3_5(Moe)TextModel and Gemma4Model convert the text model of the multimodal
        # checkpoint.
        cfg = {**cfg["text_config"], "model_type": model_type}
    if model_type not in ARCHS:
        raise SystemExit(f"{model_type}: no GGUF conversion here (supported: {', '.join(ARCHS)})")
    arch_name, permutes = ARCHS[model_type]
    arch = gguf.MODEL_ARCH[arch_name]
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    # llama.cpp tweaks the vocabulary of a model named "phi3"/"phi-3" (it marks `</s>`, which
    # the tiny models' SmolLM2 vocabulary lacks, and fails to load): the tiny one is not.
    w.add_name("tiny Phi 3" if model_type == "phi3" else f"tiny {model_type}")
    if model_type in ("gemma4_text", "gemma4"):
        set_gemma4_parameters(w, cfg, gguf)
    else:
        set_parameters(w, cfg, gguf)
    set_vocab(w, model_dir, cfg, gguf)
    for name, data in tensors(model_dir, cfg, arch, permutes, gguf, outtype):
        if isinstance(data, RawMxfp4):
            w.add_tensor(name, data.data, raw_dtype=gguf.GGMLQuantizationType.MXFP4)
            continue
        qtype = qtype_for(name, data, outtype.removesuffix("-values"), gguf)
        if qtype == gguf.GGMLQuantizationType.Q8_0 and outtype == "q8_0-values":
            w.add_tensor(name, gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype))
        elif qtype == gguf.GGMLQuantizationType.F32:
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
    m.add_argument("--outtype", choices=["f32", "f16", "q8_0", "q8_0-values", "mxfp4"], default="f32")
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
