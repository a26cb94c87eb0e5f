"""Checkpoints: one atomic writer, numbered copies with a keep limit, and the resume walk.

What a training checkpoint holds (plain data: it loads with `torch.load(weights_only=True)`):
model, optimizer, scaler, model_ema, `epoch` = the number of epochs completed (the epoch a
resumed run starts at), `next_batch` = the batch of that epoch to start at (0 after a whole
epoch), `step` = epoch * steps_per_epoch + next_batch, `args` (a dict), the model's constructor
kwargs and the bad-file ledger. `checkpoint-N.pth` is the state at the end of epoch N counted
from 0, so it stores epoch = N + 1 (VideoMAE's naming).
"""
import glob
import logging
import os
import re
import shutil

import torch

from errors import UsageError

log = logging.getLogger("smile")
LATEST = "checkpoint-latest.pth"


class CheckpointError(UsageError):
    """A checkpoint that cannot be used. `torn`: the file is incomplete (a copy or write that
    was cut off), which an automatic resume may step over to an older file."""

    def __init__(self, path, reason, torn=False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.torn = path, reason, torn


def save_checkpoint(path, state):
    """Write to a temporary file, flush it to disk, then rename over `path`: a crash or kill at
    any moment leaves either the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """The checkpoint's contents, or CheckpointError saying why not (torn = incomplete file)."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if head in (b"", b"PK\x03\x04") and isinstance(err, (EOFError, RuntimeError)):
            # empty, or a zip archive (torch's format) cut off before its directory
            raise CheckpointError(path, "the file is truncated or incomplete", torn=True) from err
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(path, "not a checkpoint this framework can read (it loads plain "
                                    f"tensors and dicts only): {type(err).__name__} {first}"
                              ) from err


def numbered_checkpoints(output_dir):
    """{epoch N: path} of the checkpoint-N.pth files in output_dir."""
    found = {}
    for path in glob.glob(os.path.join(output_dir, "checkpoint-*.pth")):
        match = re.search(r"checkpoint-(\d+)\.pth$", path)
        if match:
            found[int(match.group(1))] = path
    return found


def keep_epoch_checkpoint(output_dir, epoch, epochs, every, keep_last=0):
    """After checkpoint-latest.pth holds the end of `epoch`, keep an atomic file copy as
    checkpoint-{epoch}.pth every `every` epochs and at the last one; with keep_last > 0 only
    the newest keep_last numbered files stay (a 300-epoch run must not fill a quota)."""
    if (epoch + 1) % every and epoch + 1 != epochs:
        return
    path = os.path.join(output_dir, f"checkpoint-{epoch}.pth")
    tmp = f"{path}.tmp.{os.getpid()}"
    shutil.copyfile(os.path.join(output_dir, LATEST), tmp)
    os.replace(tmp, path)
    if keep_last > 0:
        numbered = numbered_checkpoints(output_dir)
        for old in sorted(numbered)[:-keep_last]:
            os.remove(numbered[old])
            log.info("removed %s (--keep_last %d)", numbered[old], keep_last)


def check_training_state(path, state):
    missing = [k for k in ("model", "optimizer", "epoch", "step") if k not in state]
    if missing:
        raise CheckpointError(path, f"not a training checkpoint of this framework (no "
                                    f"{', '.join(missing)}); to start from its weights use "
                                    "--first_stage_path (stage 2) or --finetune")
    return state


def find_resume_checkpoint(output_dir):
    """(path, state) of the newest checkpoint in output_dir, or None when there is none.

    Newest first (checkpoint-latest.pth, then checkpoint-N.pth by descending N), stopping at
    the first that loads, so at most one checkpoint is held in memory. A torn file is skipped
    with a warning; any other failure stops the run (CheckpointError): restarting from an older
    file, or from scratch, must never happen silently."""
    numbered = numbered_checkpoints(output_dir)
    candidates = [os.path.join(output_dir, LATEST)] + [numbered[n] for n in sorted(
        numbered, reverse=True)]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            return path, check_training_state(path, load_checkpoint(path))
        except CheckpointError as err:
            if not err.torn:
                raise
            log.warning("skipping %s: %s; trying the next older checkpoint", path, err.reason)
    return None


def resume_checkpoint(args):
    """(path, state) to resume from: --resume, else the newest in --output_dir, else None."""
    if args.resume:
        return args.resume, check_training_state(args.resume, load_checkpoint(args.resume))
    return find_resume_checkpoint(args.output_dir) if args.auto_resume else None


def describe(state):
    """What a checkpoint is, from its stored arguments, for error messages."""
    saved = state.get("args") or {} if isinstance(state, dict) else {}
    grid = f"{saved.get('num_frames')} frames, {saved.get('input_size')} px"
    if "stage" in saved:
        return f"a stage-{saved['stage']} pretraining checkpoint of {saved.get('model')} ({grid})"
    if "linear_probe" in saved:
        return f"a fine-tuning checkpoint of {saved.get('model')} ({grid})"
    return "a checkpoint without this framework's run arguments"


def load_model_weights(model, weights, path):
    """Strict load with a one-line CheckpointError instead of torch's page of key names."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in (
            (missing, "keys missing"), (unexpected, "unexpected keys"),
            (reshaped, "of another shape")) if keys]
        if reshaped:
            k = reshaped[0]
            parts[-1] += f": {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} here"
        raise CheckpointError(path, "its weights do not fit the model these arguments build: "
                                    + "; ".join(parts))
    model.load_state_dict(weights)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_same_run(path, state, args, keys):
    """Resume only this run: a checkpoint whose `keys` (stage, model, grid, ...) differ from
    the arguments belongs to another run and stops with one line; other changed settings
    (more --epochs, --num_workers, ...) are logged and resumed with."""
    saved = state.get("args") or {}
    new = vars(args)
    changed = {k: (saved[k], new[k]) for k in saved.keys() & new.keys()
               if _plain(saved[k]) != _plain(new[k])}
    clash = [k for k in keys if k in changed]
    if clash:
        if "stage" in clash:
            raise CheckpointError(path, f"{os.path.dirname(path) or '.'} holds a stage-"
                                        f"{saved['stage']} run and this is stage {new['stage']}; "
                                        "give each stage its own --output_dir")
        what = ", ".join(f"--{k} {changed[k][0]} (now {changed[k][1]})" for k in clash)
        raise CheckpointError(path, f"it was written by another run: {what}; use another "
                                    "--output_dir, or the same arguments to resume")
    ignored = {"resume", "auto_resume", "local_rank", "log_dir", "output_dir", "config"}
    notes = [f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items()) if k not in ignored]
    if notes:
        log.info("resuming %s with changed settings: %s", path, ", ".join(notes))


def resume_position(state, args, epoch, next_batch):
    """(epoch, batch) to start at. Mid-epoch, the saved batch index counts batches of the old
    size and process count; with another batch size, world size or --repeated_sampling it
    would skip the wrong clips, so the run starts at the next epoch instead (and says so)."""
    saved = state.get("args") or {}
    repeats = getattr(args, "repeated_sampling", 1)  # samples per batch = batch / repeats
    if next_batch and (saved.get("batch_size"), saved.get("total_batch_size"),
                       saved.get("repeated_sampling", 1)) != (
            args.batch_size, args.total_batch_size, repeats):
        log.warning("the checkpoint stopped mid-epoch with batch %s x %s processes (repeats "
                    "%s), this run has %s x %s (%s): the rest of epoch %d is skipped, training "
                    "goes on at epoch %d",
                    saved.get("batch_size"), saved.get("total_batch_size", 0) // max(
                        saved.get("batch_size") or 1, 1), saved.get("repeated_sampling", 1),
                    args.batch_size, args.total_batch_size // args.batch_size, repeats,
                    epoch + 1, epoch + 2)
        return epoch + 1, 0
    return epoch, next_batch


def restore(state, model, optimizer, scaler=None, model_ema=None, path=""):
    """Load a training checkpoint into the pieces; returns (epoch, next_batch) to start at."""
    load_model_weights(model, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if model_ema is not None and state.get("model_ema"):
        model_ema.load_state_dict(state["model_ema"])
    return state["epoch"], state["next_batch"]


def training_state(model, optimizer, epoch, next_batch, steps_per_epoch, args, scaler=None,
                   model_ema=None, **extra):
    """What a checkpoint holds: plain data that loads with torch.load(weights_only=True)."""
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict() if scaler else None,
                model_ema=model_ema.state_dict() if model_ema else None, epoch=epoch,
                next_batch=next_batch, step=epoch * steps_per_epoch + next_batch,
                args=vars(args), **extra)
