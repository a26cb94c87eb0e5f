"""The SMILE loss of one batch (training.train_step does the update around it).

uint8 video -> normalise on the device -> frozen teacher targets (once per clip) -> student
prediction for each of the clip's masks -> MSE on masked tokens.
"""
import torch
import torch.nn.functional as F

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


def train_loss(model, batch, teacher, device, precision, target_norm, motion_target=None,
               motion_weight=0.0):
    """The loss of one batch and its parts: (loss, {'feature_loss', 'motion_loss'} with a
    motion term, else {}), device tensors. training.train_step takes it from there (LR,
    backward, optimiser); nothing here reads the device back: the step never waits on the host.

    batch: batches.PretrainingBatch, masks as token indices [B, N_visible] / [B, N_masked],
    or [B, K, ...] with K masks per clip: the teacher runs once per clip, the student once per
    (clip, mask) pair. motion_target (teachers.PixelTarget(motion=True)) and motion_weight:
    the extra term on the model's second head.
    """
    video = normalize_video(batch.video.to(device, non_blocking=True))
    masks_per_clip = batch.visible.shape[1] if batch.visible.dim() == 3 else 0
    visible, masked = (idx.to(device, non_blocking=True).flatten(0, -2)  # (clip, mask) pairs
                       for idx in (batch.visible, batch.masked))
    target = normalize_target(teacher(video), target_norm,  # outside autocast: teachers.py
                              getattr(teacher, "frames_per_token", 1))
    motion = motion_target(video) if motion_weight else None
    if masks_per_clip:
        video, target, motion = (None if t is None else t.repeat_interleave(masks_per_clip, 0)
                                 for t in (video, target, motion))
    with autocast(device, precision):
        pred = model(video, visible, masked)
    pred, motion_pred = pred if motion is not None else (pred, None)
    loss = feature_loss(pred, target, masked)
    if motion is None:
        return loss, {}
    parts = {"feature_loss": loss, "motion_loss": feature_loss(motion_pred, motion, masked)}
    return loss + motion_weight * parts["motion_loss"], parts


@torch.no_grad()
def target_and_prediction(model, teacher, clip, visible, masked, device, precision, target_norm):
    """One clip (uint8 [3, T, H, W]) under one mask (token indices), as the loss sees it, for
    pictures: (target [N, D], prediction [N_masked, D]) as float32 numpy arrays. Leaves the
    model in eval mode (the next epoch sets train again)."""
    video = normalize_video(clip[None].to(device))
    target = normalize_target(teacher(video), target_norm, getattr(teacher, "frames_per_token", 1))
    model.eval()
    with autocast(device, precision):
        pred = model(video, visible[None].to(device), masked[None].to(device))
    pred = pred[0] if isinstance(pred, tuple) else pred  # the feature head
    return target[0].float().cpu().numpy(), pred[0].float().cpu().numpy()
