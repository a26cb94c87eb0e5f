"""One SMILE training step (training.py runs the epochs around it).

Step: uint8 video -> normalise on the device -> frozen teacher targets (once per clip) ->
student prediction for each of the clip's masks -> MSE on masked tokens -> update.
"""
import torch
import torch.nn.functional as F

from training import optimizer_step, set_lr
from utils import autocast, normalize_video


def normalize_target(target, mode):
    """target [B, N, D]. clip_channel (released default): per clip and channel over all N
    tokens, (f - mean) / (unbiased std + 1e-6); token_layernorm: per token; none."""
    if mode == "clip_channel":
        mean = target.mean(dim=1, keepdim=True)
        std = target.std(dim=1, unbiased=True, keepdim=True)
        return (target - mean) / (std + 1e-6)
    if mode == "token_layernorm":
        return F.layer_norm(target, target.shape[-1:], eps=1e-6)
    return target


def mask_indices(mask):
    """bool mask [B, N] (True = masked; every row masks the same number, as the generators
    guarantee) -> (visible [B, N_visible], masked [B, N_masked]) long token indices, each in
    token order. Run on the loader's CPU tensor, so the device never reads a mask back to size
    its outputs (boolean indexing would, at every step)."""
    num_masked = int(mask[0].sum())
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first
    return order[:, :mask.shape[1] - num_masked], order[:, mask.shape[1] - num_masked:]


def feature_loss(pred, target, masked):
    """pred [B, N_masked, D] (masked tokens in token order), target [B, N, D], masked long
    [B, N_masked] token indices -> mean squared error over the masked tokens."""
    return F.mse_loss(pred.float(), torch.take_along_dim(target, masked[..., None], 1).float())


def train_step(model, teacher, batch, optimizer, lr, precision, device, target_norm,
               clip_grad=None, scaler=None):
    """One update on one batch; returns {'loss', 'grad_norm'} as device tensors (a non-finite
    loss leaves the weights as they were: see training.optimizer_step).

    batch: (video uint8 [B, 3, T, H, W], mask bool [B, N] or [B, K, N], ...). With K masks per
    clip the teacher runs once per clip and the student once per (clip, mask) pair.
    """
    video = normalize_video(batch[0].to(device, non_blocking=True))
    mask = batch[1].flatten(0, 1) if batch[1].dim() == 3 else batch[1]  # (clip, mask) pairs
    visible, masked = (idx.to(device, non_blocking=True) for idx in mask_indices(mask))
    target = normalize_target(teacher(video), target_norm)  # outside autocast: see teachers.py
    if batch[1].dim() == 3:
        masks_per_clip = batch[1].shape[1]
        video = video.repeat_interleave(masks_per_clip, dim=0)
        target = target.repeat_interleave(masks_per_clip, dim=0)
    set_lr(optimizer, lr)
    with autocast(device, precision):
        pred = model(video, visible, masked)
    loss = feature_loss(pred, target, masked)
    grad_norm = optimizer_step(model, optimizer, loss, scaler, clip_grad)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}  # read at the print step
