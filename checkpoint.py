"""Checkpoints: one atomic writer, numbered copies with a keep limit, the resume walk, and
one reader of weights in every layout we accept, with one reporter of what did not fit.

What a training checkpoint holds (plain data: it loads with `torch.load(weights_only=True)`):
`format` (FORMAT), `kind` (kind_of), model, optimizer, scaler, model_ema, `epoch` = the number
of epochs completed (the epoch a resumed run starts at), `next_batch` = the batch of that epoch
to start at (0 after a whole epoch), `step` = epoch * steps_per_epoch + next_batch, `args` (a
dict), `model_kwargs` (the model's build keywords), the bad-file ledger, the list's digest and
the run's history. `checkpoint-N.pth` is the state at the end of epoch N counted from 0, so it
stores epoch = N + 1 (VideoMAE's naming).
"""
import contextlib
import errno
import glob
import logging
import os
import re
import shutil

import torch

from errors import UsageError, WriteError

log = logging.getLogger("smile")
LATEST = "checkpoint-latest.pth"
FORMAT = 2  # what training_state writes; 1: files without `kind` and `format` (still read)
WEIGHT_KEYS = ("model", "module", "state_dict")


class CheckpointError(UsageError):
    """A checkpoint that cannot be used. `torn`: the file is incomplete (a copy or write that
    was cut off), which an automatic resume may step over to an older file."""

    def __init__(self, path, reason, torn=False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.torn = path, reason, torn


def save_checkpoint(path, state):
    """Write to a temporary file, flush it to disk, then rename over `path`: a crash or kill at
    any moment leaves either the old file or the new one, never a torn one."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    # what it needs: its tensors, or the file it replaces (the same state, with the format's
    # overhead) if that is larger
    _write_atomically(path, write, lambda: max(state_bytes(state), os.path.isfile(path) and
                                               os.path.getsize(path)))


def _write_atomically(path, write, needed_bytes):
    """write(tmp) then rename to path. A failed write (a full disk, a quota: torch reports
    those as a RuntimeError around the OSError) removes its temporary file, so it leaves the
    disk as it found it, and raises WriteError with one line."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(err, Exception):
            raise
        raise write_error(path, err, needed_bytes) from err


def write_error(path, err, needed_bytes=None):
    """WriteError with one line: what failed, why, and the remedy that fits the cause (a
    folder removed, one not writable, a full disk or quota)."""
    folder = os.path.dirname(path) or "."
    code = _errno(err)
    if not os.path.isdir(folder) or code == errno.ENOENT:
        return WriteError(f"could not write {path}: {folder} no longer exists (removed while the "
                          "run was going?); its checkpoints went with it: recreate the folder "
                          "(restore it from a copy to resume)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"could not write {path}: {cause_of(err)}; make {folder} writable "
                          f"again and run the same command to resume{_intact(folder)}")
    needed = f"it needs {gib(needed_bytes())} and " if needed_bytes else ""
    return WriteError(f"could not write {path}: {cause_of(err)}; {needed}{folder} has "
                      f"{gib(shutil.disk_usage(folder).free)} free{_intact(folder)}: free space "
                      "(or raise the quota) and run the same command to resume")


def _intact(folder):
    has = os.path.isfile(os.path.join(folder, LATEST)) or numbered_checkpoints(folder)
    return ". The last checkpoint there is intact" if has else ""


def _errno(err):
    """The errno of the OSError behind an exception (torch's writer wraps it), else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def cause_of(err):
    """The OSError behind an exception (torch's writer wraps it), else its first line."""
    if code := _errno(err):
        return f"{os.strerror(code)} (errno {errno.errorcode.get(code, '?')})"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def state_bytes(obj):
    """Bytes of the tensors in a (nested) state dict: the bulk of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    parts = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return sum(map(state_bytes, parts))


def training_state_bytes(model, optimizer):
    """A training checkpoint's size from its tensors: the weights and the optimizer's state;
    before the first step has created that, AdamW's two moments per trainable weight."""
    moments = state_bytes(optimizer.state_dict()["state"]) or 2 * sum(
        p.numel() * p.element_size() for group in optimizer.param_groups
        for p in group["params"])
    return state_bytes(model.state_dict()) + moments


def gib(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def load_checkpoint(path, mmap=False):
    """The checkpoint's contents, or CheckpointError saying why not (torn = incomplete file).
    mmap: the tensors stay on disk until read (a look at the step or history only)."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    paths = glob.glob(os.path.join(output_dir, "checkpoint-*.pth"))
    return {int(m.group(1)): p for p in paths if (m := re.search(r"checkpoint-(\d+)\.pth$", p))}


def keep_epoch_checkpoint(output_dir, epoch, epochs, every, keep_last=0):
    """After checkpoint-latest.pth holds the end of `epoch`, keep an atomic file copy as
    checkpoint-{epoch}.pth every `every` epochs and at the last one; with keep_last > 0 only
    the newest keep_last numbered files stay (a 300-epoch run must not fill a quota)."""
    if (epoch + 1) % every and epoch + 1 != epochs:
        return
    path, latest = os.path.join(output_dir, f"checkpoint-{epoch}.pth"), os.path.join(
        output_dir, LATEST)
    _write_atomically(path, lambda tmp: shutil.copyfile(latest, tmp),
                      lambda: os.path.getsize(latest))
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


def find_resume_checkpoint(output_dir, mmap=False):
    """(path, state) of the newest checkpoint in output_dir, or None when there is none.

    Newest first (checkpoint-latest.pth, then checkpoint-N.pth by descending N), stopping at
    the first that loads, so at most one checkpoint is held in memory. A torn file is skipped
    with a warning; any other failure stops the run (CheckpointError): restarting from an older
    file, or from scratch, must never happen silently. A numbered file whose stored step is
    past checkpoint-latest.pth's (a restore, a copy between clocks that disagree) wins, with a
    warning: the stored step decides, not the name."""
    numbered = numbered_checkpoints(output_dir)
    candidates = [os.path.join(output_dir, LATEST)] + [numbered[n] for n in sorted(
        numbered, reverse=True)]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            found = path, check_training_state(path, load_checkpoint(path, mmap))
        except CheckpointError as err:
            if not err.torn:
                raise
            log.warning("skipping %s: %s; trying the next older checkpoint", path, err.reason)
            continue
        if path == candidates[0] and len(candidates) > 1 and (
                later := _stored_step(candidates[1])) > found[1]["step"]:
            log.warning("WARNING: %s holds step %d, %s step %d (restored or copied out of "
                        "order?): resuming from the later one", path, found[1]["step"],
                        candidates[1], later)
            del found
            return candidates[1], check_training_state(candidates[1],
                                                       load_checkpoint(candidates[1], mmap))
        return found
    return None


def _stored_step(path):
    """A checkpoint's stored step, read without loading its tensors (-1 if unreadable)."""
    try:
        return int(load_checkpoint(path, mmap=True)["step"])
    except (CheckpointError, KeyError):
        return -1


def resume_checkpoint(args):
    """(path, state) to resume from: --resume, else the newest in --output_dir, else None.
    When --output_dir holds a later checkpoint of the run that started from --resume (a
    requeued command that still names it), that one: the run's own newest state wins."""
    if not args.resume:
        return find_resume_checkpoint(args.output_dir) if args.auto_resume else None
    # both looked at with their tensors left on disk; only the one resumed is read whole
    given = args.resume, check_training_state(args.resume, load_checkpoint(args.resume, True))
    own = find_resume_checkpoint(args.output_dir, True) if os.path.isdir(args.output_dir) else None
    if own and not os.path.samefile(own[0], args.resume) and own[1]["step"] > given[1][
            "step"] and any(_same_file(r.get("checkpoint"), args.resume)
                            for r in own[1].get("history") or []):
        log.warning("WARNING: resuming from %s (step %d), which this run wrote after it started "
                    "from --resume %s (step %d)", own[0], own[1]["step"], args.resume,
                    given[1]["step"])
        given = own
    return given[0], load_checkpoint(given[0])


def _same_file(a, b):
    return bool(a) and os.path.exists(a) and os.path.samefile(a, b)


def kind_of(state):
    """'stage-1 pretraining', 'stage-2 pretraining' or 'fine-tuning': stored since format 2,
    else what the stored arguments suggest; None for a file of someone else's."""
    saved = state.get("args") or {} if isinstance(state, dict) else {}
    guess = (f"stage-{saved['stage']} pretraining" if "stage" in saved else
             "fine-tuning" if "linear_probe" in saved else None)
    return state.get("kind", guess) if isinstance(state, dict) else None


def describe(state):
    """What a checkpoint is, for error messages."""
    if (kind := kind_of(state)) is None:
        return "a checkpoint without this framework's run arguments"
    saved = state.get("args") or {}
    return (f"a {kind} checkpoint of {saved.get('model')} ({saved.get('num_frames')} frames, "
            f"{saved.get('input_size')} px)")


def model_weights(state, keys=WEIGHT_KEYS):
    """The weights in any checkpoint layout we read: ours and the authors' ('model'),
    DeepSpeed's ('module'), VideoMAE's ('model' or 'module'), timm's and others'
    ('state_dict'), or bare tensors; a DataParallel 'module.' prefix is dropped."""
    for key in keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def scored(state, raw=False):
    """(state, phrase): a fine-tuning run with --model_ema scores its EMA weights, so a
    checkpoint of it is read as those (under 'model') unless `raw`; the phrase says which."""
    if isinstance(state, dict) and state.get("scored") == "model_ema" and state.get("model_ema"):
        if not raw:
            return dict(state, model=state["model_ema"]), "its EMA weights, which the run " \
                "scored (--raw_weights: the raw ones)"
        return state, "its raw weights (--raw_weights; the run scored its EMA weights)"
    return state, "the weights"


def misfit(own, weights, strict=True):
    """One line saying what of `weights` does not fit a model's state dict `own` (keys
    missing, unexpected, of another shape), or '' when all fits; strict=False names only the
    weights of another shape (a partial load is fine, a wrong size or grid is not)."""
    missing = [k for k in own if k not in weights] if strict else []
    unexpected = [k for k in weights if k not in own] if strict else []
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in (
        (missing, "keys missing"), (unexpected, "unexpected keys"),
        (reshaped, "weights have another shape")) if keys]
    if reshaped:
        k = reshaped[0]
        parts[-1] += f": {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} here"
    return "; ".join(parts)


def load_model_weights(model, weights, path):
    """Strict load with a one-line CheckpointError instead of torch's page of key names."""
    if problem := misfit(model.state_dict(), weights):
        raise CheckpointError(path, "its weights do not fit the model these arguments build: "
                                    + problem)
    model.load_state_dict(weights)


def restore(state, model, optimizer, scaler=None, model_ema=None, path=""):
    """Load a training checkpoint into the pieces (resume_position says where to start)."""
    load_model_weights(model, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if model_ema is not None and state.get("model_ema"):
        model_ema.load_state_dict(state["model_ema"])


def training_state(model, optimizer, epoch, next_batch, steps_per_epoch, args, scaler=None,
                   model_ema=None, **extra):
    """What a checkpoint holds (the module's docstring); `extra`: kind, model_kwargs, ..."""
    return dict(format=FORMAT, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scored="model_ema" if model_ema else "model",  # what the run's test scores
                scaler=scaler.state_dict() if scaler else None,
                model_ema=model_ema.state_dict() if model_ema else None, epoch=epoch,
                next_batch=next_batch, step=epoch * steps_per_epoch + next_batch,
                args=vars(args), **extra)
