"""A run and its --output_dir: one writer per folder, a resume that is the same run (or says
how it is not), and the run's history.

    open_output_dir: claim the folder (a lock the kernel releases), then log into it
    start_or_resume: resume the newest checkpoint after checking it is this run, or start
    OUTPUT_DIR: args.json (what the run started with), run_history.jsonl (every start and
    resume, with what changed), .lock (who holds the folder now)
    MetricLogger: log.txt and TensorBoard; a TensorBoard folder that fails (quota,
        permissions) warns once and is left, the run goes on
"""
import contextlib
import errno
import fcntl
import functools
import glob
import json
import logging
import os
import shutil
import socket
import threading
import time

import checkpoint
import distributed
import utils
from errors import UsageError

log = logging.getLogger("smile")


def open_output_dir(args, dist_info):
    """Make --output_dir and claim it for this run before anything is written there; every
    rank learns if it is taken. Then log into it, and clear what a killed writer left."""
    refused = None
    if dist_info.is_main:
        if not os.path.isdir(args.output_dir):
            _MADE.append(("folder", args.output_dir))
        os.makedirs(args.output_dir, exist_ok=True)
        try:
            claim_output_dir(args.output_dir)
        except UsageError as err:
            refused = str(err)
    if refused := distributed.first_of_ranks(refused, dist_info):
        raise UsageError(refused)
    utils.setup_logging(dist_info, args.output_dir)
    if dist_info.is_main:  # half-written checkpoints of a killed writer (the folder is ours)
        for path in glob.glob(os.path.join(args.output_dir, "*.pth.tmp.*")):
            log.info("removing %s (%s), left by a run that was killed while saving", path,
                     checkpoint.gib(os.path.getsize(path)))
            os.remove(path)


_LOCKS = {}  # output folder -> the open lock file of this process


def claim_output_dir(output_dir):
    """Hold a POSIX lock on OUTPUT_DIR/.lock for the rest of this process, or raise UsageError
    naming the run that holds it (host, PID, start time).

    The kernel drops the lock when its process ends, however it ends (SIGKILL, OOM, a node
    failure), so a stale lock cannot exist; on NFS the server drops a dead client's locks
    when its lease ends (about 90 s). Forked DataLoader workers do not inherit a POSIX lock.
    A file system without locks (Lustre mounted without -o flock) gets a warning, not a
    refusal."""
    output_dir = os.path.realpath(output_dir)
    if output_dir in _LOCKS:
        return
    fd = os.open(os.path.join(output_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            log.warning("WARNING: cannot lock %s (%s): nothing stops a second run from writing "
                        "into it at the same time", output_dir, err.strerror)
            os.close(fd)
            return
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"{output_dir} is in use by another run ({holder}); wait for it to "
                         "end, or give this run another --output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
    _LOCKS[output_dir] = fd


_MADE = []  # what this process made in a run's folders before the run's first step


def forget_refused_run():
    """A run refused before its first step (a usage error) leaves nothing behind: the folder
    it made, else the files it made there (args.json, run_history.jsonl)."""
    for kind, path in reversed(_MADE):
        if kind == "folder":
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.isfile(path):
            os.remove(path)
    _MADE.clear()


def first_step_begins():
    _MADE.clear()  # from here on the folder holds a run


def release_output_dirs():
    """Let go of every folder this process holds (its exit would do the same)."""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1])


def start_or_resume(args, dist_info, pieces, dataset, steps_per_epoch, ledger, initialize=None):
    """Resume the newest checkpoint of --output_dir if it is this run (check_same_run), else
    start (initialize(model): the start weights). `pieces`: (model, optimizer, scaler,
    model_ema). Returns (epoch, batch) to start at, the run's history and its list's identity,
    for the next checkpoints."""
    model, optimizer, scaler, model_ema = pieces
    digest = getattr(dataset, "list_digest", None)
    data_list = dict(digest=digest, entries=len(dataset)) if digest else None
    start, history = (0, 0), []
    resume = checkpoint.resume_checkpoint(args)
    if resume:
        path, state = resume
        changes = check_same_run(path, state, args, data_list)
        checkpoint.restore(state, model, optimizer, scaler, model_ema, path)
        if rng := (state.get("rng") or {}).get(dist_info.rank):  # drop path, mixup
            distributed.set_rng_state(rng)
        start = resume_position(state, args, steps_per_epoch, bool(changes["data_list"]))
        if changes["data_list"]:
            log.warning("WARNING: --new_data_list: %d videos now (%d before), %d steps per epoch; "
                        "training goes on at epoch %d, step %d of %d", len(dataset),
                        changes["data_list"][0]["entries"], steps_per_epoch, start[0] + 1,
                        start[0] * steps_per_epoch, args.epochs * steps_per_epoch)
        else:  # which files were tried so far, by list index
            ledger.load_state_dict(state.get("bad_files"))
        record = dict(event="resume", checkpoint=path, epoch=start[0], batch=start[1],
                      step=start[0] * steps_per_epoch + start[1], **changes)
        history = list(state.get("history") or []) + [record]
        checkpoint_bytes = os.path.getsize(path)
        log.info("resumed from %s: epoch %d, batch %d (step %d)", path, start[0] + 1, start[1],
                 record["step"])
    else:
        if not args.auto_resume and (os.path.isfile(os.path.join(args.output_dir,
                                                                  checkpoint.LATEST))
                                     or checkpoint.numbered_checkpoints(args.output_dir)):
            raise UsageError(f"{args.output_dir} holds another run's checkpoints, and with "
                             "auto_resume off this run would start over into it and overwrite "
                             "them: give it another --output_dir, or resume (--auto_resume)")
        record = dict(event="start", step=0)
        checkpoint_bytes = checkpoint.training_state_bytes(model, optimizer)
        if dist_info.is_main:  # what the run started with; later changes go to the history
            _MADE.append(("file", os.path.join(args.output_dir, "args.json")))
            with open(os.path.join(args.output_dir, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1)
        if initialize is not None:
            initialize(model)
    if dist_info.is_main:
        if not os.path.isfile(os.path.join(args.output_dir, HISTORY)):
            _MADE.append(("file", os.path.join(args.output_dir, HISTORY)))
        append_history(args.output_dir, record)
        numbered = sum(1 for e in range(start[0], args.epochs)
                       if (e + 1) % args.save_ckpt_freq == 0 or e + 1 == args.epochs)
        check_free_space(args.output_dir, checkpoint_bytes,
                         min(numbered, args.keep_last) if args.keep_last else numbered)
    return start, history, data_list


def check_free_space(folder, checkpoint_bytes, numbered_left):
    """Before the first step: say what the run's checkpoints will take, and warn when fewer
    than two fit (a save writes the new file beside the last one) or when the numbered copies
    still to come will not."""
    free, gib = shutil.disk_usage(folder).free, checkpoint.gib
    total = (2 + numbered_left) * checkpoint_bytes
    log.info("a checkpoint of this run takes %s; with the numbered ones to come (%d) the run "
             "needs %s more, %s has %s free", gib(checkpoint_bytes), numbered_left, gib(total),
             folder, gib(free))
    if free < 2 * checkpoint_bytes:
        log.warning("WARNING: %s has room for fewer than two checkpoints of %s (%s free), and a "
                    "save writes the new file beside the last one: free space or point "
                    "--output_dir elsewhere", folder, gib(checkpoint_bytes), gib(free))
    elif free < total:
        log.warning("WARNING: %s has %s free, the numbered checkpoints to come need %s: free "
                    "space, or keep fewer with --keep_last", folder, gib(free), gib(total))


# ---------------------------------------------------------------- a resume is the same run
# How a resume meets an argument that changed since its checkpoint was written (the README's
# "Resuming with other arguments"). The schedule may change, with a warning and a line in
# run_history.jsonl; the machinery silently. Anything else is something the run learns from
# (the data, masks, objects, teacher, target, model, grid, seed...): a change is refused.
SCHEDULE = {"lr", "min_lr", "warmup_lr", "epochs", "warmup_epochs", "weight_decay",
            "opt_betas", "clip_grad", "batch_size", "total_batch_size", "update_freq",
            "layer_decay", "drop_path"}
MACHINERY = {"num_workers", "print_freq", "pin_mem", "device", "precision", "compile",
             "use_checkpoint", "enable_deepspeed", "output_dir", "log_dir", "save_ckpt_freq",
             "keep_last", "auto_resume", "resume", "local_rank", "config",
             # where and how fast, not which clips
             "video_backend", "augment_on", "decode_on", "decode_threads", "object_cache_mb",
             "data_warn_s", "data_timeout_s", "dist_timeout_s",
             "max_bad_fraction", "max_retries", "dist_eval", "new_data_list", "vis_freq",
             "test_num_segment", "test_num_crop", "short_side_size",  # evaluation only
             # the list is compared by its content (data_list), not where it lies
             "data_path", "data_root",
             "first_stage_path", "finetune",  # read only when a run starts, not at a resume
             # follow flags compared above
             "scaled_lr", "scaled_min_lr", "scaled_warmup_lr", "grid"}
HISTORY = "run_history.jsonl"
RENAMED = {("teacher_input_norm", "clip"): "teacher"}  # (flag, older value): its name now


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_same_run(path, state, args, data_list=None):
    """Resume only this run. Returns what changed, {"schedule": {flag: [then, now]},
    "machinery": {...}, "data_list": [then, now] or None}, for the run history; raises
    CheckpointError (one line) for a change in what the run learns from, including another
    list (by content) unless --new_data_list."""
    saved = {k: RENAMED.get((k, v), v) if isinstance(v, str) else v
             for k, v in (state.get("args") or {}).items()}
    new = vars(args)
    changed = {k: (saved[k], new[k]) for k in saved.keys() & new.keys()
               if _plain(saved[k]) != _plain(new[k])}
    refuse = functools.partial(checkpoint.CheckpointError, path)
    if "stage" in changed:
        raise refuse(f"{os.path.dirname(path) or '.'} holds a stage-{saved['stage']} run and "
                     f"this is stage {new['stage']}; give each stage its own --output_dir")
    learns = sorted(k for k in changed if k not in SCHEDULE | MACHINERY)
    if learns:
        what = ", ".join(f"--{k} {changed[k][0]} (now {changed[k][1]})" for k in learns)
        raise refuse(f"it was written by another run: {what}; a resumed run keeps what it "
                     "learns from: use another --output_dir, or the same arguments to resume")
    then = state.get("data_list")
    list_changed = bool(then and data_list and then["digest"] != data_list["digest"])
    if list_changed and not args.new_data_list:
        raise refuse(f"--data_path {args.data_path} is not the list this run trained on "
                     f"({data_list['entries']} entries now, {then['entries']} then, other "
                     "content); to go on with it from the next epoch boundary add "
                     "--new_data_list, else use the run's list or another --output_dir")
    schedule = {k: [_plain(a), _plain(b)] for k, (a, b) in sorted(changed.items())
                if k in SCHEDULE}
    for k, (a, b) in schedule.items():
        flag = "batch x processes" if k == "total_batch_size" else f"--{k}"
        log.warning("WARNING: resuming with %s %s (the run had %s)", flag, b, a)
    return dict(schedule=schedule, data_list=[then, data_list] if list_changed else None,
                machinery={k: [_plain(a), _plain(b)] for k, (a, b) in sorted(changed.items())
                           if k in MACHINERY})


def append_history(output_dir, record):
    """One JSON line per start or resume of the run in OUTPUT_DIR/run_history.jsonl (args.json
    keeps the arguments the run started with)."""
    record = dict(time=time.strftime("%Y-%m-%d %H:%M:%S %Z"), host=socket.gethostname(),
                  pid=os.getpid(), **record)
    with open(os.path.join(output_dir, HISTORY), "a") as f:
        f.write(json.dumps(record) + "\n")


def resume_position(state, args, steps_per_epoch, new_list=False):
    """(epoch, batch) to start at. Mid-epoch, the saved batch index counts batches of the old
    list, batch size and process count; with another list, batch size, world size or
    --repeated_sampling it would skip the wrong clips, so the run starts at the next epoch
    instead (and says so)."""
    saved = state.get("args") or {}
    epoch, next_batch = state["epoch"], state["next_batch"]
    if next_batch >= steps_per_epoch:  # saved after an epoch's last step (older versions)
        return epoch + 1, 0
    # a saved batch index counts batches of (clips, clips over all processes, clips per video)
    now = args.batch_size, args.total_batch_size, getattr(args, "repeated_sampling", 1)
    then = saved.get("batch_size"), saved.get("total_batch_size"), saved.get("repeated_sampling", 1)
    why = "on the old list" if new_list else (
        f"with (batch, total batch, repeats) {then}, this run has {now}" if then != now else "")
    if next_batch and why:
        log.warning("the checkpoint stopped mid-epoch %s: the rest of epoch %d is skipped, "
                    "training goes on at epoch %d", why, epoch + 1, epoch + 2)
        return epoch + 1, 0
    return epoch, next_batch


# ---------------------------------------------------------------- the run's logs
class MetricLogger:
    """Epoch records as JSON lines (OUTPUT_DIR/log.txt) and TensorBoard scalars and pictures
    (rank 0 only). TensorBoard is a side-write: when it fails it warns once and is turned
    off, and training and checkpoints go on."""

    def __init__(self, output_dir, log_dir, enabled):
        self.enabled, self.output_dir, self.log_dir = enabled, output_dir, log_dir
        self.writer = None
        if enabled and log_dir:
            from torch.utils.tensorboard import SummaryWriter
            self._quiet_writer_thread()
            self._write(lambda: setattr(self, "writer", SummaryWriter(log_dir=log_dir)))

    def _write(self, call):
        try:
            call()
        except Exception as err:
            writer, self.writer = self.writer, None
            log.warning("WARNING: TensorBoard cannot write to %s (%s): it is off for the rest "
                        "of this run; training and checkpoints go on", self.log_dir,
                        checkpoint.cause_of(err))
            with contextlib.suppress(Exception):
                writer and writer.close()

    @staticmethod
    def _quiet_writer_thread():
        """TensorBoard's writer thread prints its own traceback before the main thread gets
        the error (that _write turns into one warning): say it in train.log only."""
        hook = threading.excepthook
        if getattr(hook, "quiet_tensorboard", False):
            return

        def quiet(info):
            if type(info.thread).__name__ == "_AsyncWriterThread":
                log.debug("TensorBoard's writer thread: %s", info.exc_value)
            else:
                hook(info)
        quiet.quiet_tensorboard = True
        threading.excepthook = quiet

    def scalars(self, step, values, prefix="train"):
        if self.writer:
            self._write(lambda: [self.writer.add_scalar(f"{prefix}/{key}", value, step)
                                 for key, value in values.items()])

    def image(self, tag, picture, step):
        """A uint8 [H, W, 3] picture (pictures.py)."""
        if self.writer:
            self._write(lambda: self.writer.add_image(tag, picture, step, dataformats="HWC"))

    def epoch(self, record):
        if self.enabled:
            with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer:
            self._write(self.writer.flush)

    def close(self):
        if self.writer:
            self._write(self.writer.close)
