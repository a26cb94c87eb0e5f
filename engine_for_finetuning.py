"""Fine-tuning, evaluation and linear-probe loops.

Evaluation is per view: every (video, view) gives logits; views are gathered across ranks and
merged per video by averaging softmax probabilities. A video that could not be decoded is
counted as failed and left out, never replaced by another video.
"""
import logging
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import pictures
import tasks
from utils import autocast

log = logging.getLogger("smile")


def train_loss(model, batch, criterion, device, precision, mixup_fn=None):
    """(loss, {}) of one batch of supervised training; training.train_step does the update."""
    video = batch.video.to(device, non_blocking=True)
    label = batch.label.to(device, non_blocking=True)
    if mixup_fn is not None:
        video, label = mixup_fn(video, label)
    with autocast(device, precision):
        return criterion(model(video), label), {}


class Stopped(Exception):
    """A stop signal during an evaluation: the views done so far were handed to `keep`."""


@torch.no_grad()
def per_view(outputs, model, loader, device, precision, stop=None, earlier=None, keep=None):
    """What `outputs(clip)` -> {name: tensor} gives for every view the loader yields, with the
    view's video, view, ok and label: a dict of arrays, after the `earlier` views (done before
    a stop; the loader leaves them out). A stop signal (`stop`) between batches hands every
    view so far to keep(arrays) and raises Stopped."""
    model.eval()
    out = {k: [torch.from_numpy(v)] for k, v in (earlier or {}).items()}
    for clip, label, video, view, ok in loader:
        with autocast(device, precision):
            values = outputs(clip.to(device, non_blocking=True))
        for key, value in dict(video=video, view=view, ok=ok, label=label, **values).items():
            out.setdefault(key, []).append(torch.as_tensor(value))
        if stop:
            if keep:
                keep({k: torch.cat(v).numpy() for k, v in out.items()})
            raise Stopped
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def gather_views(views, dist_info, sharded):
    """With sharded evaluation every rank saw a part: collect all parts on every rank."""
    if not sharded or dist_info.world_size == 1:
        return views
    parts = [None] * dist_info.world_size
    dist.all_gather_object(parts, views)
    return {k: np.concatenate([p[k] for p in parts]) for k in views}


def evaluate(model, loader, dist_info, sharded, num_videos, num_classes, precision,
             task="classification", **resume):
    """Multi-view (or single-view) evaluation -> the task's metrics (tasks.metrics) with
    num_videos, num_failed, the videos that failed, `predictions` (tasks.merge_views) and for
    classification the confusion matrix. `resume`: per_view's stop, earlier and keep (a stop
    keeps the views done)."""
    views = gather_views(per_view(lambda clip: {"logits": model(clip).float().cpu()}, model,
                                  loader, dist_info.device, precision, **resume), dist_info,
                         sharded)
    predictions, labels, videos = merged = tasks.merge_views(views, num_videos, task)
    confusion = dict(confusion=pictures.confusion_matrix(predictions, labels, num_classes)) if (
        task == "classification") else {}
    return dict(tasks.metrics(task, predictions, labels), num_videos=num_videos,
                num_failed=num_videos - len(videos), num_views=int(len(views["video"])),
                failed_videos=failed_videos(views, num_videos), predictions=merged, **confusion)


def failed_videos(views, num_videos):
    """Indices of the videos none of whose views could be decoded."""
    readable = set(views["video"][views["ok"].astype(bool)].tolist())
    return [v for v in range(num_videos) if v not in readable]


# ---------------------------------------------------------------- views kept on disk
def read_keyed(path, key, what):
    """The dict saved at `path` with `key` (written atomically: checkpoint.save_checkpoint), else
    None: no file, or one cut off or made by something else, which one line names."""
    try:
        saved = torch.load(path, weights_only=True) if os.path.isfile(path) else {}
    except Exception as err:
        log.warning("WARNING: %s is unreadable (%s): its %s are computed again", path,
                    type(err).__name__, what)
        return None
    if saved and saved.get("key") != key:
        log.info("%s holds %s of another model or setting: computed again", path, what)
    return saved if saved and saved.get("key") == key else None


def views_done(path, key, name, per_video):
    """(the views an evaluation kept at `path` before a stop, their dataset indices): none
    when the file is missing or was made with another key (read_keyed)."""
    earlier = as_arrays((read_keyed(path, key, f"{name} views") or {}).get("views", {}))
    done = {int(v) * per_video + int(w)
            for v, w in zip(earlier.get("video", ()), earlier.get("view", ()))}
    if done:
        log.info("%s: %d views done before a stop, from %s", name, len(done), path)
    return earlier, done


def as_arrays(views):
    return {k: v.numpy() if torch.is_tensor(v) else v for k, v in views.items()}


def as_tensors(views):
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in views.items()}


# ---------------------------------------------------------------- linear probe
@torch.no_grad()
def extract_features(encoder, loader, dist_info, sharded, precision, tokens=False):
    """Frozen features of every view: mean over tokens of the encoder's normalised output
    ('features'), and with `tokens` the tokens themselves in fp16 ('tokens' [views, N, D])."""
    def outputs(clip):
        feats = encoder.forward_features(clip)
        return dict(features=feats.mean(dim=1).float().cpu(),
                    **({"tokens": feats.half().cpu()} if tokens else {}))
    return gather_views(per_view(outputs, encoder, loader, dist_info.device, precision),
                        dist_info, sharded)


def train_probe(features, labels, num_outputs, epochs, lr, weight_decay, batch_size, seed,
                task="classification"):
    """Linear layer on standardised features (BatchNorm without affine, then Linear) under the
    task's loss, AdamW with a cosine schedule over `epochs` passes of the cached features."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(features).float(), torch.from_numpy(labels)
    y, loss_fn = y.long() if task == "classification" else y.float(), tasks.loss(task)
    probe = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False), nn.Linear(x.shape[1],
                                                                               num_outputs))
    # a count starts at the training mean, as fine-tuning's head does
    nn.init.constant_(probe[1].bias, float(y.mean()) if task == "counting" else 0.0)
    nn.init.normal_(probe[1].weight, std=0.01)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for _ in range(epochs):
        probe.train()
        for idx in torch.randperm(len(x)).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = loss_fn(probe(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe.eval()
