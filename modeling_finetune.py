"""VideoMAE video ViT: tubelet embedding, fixed sinusoid positions, timm blocks with SDPA.

State-dict keys follow VideoMAE/SMILE (`patch_embed.proj.*`, `blocks.N.attn.qkv.weight`,
`blocks.N.attn.q_bias`, `blocks.N.attn.v_bias`, `blocks.N.attn.proj.*`, `blocks.N.norm1/2.*`,
`blocks.N.mlp.fc1/fc2.*`, `norm.*` or `fc_norm.*`, `head.*`), so released checkpoints load
strictly. The same class is the pretraining encoder (`num_classes=0`, final `norm`, visible
tokens only) and the fine-tuning classifier (mean pooling + `fc_norm` + `head`).
"""
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from checkpoint import misfit, model_weights

LayerNorm = partial(nn.LayerNorm, eps=1e-6)
SIZES = {  # name: (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def sinusoid_table(num_positions, dim):
    """Fixed 1-D sine/cosine position table [1, num_positions, dim] (VideoMAE's, not learned)."""
    position = np.arange(num_positions)[:, None]
    rate = np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None]
    table = position / rate
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)[None]


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's bias layout (q and v biases, no k bias) and
    `scaled_dot_product_attention` (flash / memory-efficient kernels where available)."""

    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None, is_causal=False):
        batch, tokens, dim = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


def make_block(dim, num_heads, mlp_ratio, drop_path):
    block = Block(dim, num_heads, mlp_ratio=mlp_ratio, drop_path=drop_path, norm_layer=LayerNorm)
    block.attn = Attention(dim, num_heads)  # VideoMAE's q/v bias keys, zero k bias
    return block


class PatchEmbed(nn.Module):
    """Video [B, 3, T, H, W] -> tokens [B, N, D]; token n = t * H'W' + h * W' + w."""

    def __init__(self, patch_size, tubelet_size, embed_dim):
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=size, stride=size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, embed_dim, depth,
                 num_heads, mlp_ratio=4.0, num_classes=0, use_mean_pooling=True,
                 drop_path_rate=0.0, fc_drop_rate=0.0, init_scale=0.001, use_checkpoint=False):
        super().__init__()
        self.embed_dim, self.use_checkpoint = embed_dim, use_checkpoint
        self.patch_embed = PatchEmbed(patch_size, tubelet_size, embed_dim)
        self.num_patches = (num_frames // tubelet_size) * (img_size // patch_size) ** 2
        self.register_buffer("pos_embed", sinusoid_table(self.num_patches, embed_dim),
                             persistent=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(make_block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.Identity() if use_mean_pooling else LayerNorm(embed_dim)
        self.fc_norm = LayerNorm(embed_dim) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    @staticmethod
    def _init_weights(m):  # LayerNorms start at (1, 0) as made
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self):
        return {"pos_embed"}

    def group_matcher(self, coarse=False):
        """Layer ids for timm's layer-wise LR decay, as VideoMAE: embedding 0, block i -> i + 1,
        the final norms and the head last (full learning rate)."""
        return dict(stem=r"^patch_embed", blocks=[(r"^blocks\.(\d+)", None),
                                                  (r"^norm", (99999,))])

    def run_blocks(self, x):
        for block in self.blocks:
            # recomputation trades speed for memory; the frozen teacher never uses it
            x = checkpoint(block, x, use_reentrant=False) if (
                self.use_checkpoint and self.training) else block(x)
        return x

    def forward_features(self, x, visible=None):
        """x [B, 3, T, H, W]; visible long [B, N_visible]: the tokens to keep, in token order
        (None: all) -> normalised tokens [B, N_visible, D]. Indices, not a boolean mask: their
        size is known without reading the mask back from the device."""
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        if visible is not None:
            x = torch.take_along_dim(x, visible[..., None], dim=1)
        return self.norm(self.run_blocks(x))

    def forward(self, x):
        x = self.forward_features(x)
        # without mean pooling VideoMAE classifies its first token (it has no CLS token)
        x = self.fc_norm(x.mean(1)) if self.fc_norm is not None else x[:, 0]
        return self.head(self.fc_dropout(x))


PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")


def load_pretrained(model, path, model_key="model|module"):
    """A pretraining or fine-tuned checkpoint (a path, or its contents; `model_key`: the keys
    that may hold the weights) into `model`, less 'encoder.'/'backbone.', the decoder and a
    head of another shape -> dict(missing, unexpected, skipped); ValueError (one line) when
    nothing matches or a weight has another shape."""
    state = torch.load(path, map_location="cpu", weights_only=True) if isinstance(
        path, str) else path
    state = model_weights(state, model_key.split("|"))
    own = model.state_dict()
    weights, skipped = {}, []
    for name, value in state.items():
        if name.startswith(PRETRAINING_ONLY) or name == "pos_embed":  # our table is fixed
            skipped.append(name)
            continue
        for prefix in ("encoder.", "backbone."):
            name = name.removeprefix(prefix)
        if name.startswith("head.") and name in own and own[name].shape != value.shape:
            skipped.append(name)  # a classifier for other classes
            continue
        weights[name] = value
    if not set(weights) & set(own):
        raise ValueError(f"none of its keys (e.g. {list(state)[:3]}) match the model; "
                         f"check --model_key ({model_key})")
    if reshaped := misfit(own, weights, strict=False):
        raise ValueError(f"{reshaped}: it holds another model size or grid than --model/"
                         "--num_frames/--input_size build")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    return dict(missing=sorted(missing), unexpected=sorted(unexpected), skipped=sorted(skipped))


def build_encoder(size, **kwargs):
    embed_dim, depth, num_heads = SIZES[size]
    return VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **kwargs)


def _videomae_builder(size, pretrained=False, all_frames=None, drop_rate=0.0, attn_drop_rate=0.0,
                      drop_block_rate=None, use_learnable_pos_emb=False, in_chans=3, **kwargs):
    """The builders below take VideoMAE's keywords as VideoMAE/SMILE code calls them
    (`vit_base_patch16_224(pretrained=False, all_frames=16, tubelet_size=2, num_classes=400,
    drop_path_rate=0.1, ...)`), with VideoMAE's defaults: 224 px, 16 frames, tubelet 2, 1000
    classes. Options this encoder does not have are refused rather than ignored."""
    unsupported = dict(pretrained=pretrained, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                       use_learnable_pos_emb=use_learnable_pos_emb, in_chans=in_chans != 3)
    refused = [key for key, value in unsupported.items() if value]
    if refused:
        raise ValueError(f"not supported here: {', '.join(refused)} (weights load through "
                         "load_pretrained; positions are the fixed sinusoid table; RGB input)")
    if all_frames is not None:
        kwargs["num_frames"] = all_frames
    defaults = dict(img_size=224, num_frames=16, tubelet_size=2, num_classes=1000)
    return build_encoder(size, patch_size=16, **{**defaults, **kwargs})


vit_tiny_patch16_224 = partial(_videomae_builder, "tiny")
vit_small_patch16_224 = partial(_videomae_builder, "small")
vit_base_patch16_224 = partial(_videomae_builder, "base")
