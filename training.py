"""The training skeleton both entry points run, and the one optimiser step both engines take.

    fit(args, dist_info, Job): resume -> wrap -> schedule -> epochs of steps (bad files
         judged, progress with ETA, stop signals) -> save -> numbered copy -> validation
    train_step: set the LR -> the engine's loss -> backward, optimiser step -> EMA
"""
import dataclasses
import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import checkpoint
import distributed
import guard
import outputs
import stop_signals
from bad_files import BadFileLedger
from errors import NonFiniteLossError, OutsideFailure, WriteError
from outputs import MetricLogger
from utils import cosine_lr, format_eta

log = logging.getLogger("smile")
UNFINISHED = "unfinished_epoch.pt"  # an epoch whose after_epoch a stop signal cut short


# ---------------------------------------------------------------- the step
def check_finite(loss):
    """Host-side check, for the paths that cannot skip an update on the device (DeepSpeed, an
    optimiser without found_inf support): a sync, so only there."""
    if not math.isfinite(value := loss.item()):
        raise NonFiniteLossError(f"loss is {value}; stopping before the bad update reaches the "
                                 "weights (the last checkpoint is intact)")
    return value


def optimizer_step(model, optimizer, loss, scaler=None, clip_grad=None, accumulation=1,
                   update=True):
    """Backward, and on `update` one optimiser update: DeepSpeed (which accumulates, clips and
    steps by itself), fp16 through the grad scaler, or plain. Returns the gradient norm
    before clipping (a device tensor) when an update happened, else None.

    A non-finite gradient never reaches the weights, and costs no host sync: a fused
    optimiser gets found_inf and skips the update on the device (the grad scaler does the same
    for fp16); the training loop reports it at the next print."""
    if hasattr(model, "backward"):  # DeepSpeed engine
        check_finite(loss)
        model.set_gradient_accumulation_boundary(update)  # ours, not its own count
        model.backward(loss)
        norm = None
        if model.is_gradient_accumulation_boundary():
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                         for g in grads]))
        model.step()
        return norm
    (scaler.scale(loss) if scaler else loss).div(accumulation).backward()
    if not update:
        return None
    if scaler is not None:  # unscale before clipping
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_grad or float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = (~torch.isfinite(norm)).float()
        else:
            check_finite(norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


# ---------------------------------------------------------------- the epoch
@dataclass
class Step:
    """What one step uses (train_step); loss_fn(model, batch) -> (loss, {name: tensor})."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    scaler: Optional[torch.amp.GradScaler] = None
    model_ema: Optional[torch.nn.Module] = None
    accumulation: int = 1
    clip_grad: Optional[float] = None


@dataclass
class Job:
    """What fit trains: its `step`, the data (`loader`, `sampler`, `dataset`), and `kind` and
    `model_kwargs` (build keywords) for every checkpoint, `after_epoch(model, epoch, logger)`
    -> metrics (validation, pictures), or None when a stop signal cut it short (the resume
    calls it again), `initialize(model)`: start weights if nothing resumes, `prefetch(batches,
    board, first_slot)` -> batches: work the training process does a batch ahead
    (decode_ahead.DecodeAhead), with `prefetch.threads` read-board slots from `first_slot`."""
    kind: str
    step: Step
    loader: torch.utils.data.DataLoader
    sampler: distributed.ResumableSampler
    dataset: torch.utils.data.Dataset
    model_kwargs: Optional[dict] = None
    after_epoch: Optional[Callable] = None
    initialize: Optional[Callable] = None
    prefetch: Optional[Callable] = None


def train_step(step, batch, lr, update):
    """One step (the module's docstring); the metrics stay device tensors until a print step."""
    for group in step.optimizer.param_groups:  # layer decay: each group keeps its own scale
        group["lr"] = lr * group.get("lr_scale", 1.0)
    loss, metrics = step.loss_fn(step.model, batch)
    norm = optimizer_step(step.model, step.optimizer, loss, step.scaler, step.clip_grad,
                          step.accumulation, update)
    if norm is not None and step.model_ema is not None:
        step.model_ema.update(getattr(step.model, "module", step.model))
    grad = {} if norm is None else {"grad_norm": norm.detach()}
    return {"loss": loss.detach(), **grad, **{k: v.detach() for k, v in metrics.items()}}


@dataclass
class Run:
    """What an epoch needs of the run around it (fit makes it): the processes, the schedule
    lr_at(epoch, batch), where metrics, bad files and stop signals go, and the data watch."""
    dist: distributed.Dist
    steps_per_epoch: int
    epochs: int
    print_freq: int
    clips_per_step: int
    lr_at: Callable
    logger: MetricLogger
    ledger: BadFileLedger
    stop_flag: stop_signals.StopFlag
    watch: guard.DataWatch


def train_one_epoch(job, run, epoch, first_batch):
    """One epoch from batch `first_batch` -> (mean metrics, the batch after a stop or None)."""
    job.step.model.train()
    totals, counts, data_time, start = {}, {}, 0.0, time.time()
    window_start, window_data, window_steps = start, 0.0, 0
    run.watch.update_done((epoch, first_batch))
    loaded = batches = distributed.start_workers(job.loader)
    if job.prefetch:  # its reads come after the workers' on the board
        batches = job.prefetch(loaded, job.dataset.board, job.loader.num_workers + 1)
    try:
        wait_start, bad_step, stopping = time.time(), None, False
        for i, batch in enumerate(run.watch.batches(batches, loaded), start=first_batch):
            waited = time.time() - wait_start
            data_time, window_data = data_time + waited, window_data + waited
            run.ledger.record(batch.attempts, epoch)
            step = epoch * run.steps_per_epoch + i
            # an update every `accumulation` batches and at the epoch's end (none leaks over)
            boundary = (i + 1) % job.step.accumulation == 0 or i + 1 == run.steps_per_epoch
            metrics = train_step(job.step, batch, lr := run.lr_at(epoch, i), update=boundary)
            if boundary:  # what a save holds from here on
                run.watch.update_done((epoch, i + 1))
            for key, value in metrics.items():
                totals[key], counts[key] = totals.get(key, 0.0) + value, counts.get(key, 0) + 1
            window_steps += 1
            # the first step whose loss was not finite (its update was skipped), on the device
            bad = ~torch.isfinite(metrics["loss"])
            bad_step = torch.where(bad, step, -1) if bad_step is None else torch.where(
                (bad_step < 0) & bad, step, bad_step)
            printing = (i + 1) % run.print_freq == 0 or i + 1 == run.steps_per_epoch
            if printing:
                stop_if_not_finite(bad_step, metrics, run.dist)
                run.ledger.check()
                elapsed = time.time() - window_start
                _log_progress(run, epoch, i, lr, metrics, elapsed / window_steps,
                              run.clips_per_step * window_steps / elapsed,
                              window_data / elapsed)
                window_start, window_data, window_steps = time.time(), 0.0, 0
            # ranks agree on stopping where they meet anyway (an all-reduce is a host sync),
            # then stop together at the next update: a resume never starts mid-accumulation
            stopping = stopping or (printing or run.dist.world_size == 1) and (
                distributed.all_reduce_mean(float(bool(run.stop_flag)), run.dist) > 0)
            if stopping and boundary:
                return _means(totals, counts, run, data_time, start), i + 1
            wait_start = time.time()
    finally:
        if batches is not loaded:
            batches.close()
        distributed.stop_workers(loaded)
    run.ledger.check(epoch_end=True)
    return _means(totals, counts, run, data_time, start), None


def stop_if_not_finite(bad_step, metrics, dist_info):
    """At the print step, the one read of the step's health: a non-finite loss on any rank
    stops every rank (its update was skipped; the last checkpoint is intact)."""
    first = distributed.all_reduce_max(bad_step.reshape(1).cpu().numpy(), dist_info)[0]
    if first >= 0:
        raise NonFiniteLossError(f"loss is {float(metrics['loss']):.4g} (non-finite from step "
                                 f"{first} on); that update was skipped and the run stops "
                                 "(the last checkpoint is intact)")


def _log_progress(run, epoch, i, lr, metrics, step_time, clips_per_s, data_fraction):
    step = epoch * run.steps_per_epoch + i
    values = {k: float(v) for k, v in metrics.items()}  # the device is read here only
    values.update(loss=distributed.all_reduce_mean(values["loss"], run.dist), lr=lr,
                  clips_per_s=clips_per_s, data_wait_fraction=data_fraction)
    run.logger.scalars(step, values)
    left_epoch = (run.steps_per_epoch - i - 1) * step_time
    left_total = left_epoch + (run.epochs - epoch - 1) * run.steps_per_epoch * step_time
    grad = f"  grad {values['grad_norm']:.3f}" if "grad_norm" in values else ""
    log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.3e%s  %.1f clips/s  data %.0f%%  "
             "eta epoch %s total %s", epoch + 1, run.epochs, i + 1, run.steps_per_epoch,
             values["loss"], lr, grad, clips_per_s, 100 * data_fraction,
             format_eta(left_epoch), format_eta(left_total))


def _means(totals, counts, run, data_time, start):
    out = {k: distributed.all_reduce_mean(v / counts[k], run.dist) for k, v in totals.items()}
    return dict(out, data_wait_fraction=data_time / max(time.time() - start, 1e-9),
                steps=counts.get("loss", 0))


# ---------------------------------------------------------------- the run
def lr_schedule(args, steps_per_epoch, accumulation):
    """lr_at(epoch, batch): warm-up, then cosine, over the optimiser updates (an epoch's last,
    shorter group of batches is an update too), at the LRs scaled to the effective batch."""
    updates = -(-steps_per_epoch // accumulation)
    return lambda epoch, i: cosine_lr(
        epoch * updates + i // accumulation, args.scaled_lr, args.scaled_min_lr,
        args.warmup_epochs * updates, args.epochs * updates, args.scaled_warmup_lr)


def fit(args, dist_info, job):
    """Train `job` for args.epochs from where the output folder says the run is. Returns the
    trained bare module, or None when a stop signal ended the run after it saved."""
    step, steps_per_epoch = job.step, len(job.loader)
    ledger = BadFileLedger(job.dataset.file_paths, args.max_bad_fraction, args.output_dir,
                           dist_info)
    (start_epoch, first_batch), history, data_list = outputs.start_or_resume(
        args, dist_info, (step.model, step.optimizer, step.scaler, step.model_ema), job.dataset,
        steps_per_epoch, ledger, job.initialize)
    model, optimizer, net = distributed.wrap_for_training(step.model, step.optimizer, args,
                                                          dist_info, step.accumulation)
    job = dataclasses.replace(job, step=dataclasses.replace(step, model=model,
                                                            optimizer=optimizer))
    latest, saved = os.path.join(args.output_dir, checkpoint.LATEST), [(start_epoch, first_batch)]
    hosts = distributed.all_gather_objects(distributed.host_and_address(), dist_info)

    def write(position, rng):  # rng: {rank: its random states} (exact resume)
        checkpoint.save_checkpoint(latest, checkpoint.training_state(
            net, optimizer, *position, steps_per_epoch, args, step.scaler, step.model_ema,
            kind=job.kind, model_kwargs=job.model_kwargs, bad_files=ledger.state_dict(),
            data_list=data_list, history=history, rng=rng))
        saved[0] = position

    def save(epoch, next_batch):  # by rank 0; every rank learns if it failed
        ledger.merge()  # every rank's findings in the saved ledger
        rng = dict(enumerate(distributed.all_gather_objects(distributed.rng_state(), dist_info)))
        failed = None
        if dist_info.is_main:
            try:
                write((epoch, next_batch), rng)
                if not next_batch:
                    checkpoint.keep_epoch_checkpoint(args.output_dir, epoch - 1, args.epochs,
                                                     args.save_ckpt_freq, args.keep_last)
            except WriteError as err:
                failed = err
        if line := distributed.first_of_ranks(failed and str(failed), dist_info):
            raise failed or WriteError(line)  # rank 0's has the cause, for train.log

    def save_alone(hung=()):
        """The last completed update, by this rank without a collective (a peer may be
        gone, or the main thread stuck): ranks hold the same weights. -> what it did."""
        position = watch.completed or saved[0]
        try:
            ledger.write_now(hung, position[0])
            if fresh := position != saved[0]:
                write(position, {dist_info.rank: distributed.rng_state()})  # the others' lost
        except WriteError as err:
            return f"; the save failed too: {err}"
        return (f"; {'saved' if fresh else 'nothing to save since'} epoch {position[0] + 1} "
                f"batch {position[1]}{' to ' + latest if fresh else ''}, run the same command "
                "to resume")

    def bail(code, line, hung):  # the watch's thread: the loop is blocked
        guard.end_process(code, ("" if code == 0 else "error: ") + line + save_alone(hung))

    explain = functools.partial(guard.failure_line, args=args, hosts=hosts, rank=dist_info.rank)
    stop_flag = stop_signals.stop_flag()  # installed at import by the entry points
    job.dataset.board = guard.ReadBoard(job.loader.num_workers,  # the workers inherit it
                                        getattr(job.prefetch, "threads", 0))
    watch = guard.DataWatch(job.dataset.board, ledger.describe, args.data_warn_s,
                            args.data_timeout_s, stop_flag, bail, dist_info.rank, explain)
    run = Run(dist_info, steps_per_epoch, args.epochs, args.print_freq,
              args.batch_size * dist_info.world_size,
              lr_schedule(args, steps_per_epoch, step.accumulation),
              MetricLogger(args.output_dir, args.log_dir, dist_info.is_main), ledger, stop_flag,
              watch)
    outputs.first_step_begins()
    try:
        with watch:
            return _epochs(args, job, run, start_epoch, first_batch, net, save, latest)
    except Exception as err:  # from outside the step: a peer, a worker, memory
        if (failure := explain(err)) is None:
            raise
        line, code = failure
        log.debug("%s", line, exc_info=True)
        if stop_flag:  # a peer that had the signal too ended first
            log.info("%s received, then %s%s", stop_flag.signal, line, save_alone())
            return None
        raise OutsideFailure(line + save_alone(), code) from err


def _epochs(args, job, run, start_epoch, first_batch, net, save, latest):
    pending = os.path.join(args.output_dir, UNFINISHED)
    cut = run.dist.is_main and first_batch == 0 and os.path.isfile(pending)
    cut = distributed.first_of_ranks(checkpoint.load_checkpoint(pending) if cut else None, run.dist)
    if cut and cut["epoch"] + 1 == start_epoch and not _close_epoch(job, run, net, pending, **cut):
        return None
    for epoch in range(start_epoch, args.epochs):
        job.dataset.set_epoch(epoch)
        job.dataset.known_bad = run.ledger.known_bad()  # workers are forked per epoch
        job.sampler.set_epoch(epoch, skip_batches=first_batch)
        stats, stopped_at = train_one_epoch(job, run, epoch, first_batch)
        first_batch, mid_epoch = 0, stopped_at is not None and stopped_at < run.steps_per_epoch
        position = (epoch, stopped_at) if mid_epoch else (epoch + 1, 0)
        save(*position)  # at an epoch's end also when the signal came at its last step
        if not mid_epoch and not _close_epoch(job, run, net, pending, epoch, stats):
            return None
        if stopped_at is None and position[0] < args.epochs and distributed.all_reduce_mean(
                float(bool(run.stop_flag)), run.dist) > 0:  # came during validation
            stopped_at = 0
        if stopped_at is not None and position[0] < args.epochs:
            log.info("%s received: saved epoch %d batch %d to %s; run the same command to "
                     "resume", run.stop_flag.signal, position[0] + 1, position[1], latest)
            return None
    run.logger.close()
    log.info("finished %d epochs; checkpoints and logs in %s", args.epochs, args.output_dir)
    return net


def _close_epoch(job, run, net, pending, epoch, stats):
    """after_epoch, then the epoch's record. False when a stop signal cut after_epoch short:
    `pending` then holds what the resume needs to finish it."""
    if job.after_epoch and run.dist.is_main:
        checkpoint.save_checkpoint(pending, dict(epoch=epoch, stats=stats))
    if (extra := job.after_epoch(net, epoch, run.logger) if job.after_epoch else {}) is None:
        log.info("%s received: epoch %d is saved, its validation is finished when the same "
                 "command runs again", run.stop_flag.signal, epoch + 1)
        return False
    run.logger.epoch({"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}, **extra})
    log.info("epoch %d done: loss %.4f", epoch + 1, stats.get("loss", float("nan")))
    if job.after_epoch and run.dist.is_main:
        os.remove(pending)
    return True
