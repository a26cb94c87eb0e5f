"""One SMILE training step and the epoch loop around it.

Step: uint8 video -> normalise on the device -> frozen teacher targets (once per clip) ->
student prediction for each of the clip's masks -> MSE on masked tokens -> update.
"""
import logging
import math
import time

import torch
import torch.nn.functional as F

from utils import all_reduce_mean, autocast, format_eta, normalize_video, stop_requested

log = logging.getLogger("smile")


class NonFiniteLossError(RuntimeError):
    pass


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
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

    with autocast(device, precision):
        pred = model(video, mask)
    loss = feature_loss(pred, target, mask)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(f"loss is {loss_value}; stopping before the bad update "
                                 "reaches the weights (the last checkpoint is intact)")

    params = [p for p in model.parameters() if p.requires_grad]
    if hasattr(model, "backward"):  # DeepSpeed engine: it clips (config) and steps itself
        model.backward(loss)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        model.step()
        return {"loss": loss_value, "grad_norm": grad_norm.item()}
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss, unscale before clipping
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad or float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {"loss": loss_value, "grad_norm": grad_norm.item()}


def train_one_epoch(model, teacher, loader, optimizer, lr_at, epoch, first_batch, run, logger,
                    stop_flag, scaler=None):
    """Iterate one epoch from batch `first_batch`; returns (mean metrics, next batch index or
    None when the epoch finished). `run` holds the loop settings (read only):
    steps_per_epoch, epochs, precision, device, dist, target_norm, clip_grad, print_freq,
    clips_per_batch."""
    model.train()
    totals = {"loss": 0.0, "grad_norm": 0.0}
    count, data_time, start = 0, 0.0, time.time()
    window_start, window_data, window_steps = start, 0.0, 0
    wait_start = time.time()
    for i, batch in enumerate(loader, start=first_batch):
        waited = time.time() - wait_start
        data_time += waited
        window_data += waited
        step = epoch * run.steps_per_epoch + i
        lr = lr_at(step)
        metrics = train_step(model, teacher, batch, optimizer, lr, run.precision, run.device,
                             run.target_norm, run.clip_grad, scaler)
        for key in totals:
            totals[key] += metrics[key]
        count += 1
        window_steps += 1

        if (i + 1) % run.print_freq == 0 or i + 1 == run.steps_per_epoch:
            elapsed = time.time() - window_start
            step_time = elapsed / window_steps
            loss = all_reduce_mean(metrics["loss"], run.dist)
            values = {"loss": loss, "lr": lr, "grad_norm": metrics["grad_norm"],
                      "clips_per_s": run.clips_per_batch * window_steps / elapsed,
                      "data_wait_fraction": window_data / elapsed}
            logger.scalars(step, values)
            left_epoch = (run.steps_per_epoch - i - 1) * step_time
            left_total = left_epoch + (run.epochs - epoch - 1) * run.steps_per_epoch * step_time
            log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.3e  grad %.3f  %.1f clips/s  "
                     "data %.0f%%  eta epoch %s total %s", epoch + 1, run.epochs, i + 1,
                     run.steps_per_epoch, loss, lr, metrics["grad_norm"], values["clips_per_s"],
                     100 * values["data_wait_fraction"], format_eta(left_epoch),
                     format_eta(left_total))
            window_start, window_data, window_steps = time.time(), 0.0, 0
        if stop_requested(stop_flag, run.dist):
            return _means(totals, count, run, data_time, start), i + 1
        wait_start = time.time()
    return _means(totals, count, run, data_time, start), None


def _means(totals, count, run, data_time, start):
    out = {k: all_reduce_mean(v / max(count, 1), run.dist) for k, v in totals.items()}
    out["data_wait_fraction"] = data_time / max(time.time() - start, 1e-9)
    out["steps"] = count
    return out
