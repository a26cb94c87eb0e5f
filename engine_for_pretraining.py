"""One SMILE training step (training.py runs the epochs around it).

Step: uint8 video -> normalise on the device -> frozen teacher targets (once per clip) ->
student prediction for each of the clip's masks -> MSE on masked tokens -> update.
"""
import torch.nn.functional as F

from training import check_finite, optimizer_step, set_lr
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


def feature_loss(pred, target, mask):
    """pred [B, N_masked, D] (masked tokens in token order), target [B, N, D], mask bool
    [B, N] -> mean squared error over the masked tokens."""
    return F.mse_loss(pred.float(), target[mask].reshape(pred.shape).float())


def train_step(model, teacher, batch, optimizer, lr, precision, device, target_norm,
               clip_grad=None, scaler=None):
    """One update on one batch; returns {'loss', 'grad_norm'}.

    batch: (video uint8 [B, 3, T, H, W], mask bool [B, N] or [B, K, N], ...). With K masks per
    clip the teacher runs once per clip and the student once per (clip, mask) pair.
    """
    video = normalize_video(batch[0].to(device, non_blocking=True))
    mask = batch[1].to(device, non_blocking=True)
    target = normalize_target(teacher(video), target_norm)  # outside autocast: see teachers.py
    if mask.dim() == 3:
        masks_per_clip = mask.shape[1]
        video = video.repeat_interleave(masks_per_clip, dim=0)
        target = target.repeat_interleave(masks_per_clip, dim=0)
        mask = mask.flatten(0, 1)
    set_lr(optimizer, lr)
    with autocast(device, precision):
        pred = model(video, mask)
    loss = feature_loss(pred, target, mask)
    loss_value = check_finite(loss)
    grad_norm = optimizer_step(model, optimizer, loss, scaler, clip_grad)
    return {"loss": loss_value, "grad_norm": grad_norm.item()}
