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


def make_target(target, raw):
    """What the loss compares against for one teachers.Target: its module on the raw video,
    normalised per clip as the target says. Called outside autocast (teachers.py)."""
    return normalize_target(target.module(raw), target.norm, target.frames_per_token)


def train_loss(model, batch, targets, device, precision):
    """(loss, {'<target>_loss'} with several targets, else {}) as device tensors: nothing here
    reads the device back. With K masks per clip (batch.visible [B, K, N_visible]) the targets
    are made once per clip and the student runs once per (clip, mask) pair. The loss is the
    sum of the targets' weighted MSEs over the masked tokens, each on its own student head."""
    raw = batch.video_on(device)  # uint8 [B, 3, T, H, W]: each target normalises it itself
    video = normalize_video(raw)  # the student's input
    masks_per_clip = batch.visible.shape[1] if batch.visible.dim() == 3 else 0
    visible, masked = (idx.to(device, non_blocking=True).flatten(0, -2)  # (clip, mask) pairs
                       for idx in (batch.visible, batch.masked))
    wanted = {t.name: make_target(t, raw) for t in targets}
    if masks_per_clip:
        video = video.repeat_interleave(masks_per_clip, 0)
        wanted = {name: t.repeat_interleave(masks_per_clip, 0) for name, t in wanted.items()}
    with autocast(device, precision):
        predicted = model(video, visible, masked)
    parts = {f"{t.name}_loss": feature_loss(predicted[t.name], wanted[t.name], masked)
             for t in targets}
    loss = sum(t.weight * parts[f"{t.name}_loss"] for t in targets)
    return loss, (parts if len(targets) > 1 else {})


@torch.no_grad()
def target_and_prediction(model, target, clip, visible, masked, device, precision):
    """One clip (uint8 [3, T, H, W]) under one mask (token indices) as the loss sees it, for
    pictures: (target [N, D], prediction [N_masked, D]) of one teachers.Target, float32 numpy.
    Leaves the model in eval mode (the next epoch sets train again)."""
    raw = clip[None].to(device)
    video = normalize_video(raw)
    wanted = make_target(target, raw)
    model.eval()
    with autocast(device, precision):
        predicted = model(video, visible[None].to(device), masked[None].to(device))[target.name]
    return wanted[0].float().cpu().numpy(), predicted[0].float().cpu().numpy()
