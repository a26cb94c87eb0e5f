"""Frozen targets for the student: CLIP / DINO / DINOv2 patch features, or VideoMAE pixels.

Every target maps the raw video (uint8 [B, 3, T, H, W], as the loader hands it over) to
targets [B, N, D] in student token order (n = t * H'W' + h * W' + w), normalising it as it
needs: never by undoing the student's normalisation. Feature teachers see the first
frame of each tubelet (the paper's), or with --teacher_frames all every frame, a token's
target then being its frames' features side by side [B, N, tubelet * D]; their weights never
change and they always stay in eval mode. PixelTarget(motion=True) is the
--motion_loss_weight term's target.
"""
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import model_weights
from utils import HALF_DTYPES, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# name: (the library that builds it, architecture, patch size, feature dim); the names follow
# the libraries' (clip_ here is CLIP, the model)
TEACHERS = {
    "clip_vit_b16": ("open_clip", dict(width=768, layers=12, heads=12), 16, 768),
    "clip_vit_tiny": ("open_clip", dict(width=192, layers=2, heads=3), 16, 192),  # smoke tests
    "dino_vit_s16": ("timm", "vit_small_patch16_224.dino", 16, 384),
    "dino_vit_b16": ("timm", "vit_base_patch16_224.dino", 16, 768),
    "dinov2_vit_s14": ("timm", "vit_small_patch14_dinov2.lvd142m", 14, 384),
    "dinov2_vit_b14": ("timm", "vit_base_patch14_dinov2.lvd142m", 14, 768),
}
HUB_NAMES = ("openai", "hub")


def add_args(parser):
    group = parser.add_argument_group("teacher and targets")
    group.add_argument("--target_type", default="feature", choices=("feature", "pixel"),
                       help="feature: frozen teacher patch features; pixel: VideoMAE's "
                            "per-patch normalised pixels")
    group.add_argument("--teacher_model", default="clip_vit_b16", choices=tuple(TEACHERS))
    group.add_argument("--teacher_weights", default=None,
                       help="state dict file (open_clip/OpenAI CLIP, the authors' visual-tower "
                            "ViT-B-16.pt, or timm DINO/DINOv2); 'openai'/'hub' to download "
                            "where there is internet; 'random' only for smoke tests")
    group.add_argument("--target_norm", default=None,
                       choices=("clip_channel", "token_layernorm", "none"),
                       help="clip_channel (released default for features): per clip and channel "
                            "over all tokens; token_layernorm; none (default for pixels)")
    group.add_argument("--teacher_frames", default="first", choices=("first", "all"),
                       help="first: the teacher sees each tubelet's first frame (the paper's); "
                            "all: every frame, so the target keeps the motion inside a tubelet "
                            "(teacher cost x tubelet_size)")
    group.add_argument("--motion_loss_weight", type=float, default=0.0,
                       help="weight of an extra loss on masked tokens: a second decoder head "
                            "regresses the difference between a tubelet's frames of VideoMAE's "
                            "per-patch normalised pixels (0 = off, the paper's)")
    group.add_argument("--teacher_input_norm", default="imagenet", choices=("imagenet", "teacher"),
                       type=lambda value: "teacher" if value == "clip" else value,
                       help="imagenet: the student's normalisation (what the released models "
                            "used); teacher: the teacher's own mean/std (CLIP's for CLIP; "
                            "'clip', its older name, still reads)")
    return parser


def check_args(args):
    if args.motion_loss_weight < 0 or args.motion_loss_weight and args.tubelet_size < 2:
        raise ValueError(f"--motion_loss_weight {args.motion_loss_weight} needs a weight >= 0 "
                         f"and --tubelet_size >= 2 (got {args.tubelet_size}): the term is the "
                         "change between a tubelet's frames")
    if args.target_type == "pixel":
        if args.teacher_frames != "first":
            raise ValueError("--teacher_frames is for feature targets: the pixel target "
                             "already holds every frame of a tubelet")
        return
    weights = args.teacher_weights
    if weights is None:
        raise ValueError("--teacher_weights is required for feature targets: a state dict "
                         "file, 'openai'/'hub' (needs internet) or 'random' (smoke tests)")
    if weights not in HUB_NAMES + ("random",) and not os.path.isfile(weights):
        raise ValueError(f"--teacher_weights {weights} is not a file")


def read_state_dict(path):
    """Tensors from a checkpoint file in any layout (checkpoint.model_weights). OpenAI's
    original CLIP files are TorchScript archives."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:
        state = torch.jit.load(path, map_location="cpu").state_dict()
    return model_weights(state, ("state_dict", "model", "module"))


class FrameTeacher(nn.Module):
    """Wraps an image backbone; `tokens_fn(backbone, images [M, 3, h, w]) -> [M, h'w', D]` takes
    the backbone as an argument so that swapping `self.backbone` (compiled, wrapped) is seen."""

    def __init__(self, backbone, tokens_fn, patch_size, grid, tubelet_size, mean_std,
                 all_frames=False):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.tokens_fn = tokens_fn
        self.patch_size, self.grid, self.tubelet_size = patch_size, grid, tubelet_size
        self.frames_per_token = tubelet_size if all_frames else 1
        # from the raw 0..255 video straight to the mean/std this teacher wants (fp32 buffers)
        mean, std = mean_std
        scale, shift = [1 / (255 * s) for s in std], [m / s for m, s in zip(mean, std)]
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):  # frozen: eval whatever the wrapper asks
        return super().train(False)

    @torch.no_grad()
    def forward(self, video):
        frames = video if self.frames_per_token > 1 else video[:, :, ::self.tubelet_size]
        batch, channels, steps, height, width = frames.shape  # one batched pass over B * steps
        images = frames.transpose(1, 2).reshape(batch * steps, channels, height, width)
        images = images.float() * self.scale - self.shift
        _, grid_h, grid_w = self.grid
        size = (grid_h * self.patch_size, grid_w * self.patch_size)
        if size != (height, width):  # e.g. patch-14 teachers give the student's 16-px grid
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        dtype = next(self.backbone.parameters()).dtype
        tokens = self.tokens_fn(self.backbone, images.to(dtype)).float()
        k = self.frames_per_token  # [B, T'k, hw, D] -> [B, T' hw, k D]: a token's frames
        tokens = tokens.reshape(batch, steps // k, k, grid_h * grid_w, tokens.shape[-1])
        return tokens.transpose(2, 3).reshape(batch, steps // k * grid_h * grid_w, -1)


def build_CLIP_image_tower(arch, image_size):
    """open_clip's CLIP image tower, OpenAI flavour (QuickGELU), returning patch tokens after
    ln_post; no text tower, so no tokenizer and no network."""
    from open_clip.transformer import QuickGELU, VisionTransformer
    return VisionTransformer(image_size=image_size, patch_size=16, mlp_ratio=4.0, output_dim=512,
                             act_layer=QuickGELU, output_tokens=True, **arch)


def load_CLIP_weights(visual, path):
    from types import SimpleNamespace

    from open_clip.model import resize_pos_embed
    state = read_state_dict(path)
    if not any(k.startswith("visual.") for k in state):  # the image tower alone
        state = {"visual." + k: v for k, v in state.items()}  # as a whole CLIP model's keys
    resize_pos_embed(state, SimpleNamespace(visual=visual))  # other input sizes
    state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    missing, unexpected = visual.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj"]  # the projection is not used
    if missing:
        raise ValueError(f"--teacher_weights {path} is not a CLIP ViT image tower of this "
                         f"size: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        log.info("teacher: ignored %d keys not in the image tower (e.g. %s)", len(unexpected),
                 unexpected[0])


def build_teacher(grid, *, teacher_model, teacher_weights, tubelet_size, teacher_input_norm,
                  teacher_frames):
    """The frozen feature teacher (keywords: the flags of the same names) for the student's
    token grid (T', H', W')."""
    family, arch, patch, _ = TEACHERS[teacher_model]
    weights = teacher_weights
    if weights == "random":
        log.warning("=" * 72 + "\n  TEACHER HAS RANDOM WEIGHTS (--teacher_weights random): targets "
                    "carry no semantics.\n  Use this for smoke tests only, never for results.\n"
                    + "=" * 72)
    imagenet = (IMAGENET_MEAN, IMAGENET_STD)  # the student's, and DINO's and DINOv2's own
    own_mean_std = (CLIP_MEAN, CLIP_STD) if family == "open_clip" else imagenet
    if family == "open_clip":
        backbone = build_CLIP_image_tower(arch, grid[1] * patch)
        if weights in HUB_NAMES:
            import open_clip
            model = open_clip.create_model("ViT-B-16-quickgelu", pretrained="openai")
            backbone.load_state_dict(model.visual.state_dict(), strict=False)
        elif weights != "random":
            load_CLIP_weights(backbone, weights)
        tokens_fn = lambda model, images: model(images)[1]  # noqa: E731 (pooled, tokens)
    else:
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn
        backbone = timm.create_model(arch, pretrained=weights in HUB_NAMES, num_classes=0,
                                     img_size=grid[1] * patch)
        if weights not in HUB_NAMES + ("random",):
            backbone.load_state_dict(checkpoint_filter_fn(read_state_dict(weights), backbone),
                                     strict=False)
        prefix = backbone.num_prefix_tokens
        tokens_fn = lambda model, images: model.forward_features(images)[:, prefix:]  # noqa: E731
    return FrameTeacher(backbone, tokens_fn, patch, grid, tubelet_size,
                        own_mean_std if teacher_input_norm == "teacher" else imagenet,
                        all_frames=teacher_frames == "all")


def set_precision(teacher, precision):
    """bf16/fp16 runs keep the frozen backbone's weights in that dtype (no fp32 master copy is
    needed); train_step calls the teacher outside autocast, so CLIP's nn.MultiheadAttention
    keeps its fused inference path (autocast disables it). The input normalisation and the
    pixel target stay fp32."""
    dtype = HALF_DTYPES.get(precision)
    if dtype is not None and isinstance(teacher, FrameTeacher):
        teacher.backbone.to(dtype)
    return teacher


@dataclass
class Target:
    """One thing the student regresses, with its own decoder head: `module(video uint8 [B, 3,
    T, H, W]) -> [B, N, dim]` (frozen), its loss `weight`, how its values are normalised
    per clip (`norm`, engine_for_pretraining.normalize_target; `frames_per_token` features
    side by side count as that many tokens). A new target is one more entry."""
    name: str
    module: nn.Module
    dim: int
    weight: float = 1.0
    norm: str = "none"
    frames_per_token: int = 1


def build_targets(grid, *, target_type, patch_size, tubelet_size, target_norm,
                  motion_loss_weight, **teacher):
    """'feature' (the teacher, or VideoMAE's pixels with target_type 'pixel'), and with a
    motion_loss_weight 'motion' (the differences between a tubelet's frames). Keywords: the
    flags of the same names; `teacher`: build_teacher's."""
    pixels = tubelet_size * patch_size ** 2 * 3
    if target_type == "pixel":
        targets = [Target("feature", PixelTarget(patch_size, tubelet_size), pixels, 1.0,
                          target_norm)]
    else:
        module = build_teacher(grid, tubelet_size=tubelet_size, **teacher)
        width = module.frames_per_token * TEACHERS[teacher["teacher_model"]][3]
        targets = [Target("feature", module, width, 1.0, target_norm, module.frames_per_token)]
    if motion_loss_weight:
        motion = PixelTarget(patch_size, tubelet_size, motion=True)
        targets.append(Target("motion", motion, pixels - pixels // tubelet_size,
                              motion_loss_weight))
    return targets


class PixelTarget(nn.Module):
    """VideoMAE's target: the tubelet's pixels (0..1), normalised per patch and channel over
    its tubelet*patch² positions, flattened to tubelet*patch²*3 values. With `motion` it is
    the difference between consecutive frames of that normalised tubelet ((tubelet-1)*patch²*3
    values): what changes inside a token, the --motion_loss_weight term's target. Normalising
    before differencing keeps a still patch's target near 0; normalising the difference itself
    would blow a still patch's codec noise up to unit variance (on a quick-start video, 56 % of
    the target's energy on patches nothing crosses; 1.6 % this way)."""

    def __init__(self, patch_size, tubelet_size, motion=False):
        super().__init__()
        self.patch_size, self.tubelet_size, self.motion = patch_size, tubelet_size, motion

    @torch.no_grad()
    def forward(self, video):
        from einops import rearrange
        pixels = video.float() / 255
        patches = rearrange(pixels, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw) c",
                            pt=self.tubelet_size, ph=self.patch_size, pw=self.patch_size)
        patches = (patches - patches.mean(dim=-2, keepdim=True)) / (
            patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        if self.motion:
            frames = patches.unflatten(2, (self.tubelet_size, -1))
            patches = (frames[:, :, 1:] - frames[:, :, :-1]).flatten(2, 3)
        return rearrange(patches, "b n p c -> b n (p c)")
