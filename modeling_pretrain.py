"""SMILE student: VideoMAE encoder on visible tokens + light decoder predicting targets of masked
tokens. Checkpoint keys: encoder.*, decoder.*, encoder_to_decoder.weight, mask_token, as the
authors', so their released pretraining checkpoints load with no missing or unexpected keys.
"""
import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from modeling_finetune import LayerNorm, SIZES, VisionTransformer, make_block, sinusoid_table

DECODER_SIZES = {"tiny": (96, 3), "small": (192, 3), "base": (384, 6)}  # (dim, heads)
DECODER_DEPTH = 4


def head_name(target):
    """The decoder attribute of a target's head: 'head' for the main one (the authors' key,
    decoder.head.*), '<name>_head' for the others (decoder.motion_head.*)."""
    return "head" if target == "feature" else f"{target}_head"


class Decoder(nn.Module):
    """Blocks -> norm -> one linear head per target (teachers.Target), on the same features."""

    def __init__(self, embed_dim, depth, num_heads, heads, mlp_ratio=4.0):
        super().__init__()
        self.blocks = nn.ModuleList(make_block(embed_dim, num_heads, mlp_ratio, 0.0)
                                    for _ in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.targets = tuple(heads)
        for target, dim in heads.items():
            setattr(self, head_name(target), nn.Linear(embed_dim, dim))

    def forward(self, x, num_predicted):
        for block in self.blocks:
            x = block(x)
        # only the trailing mask-token positions are predicted
        x = self.norm(x[:, -num_predicted:])
        return {target: getattr(self, head_name(target))(x) for target in self.targets}


class PretrainVisionTransformer(nn.Module):
    """forward(video [B, 3, T, H, W] float, visible and masked token indices)
    -> {target: predictions [B, N_masked, dim]} for the masked tokens, in token order, one per
    entry of `heads` ({target name: width})."""

    def __init__(self, size, img_size, patch_size, num_frames, tubelet_size, heads,
                 drop_path_rate=0.0, use_checkpoint=False):
        super().__init__()
        self.encoder = VisionTransformer(
            img_size=img_size, patch_size=patch_size, num_frames=num_frames,
            tubelet_size=tubelet_size, embed_dim=SIZES[size][0], depth=SIZES[size][1],
            num_heads=SIZES[size][2], num_classes=0, use_mean_pooling=False,
            drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
        decoder_dim, decoder_heads = DECODER_SIZES[size]
        self.encoder_to_decoder = nn.Linear(SIZES[size][0], decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("pos_embed", sinusoid_table(self.encoder.num_patches, decoder_dim),
                             persistent=False)
        self.decoder = Decoder(decoder_dim, DECODER_DEPTH, decoder_heads, heads)
        self.decoder.apply(VisionTransformer._init_weights)
        nn.init.xavier_uniform_(self.encoder_to_decoder.weight)
        trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self):
        return {"mask_token", "pos_embed", "encoder.pos_embed"}

    def forward(self, video, visible, masked):
        """video [B, 3, T, H, W]; visible / masked long [B, N_visible] / [B, N_masked]: token
        indices in token order (masking_generator.mask_indices) -> {target: [B, N_masked, D]}."""
        tokens = self.encoder_to_decoder(self.encoder.forward_features(video, visible))
        pos = self.pos_embed.to(tokens.dtype)  # [1, N, D]
        pos_visible = torch.take_along_dim(pos, visible[..., None], dim=1)
        pos_masked = torch.take_along_dim(pos, masked[..., None], dim=1)
        tokens = torch.cat([tokens + pos_visible, self.mask_token + pos_masked], dim=1)
        return self.decoder(tokens, masked.shape[1])


MODELS = {f"pretrain_videomae_{size}_patch16_224": size for size in SIZES}


def build_student(name, img_size, patch_size, num_frames, tubelet_size, heads,
                  drop_path_rate=0.0, use_checkpoint=False):
    """VideoMAE's model names pick the width; the geometry comes from the arguments; `heads`
    {target: width} (teachers.Target), or one width for the main target alone."""
    if name not in MODELS:
        raise ValueError(f"unknown --model {name!r}; choose from {sorted(MODELS)}")
    return PretrainVisionTransformer(MODELS[name], img_size=img_size, patch_size=patch_size,
                                     num_frames=num_frames, tubelet_size=tubelet_size,
                                     heads=heads if isinstance(heads, dict) else {
                                         "feature": heads},
                                     drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
