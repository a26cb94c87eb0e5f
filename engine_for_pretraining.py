"""One SMILE training step (training.py runs the epochs around it).

Step: uint8 video -> normalise on the device -> frozen teacher targets (once per clip) ->
student prediction for each of the clip's masks -> MSE on masked tokens -> update.
"""
import torch
import torch.nn.functional as F

from training import optimizer_step, set_lr
from utils import autocast, normalize_video


def normalize_target(target, mode, frames_per_token=1):
    """target [B, N, D]. clip_channel (released default): per clip and channel over all N
    tokens, (f - mean) / (unbiased std + 1e-6); token_layernorm: per token; none. With k
    frames per token (--teacher_frames all: D = k x the teacher's width) each frame's
    features count as a token of their own, as they would for the first frame alone."""
    if frames_per_token > 1:
        batch, tokens, width = target.shape
        frames = target.reshape(batch, tokens * frames_per_token, width // frames_per_token)
        return normalize_target(frames, mode).reshape(batch, tokens, width)
    if mode == "clip_channel":
        mean = target.mean(dim=1, keepdim=True)
        std = target.std(dim=1, unbiased=True, keepdim=True)
        return (target - mean) / (std + 1e-6)
    if mode == "token_layernorm":
        return F.layer_norm(target, target.shape[-1:], eps=1e-6)
    return target


def feature_loss(pred, target, masked):
    """pred [B, N_masked, D] (masked tokens in token order), target [B, N, D], masked long
    [B, N_masked] token indices -> mean squared error over the masked tokens."""
    return F.mse_loss(pred.float(), torch.take_along_dim(target, masked[..., None], 1).float())


def train_step(model, teacher, batch, optimizer, lr, precision, device, target_norm,
               clip_grad=None, scaler=None, motion_target=None, motion_weight=0.0):
    """One update on one batch; returns {'loss', 'grad_norm'} (with a motion term also
    'feature_loss' and 'motion_loss') as device tensors (a non-finite loss leaves the weights
    as they were: see training.optimizer_step). Nothing here reads the device back: the step
    never waits on the host.

    batch (datasets.collate_pretraining): (video uint8 [B, 3, T, H, W], mask bool [B, N] or
    [B, K, N], object_tokens, visible [B(, K), N_visible], masked [B(, K), N_masked]). With K
    masks per clip the teacher runs once per clip and the student once per (clip, mask) pair.
    motion_target (teachers.PixelTarget(motion=True)) and motion_weight: the extra term on the
    model's second head.
    """
    video, mask, _, visible, masked = batch[:5]
    video = normalize_video(video.to(device, non_blocking=True))
    visible, masked = (idx.to(device, non_blocking=True).flatten(0, -2)  # (clip, mask) pairs
                       for idx in (visible, masked))
    target = normalize_target(teacher(video), target_norm,  # outside autocast: teachers.py
                              getattr(teacher, "frames_per_token", 1))
    motion = motion_target(video) if motion_weight else None
    if mask.dim() == 3:
        video, target, motion = (None if t is None else t.repeat_interleave(mask.shape[1], 0)
                                 for t in (video, target, motion))
    set_lr(optimizer, lr)
    with autocast(device, precision):
        pred = model(video, visible, masked)
    pred, motion_pred = pred if motion is not None else (pred, None)
    loss = feature_loss(pred, target, masked)
    metrics = {}
    if motion is not None:
        metrics = {"feature_loss": loss, "motion_loss": feature_loss(motion_pred, motion, masked)}
        loss = loss + motion_weight * metrics["motion_loss"]
    grad_norm = optimizer_step(model, optimizer, loss, scaler, clip_grad)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(),  # read at the print step
            **{key: value.detach() for key, value in metrics.items()}}
