"""Hugging Face `transformers` VideoMAE, both ways: our encoder's weights under its names (the
RENAMES table; our one qkv matrix is their query/key/value rows; their classifier's keys start
`videomae.`), a `VideoMAEConfig` from a checkpoint's own record, and such a folder read back.

Both use VideoMAE's fixed sinusoid positions (not weights) and exact GELU. One difference
that is not a weight: transformers' `fc_norm` uses LayerNorm's default eps 1e-5 where ours
uses 1e-6 (the blocks take `layer_norm_eps` from the config, set to 1e-6 here).
"""
import json
import os
import re

import torch

from modeling_finetune import SIZES

RENAMES = [  # (ours, theirs); {} stands for one dotted part (a block index, weight or bias)
    ("patch_embed.proj.{}", "embeddings.patch_embeddings.projection.{}"),
    ("blocks.{}.attn.proj.{}", "encoder.layer.{}.attention.output.dense.{}"),
    ("blocks.{}.norm1.{}", "encoder.layer.{}.layernorm_before.{}"),
    ("blocks.{}.norm2.{}", "encoder.layer.{}.layernorm_after.{}"),
    ("blocks.{}.mlp.fc1.{}", "encoder.layer.{}.intermediate.dense.{}"),
    ("blocks.{}.mlp.fc2.{}", "encoder.layer.{}.output.dense.{}"),
    ("blocks.{}.attn.q_bias", "encoder.layer.{}.attention.attention.query.bias"),
    ("blocks.{}.attn.v_bias", "encoder.layer.{}.attention.attention.value.bias"),
    # the names transformers writes to disk (and the hub's VideoMAE files have), read only
    ("blocks.{}.attn.q_bias", "encoder.layer.{}.attention.attention.q_bias"),
    ("blocks.{}.attn.v_bias", "encoder.layer.{}.attention.attention.v_bias"),
    ("norm.{}", "layernorm.{}"),
]
CLASSIFIER = [("fc_norm.{}", "fc_norm.{}"), ("head.{}", "classifier.{}")]
QKV = r"blocks\.(\d+)\.attn\.qkv\.weight"  # one matrix here, three there
ATTENTION = "encoder.layer.{}.attention.attention.{}.weight"


def _rename(key, table, forward):
    for ours, theirs in table:
        source, target = (ours, theirs) if forward else (theirs, ours)
        if match := re.fullmatch(re.escape(source).replace(r"\{\}", r"([^.]+)"), key):
            return target.format(*match.groups())
    return None


def to_transformers(weights, classifier):
    """Our encoder's weights (bare keys) -> transformers' VideoMAEModel keys, or with
    `classifier` VideoMAEForVideoClassification's (`videomae.` + fc_norm, classifier)."""
    prefix, out = "videomae." if classifier else "", {}
    for key, value in weights.items():
        if match := re.fullmatch(QKV, key):
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                out[prefix + ATTENTION.format(match.group(1), name)] = part
        elif classifier and (name := _rename(key, CLASSIFIER, True)):
            out[name] = value
        elif name := _rename(key, RENAMES, True):
            out[prefix + name] = value
        else:
            raise ValueError(f"no transformers VideoMAE name for {key!r}")
    return out


def from_transformers(weights):
    """transformers' VideoMAE keys (either class) -> ours; the inverse of to_transformers."""
    out, qkv = {}, {}
    for key, value in weights.items():
        key = key.removeprefix("videomae.")
        if match := re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.attention\."
                                 r"(query|key|value)\.weight", key):
            qkv.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif name := _rename(key, CLASSIFIER + RENAMES, False):
            out[name] = value
    for block, parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"],
                                                            parts["value"]])
    return out


def config(weights, num_frames, image_size, num_classes=0, use_mean_pooling=None):
    """A VideoMAEConfig for our encoder weights: width, depth, patch and tubelet from their
    shapes, frames and size from the checkpoint's record (pooling: whether it has fc_norm)."""
    from transformers import VideoMAEConfig
    width, _, tubelet, patch, _ = weights["patch_embed.proj.weight"].shape
    heads = {dims[0]: dims[2] for dims in SIZES.values()}[width]
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    pooling = "fc_norm.weight" in weights if use_mean_pooling is None else use_mean_pooling
    return VideoMAEConfig(image_size=image_size, patch_size=patch, num_frames=num_frames,
                          tubelet_size=tubelet, hidden_size=width, num_hidden_layers=depth,
                          num_attention_heads=heads, intermediate_size=4 * width,
                          layer_norm_eps=1e-6, qv_bias=True, use_mean_pooling=pooling,
                          num_labels=max(num_classes, 1))


def is_folder(path):
    """A transformers folder (config.json + model.safetensors) or its model.safetensors."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.safetensors"))
            or path.endswith(".safetensors"))


def read(path):
    """{'model': our weights, 'config': the folder's config.json or {}} of a transformers
    VideoMAE folder or model.safetensors file."""
    from safetensors.torch import load_file
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    weights = load_file(os.path.join(path, "model.safetensors") if os.path.isdir(path) else path)
    config_path = os.path.join(folder, "config.json")
    saved = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            saved = json.load(f)
    return {"model": from_transformers(weights), "config": saved}
