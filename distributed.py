"""Processes: process groups, collectives, seeding, the resumable sampler and training loader,
model wrapping, DataLoader workers that outlive stop signals."""
import datetime
import functools
import gc
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before the process group: see init_distributed)

import stop_signals
from errors import UsageError

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device_name, local_rank_arg=-1, use_deepspeed=False, timeout_s=None):
    """One process or many: torchrun (RANK/WORLD_SIZE/LOCAL_RANK, else the old launcher's
    --local_rank) or SLURM srun (SLURM_PROCID/NTASKS/LOCALID; MASTER_ADDR/PORT from the
    environment or the job's first node). NCCL on GPUs, gloo on CPUs. A collective that waits
    over `timeout_s` for a peer raises (guard.failure_line names it); NCCL's asynchronous
    error handling aborts its communicators and raises in this process instead of hanging."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", max(local_rank_arg, 0)))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        rank, world, local = (int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                              int(env["SLURM_LOCALID"]))
        if "MASTER_ADDR" not in env:
            nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
            env["MASTER_ADDR"] = nodes[0]
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", 0)) % 1000))
    else:
        rank, world, local = 0, 1, 0
    use_cuda = device_name == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        # torch.distributed.nn (imported at the top) and DeepSpeed's comm capture the world group
        # in default arguments: imported after it, they keep it alive into teardown (-6 there).
        if use_deepspeed:
            import deepspeed.comm  # noqa: F401
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")  # 2: clean up, raise
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world,
                                timeout=timeout_s and datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local, device)


def close_distributed():
    """Free every process group, and gloo's threads with it, while Python is still whole."""
    deepspeed = sys.modules.get("deepspeed")  # imported by init_distributed when in use
    if deepspeed is not None and deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's copies of the groups
    elif dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # an engine in a reference cycle still holds its groups


def all_reduce_mean(value, dist_info):
    if dist_info.world_size == 1:
        return float(value)
    t = torch.tensor(float(value), device=dist_info.device)
    dist.all_reduce(t)
    return t.item() / dist_info.world_size


def all_reduce_max(array, dist_info):
    """Element-wise maximum of a uint8 numpy array over the ranks (a union of bitmaps)."""
    if dist_info.world_size == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).to(dist_info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy()


def all_gather_objects(obj, dist_info):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if dist_info.world_size == 1:
        return [obj]
    parts = [None] * dist_info.world_size
    dist.all_gather_object(parts, obj)
    return parts


def first_of_ranks(value, dist_info):
    """The lowest rank's value that is not None, on every rank (e.g. an error that one rank
    met and all must stop for)."""
    return next(filter(lambda v: v is not None, all_gather_objects(value, dist_info)), None)


def host_and_address():
    """(host name, IP address) of this process's node, to name a peer that went away."""
    host = socket.gethostname()
    try:
        return host, socket.gethostbyname(host)
    except OSError:
        return host, ""


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """This process's random states (drop path, mixup, RandomErasing in the main process), as
    lists of numbers: a weights_only load reads them, and a gather among ranks pickles them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return dict(torch=torch.get_rng_state().tolist(), numpy=[kind, keys.tolist(), pos, has_gauss,
                                                            gauss],
                python=[random.getstate()[0], list(random.getstate()[1])],
                cuda=[state.tolist() for state in cuda])


def set_rng_state(saved):
    """Put back what rng_state gave: a resumed run draws what the stopped one would have."""
    as_bytes = functools.partial(torch.tensor, dtype=torch.uint8)
    torch.set_rng_state(as_bytes(saved["torch"]))
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, gauss))
    random.setstate((saved["python"][0], tuple(saved["python"][1]), None))
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([as_bytes(state) for state in saved["cuda"]])


def seed_worker(worker_id):
    """DataLoader workers: distinct, reproducible seeds, and deaf to stop signals (torch gives
    its workers a SIGTERM handler that dies of any SIGTERM the parent did not send: SLURM
    signals every process of a job step, and a dead worker takes the run down before it can
    save). The handler of stop_signals.py is put back; it ignores them in a worker."""
    if stop_signals.is_installed():  # the entry points; a tool's workers keep torch's
        for sig in stop_signals.STOP_SIGNALS:
            signal.signal(sig, stop_signals.stop_flag().handle)
    signal.set_wakeup_fd(-1)  # the parent's (guard.DataWatch) is for its own signals
    if board := getattr(torch.utils.data.get_worker_info().dataset, "board", None):
        board.in_worker()  # a batch lost on its way out is reported (guard.ReadBoard)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals.STOP_SIGNALS)  # see start_workers
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def start_workers(loader):
    """iter(loader) with the stop signals blocked while the workers are forked: one that
    arrives before a worker has run seed_worker waits, and is then ignored by it. The main
    process gets its own copy as soon as the workers exist. A worker that dies is found where
    the loop waits for data (torch looks every 5 s), never by torch's SIGCHLD handler in the
    middle of a step, whose update a save would then catch half-recorded."""
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals.STOP_SIGNALS)
    try:
        batches = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals.STOP_SIGNALS)
    unwatch_workers(batches)
    return batches


def unwatch_workers(batches):
    """Take a loader iterator's workers off torch's SIGCHLD watch (torch internals: the one
    place that uses them; tests/test_stalls.py fails if they change)."""
    if getattr(batches, "_worker_pids_set", False):
        from torch.utils.data._utils.signal_handling import _remove_worker_pids
        _remove_worker_pids(id(batches))
        batches._worker_pids_set = False


def worker_death(batches):
    """The RuntimeError torch gives a dead worker, for one killed while the main process took
    over its batch's memory (torch raises a reset connection then); None if all live."""
    for _ in range(40):  # a killed worker is reaped moments after its sockets close
        if dead := [str(w.pid) for w in getattr(batches, "_workers", ()) if not w.is_alive()]:
            return RuntimeError(f"DataLoader worker (pid(s) {', '.join(dead)}) exited unexpectedly")
        time.sleep(0.05)


def stop_workers(batches):
    """End a loader iterator's workers now, also when an exception leaves the loop (torch keeps
    the iterator of a re-raised worker exception alive in a reference cycle until exit). A
    worker still busy after torch's grace period gets its SIGTERM inside `shutting_down`, the
    one window in which workers die of it (and torch's watch of them is off: start_workers)."""
    unwatch_workers(batches)
    with stop_signals.stop_flag().shutting_down():
        getattr(batches, "_shutdown_workers", lambda: None)()


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a shuffled epoch, optionally starting after `skip_batches` batches.

    The order of epoch e depends only on (seed, e), so a run resumed mid-epoch sees exactly
    the batches it had not seen, and ranks split one global order: with R ranks, global batch
    b holds the same clips as batch b of a one-process run with an R times larger batch.
    With `repeats` clips per sample (repeated sampling) an epoch draws 1/repeats of the
    samples: epochs k*repeats ... k*repeats + repeats - 1 share one shuffled order and each
    takes its own part, so every sample comes once per `repeats` epochs.
    """

    def __init__(self, num_samples, batch_size, rank, world_size, seed, repeats=1):
        self.num_samples, self.batch_size, self.repeats = num_samples, batch_size, repeats
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = num_samples // repeats // world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip = epoch, skip_batches * self.batch_size

    def __iter__(self):
        block, part = divmod(self.epoch, self.repeats)
        order = torch.randperm(self.num_samples,
                               generator=torch.Generator().manual_seed(self.seed + block))
        size = self.num_samples // self.repeats
        order = order[part * size:(part + 1) * size]
        mine = order[:self.per_rank * self.world_size][self.rank::self.world_size]
        return iter(mine[self.skip:].tolist())

    def __len__(self):
        return max(self.per_rank - self.skip, 0)


def train_loader(dataset, args, dist_info, collate_fn, repeats=1):
    """(loader, sampler) of --batch_size clips per step: batch_size / repeats samples of
    `repeats` clips each. Workers are made anew each epoch (not persistent), so they see
    set_epoch and known_bad. A UsageError for an epoch shorter than one update."""
    per_step = args.batch_size // repeats
    sampler = ResumableSampler(len(dataset), per_step, dist_info.rank, dist_info.world_size,
                               args.seed, repeats)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_step, sampler=sampler, num_workers=args.num_workers,
        drop_last=True, pin_memory=args.pin_mem and dist_info.device.type == "cuda",
        worker_init_fn=seed_worker, collate_fn=collate_fn,
        # the workers' base seed from its own generator: the main random state (drop path,
        # mixup), saved and restored at a resume, draws nothing when an epoch's workers start
        generator=torch.Generator().manual_seed(args.seed))
    if len(loader) < args.update_freq:
        raise UsageError(f"{len(dataset)} videos make {len(loader)} batches of {args.batch_size} "
                         f"clips x {dist_info.world_size} processes, fewer than one update of "
                         f"--update_freq {args.update_freq}" + (
                             f" ({repeats} clips from each video)" if repeats > 1 else ""))
    return loader, sampler


def wrap_for_training(model, optimizer, args, dist_info, accumulation=1):
    """DeepSpeed engine (--enable_deepspeed), DDP (several processes) or the model itself.
    Returns (model to call, optimizer, the bare module whose state dict is saved).

    DeepSpeed runs ZeRO stage 0 (no sharding): the optimizer state stays whole on every rank,
    so the one atomic checkpoint of rank 0 resumes exactly. At ViT-B size ZeRO-1 would save
    about 1 GB per GPU, and its sharded state would need DeepSpeed's own per-rank files."""
    if args.enable_deepspeed:
        import deepspeed
        config = {"train_micro_batch_size_per_gpu": args.batch_size,
                  "gradient_accumulation_steps": accumulation,
                  "gradient_clipping": args.clip_grad or 0.0,
                  "zero_optimization": {"stage": 0}, "steps_per_print": 2**31}
        model, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                      config=config, dist_init_required=False)
    elif dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[dist_info.local_rank]
                                        if dist_info.device.type == "cuda" else None)
    return model, optimizer, (model.module if hasattr(model, "module") else model)
