"""Plumbing shared by the entry points: run flags, normalisation, distributed set-up, seeding,
the step-indexed LR schedule, atomic checkpoints with auto-resume, logging and pre-emption."""
import argparse
import functools
import gc
import glob
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before the process group: see init_distributed)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --precision -> autocast dtype
log = logging.getLogger("smile")


def autocast(device, precision):  # a disabled context for fp32
    dtype = HALF_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@functools.lru_cache(maxsize=None)
def _normalization(device, mean, std):
    # made once per device: a fresh host-to-device copy every step would stall the GPU stream
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(3, 1, 1, 1)
    offset = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(3, 1, 1, 1)
    return scale, offset


def normalize_video(video, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 video [..., 3, T, H, W] -> float32 (x / 255 - mean) / std, on the training device:
    the loader hands over uint8 so workers and host-to-device copies move a quarter of the bytes."""
    scale, offset = _normalization(video.device, tuple(mean), tuple(std))
    return video.float().mul_(scale).sub_(offset)


# ---------------------------------------------------------------- run flags
def add_run_args(parser):
    """Flags both entry points share; each sets its own defaults with parser.set_defaults."""
    parser.add_argument("--config", default=None, help="YAML file of defaults; flags win")
    g = parser.add_argument_group("run")
    g.add_argument("--drop_path", type=float, default=0.0, help="stochastic depth rate")
    g.add_argument("--batch_size", type=int, default=None, help="clips per GPU (process)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--lr", type=float, default=None, help="per 256 clips (scaled linearly)")
    g.add_argument("--min_lr", type=float, default=None, help="per 256 clips")
    g.add_argument("--warmup_lr", type=float, default=None, help="per 256 clips")
    g.add_argument("--warmup_epochs", type=int, default=None)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--opt_betas", type=float, nargs=2, default=None)
    g.add_argument("--clip_grad", type=float, default=None)
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 on GPUs that have it, else fp16; fp32 on CPU")
    g.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    g.add_argument("--num_workers", type=int, default=10)
    g.add_argument("--pin_mem", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--output_dir", default=None)
    g.add_argument("--log_dir", default=None, help="TensorBoard folder (default OUTPUT_DIR/tb)")
    g.add_argument("--save_ckpt_freq", type=int, default=20)
    g.add_argument("--auto_resume", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--resume", default=None, help="checkpoint to resume from")
    g.add_argument("--print_freq", type=int, default=20)
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by torch.distributed.launch; torchrun uses LOCAL_RANK instead")
    g.add_argument("--enable_deepspeed", action="store_true")
    g.add_argument("--zero_stage", type=int, default=0, choices=(0, 1))
    return parser


def parse_with_config(parser, argv=None):
    """timm-style: --config run.yaml supplies defaults, the command line wins."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        import yaml
        with open(known.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    return parser.parse_args(argv)


def check_run_args(args):
    if args.resume and not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume} does not exist")
    for name in ("batch_size", "epochs", "print_freq", "save_ckpt_freq"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if args.precision in ("bf16", "fp16") and args.device == "cpu":
        raise ValueError(f"--precision {args.precision} needs --device cuda")


def finalize_run_args(args, world_size, batch_multiplier=1):
    """Derived once: total batch, LRs scaled per 256 clips, the concrete precision."""
    args.total_batch_size = args.batch_size * world_size * batch_multiplier
    scale = args.total_batch_size / 256
    args.scaled_lr, args.scaled_min_lr = args.lr * scale, args.min_lr * scale
    args.scaled_warmup_lr = args.warmup_lr * scale
    if args.precision == "auto":
        cuda = args.device == "cuda" and torch.cuda.is_available()
        args.precision = ("fp32" if not cuda else
                          "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    args.log_dir = args.log_dir or os.path.join(args.output_dir, "tb")


def resume_checkpoint(args):
    """(path, state) to resume from: --resume, else the newest in --output_dir, else None."""
    if args.resume:
        return args.resume, load_checkpoint(args.resume)
    return find_resume_checkpoint(args.output_dir) if args.auto_resume else None


def restore(state, model, optimizer, scaler=None, model_ema=None):
    """Load a training checkpoint into the pieces; returns (epoch, next_batch) to start at."""
    model.load_state_dict(state["model"])
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


def wrap_for_training(model, optimizer, args, dist_info, accumulation=1):
    """DeepSpeed engine (--enable_deepspeed), DDP (several processes) or the model itself.
    Returns (model to call, optimizer, the bare module whose state dict is saved)."""
    if args.enable_deepspeed:
        import deepspeed
        config = {"train_micro_batch_size_per_gpu": args.batch_size,
                  "gradient_accumulation_steps": accumulation,
                  "gradient_clipping": args.clip_grad or 0.0,
                  "zero_optimization": {"stage": args.zero_stage}, "steps_per_print": 2**31}
        model, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                      config=config, dist_init_required=False)
    elif dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[dist_info.local_rank]
                                        if dist_info.device.type == "cuda" else None)
    return model, optimizer, (model.module if hasattr(model, "module") else model)


# ---------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device_name, local_rank_arg=-1, use_deepspeed=False):
    """One process or many: torchrun (RANK/WORLD_SIZE/LOCAL_RANK, else the old launcher's
    --local_rank) or SLURM srun (SLURM_PROCID/NTASKS/LOCALID; MASTER_ADDR/PORT from the
    environment or the job's first node). NCCL on GPUs, gloo on CPUs."""
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
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world)
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


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id):
    """DataLoader workers: distinct, reproducible seeds (torch seeds each worker itself)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a shuffled epoch, optionally starting after `skip_batches` batches.

    The order of epoch e depends only on (seed, e), so a run resumed mid-epoch sees exactly
    the batches it had not seen, and ranks split one global order: with R ranks, global batch
    b holds the same clips as batch b of a one-process run with an R times larger batch.
    """

    def __init__(self, num_samples, batch_size, rank, world_size, seed):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = num_samples // world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip = epoch, skip_batches * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.num_samples,
                               generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = order[:self.per_rank * self.world_size][self.rank::self.world_size]
        return iter(mine[self.skip:].tolist())

    def __len__(self):
        return max(self.per_rank - self.skip, 0)


# ---------------------------------------------------------------- schedule
def cosine_lr(step, base_lr, min_lr, warmup_steps, total_steps, warmup_lr=0.0):
    """Linear warmup from warmup_lr to base_lr, then cosine to min_lr at total_steps."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path, state):
    """Write to a temporary file, flush it to disk, then rename over `path`: a crash or kill at
    any moment leaves either the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def keep_epoch_checkpoint(output_dir, epoch, epochs, every):
    """After checkpoint-latest.pth holds the end of `epoch`, keep an atomic file copy as
    checkpoint-{epoch}.pth every `every` epochs and at the last one (VideoMAE's naming)."""
    if (epoch + 1) % every == 0 or epoch + 1 == epochs:
        path = os.path.join(output_dir, f"checkpoint-{epoch}.pth")
        tmp = f"{path}.tmp.{os.getpid()}"
        shutil.copyfile(os.path.join(output_dir, "checkpoint-latest.pth"), tmp)
        os.replace(tmp, path)


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def find_resume_checkpoint(output_dir):
    """The newest checkpoint in output_dir that loads: checkpoint-latest.pth first, then
    checkpoint-N.pth by descending N. Leftover temporary files are ignored."""
    candidates = [os.path.join(output_dir, "checkpoint-latest.pth")]
    numbered = glob.glob(os.path.join(output_dir, "checkpoint-*.pth"))
    numbered = [p for p in numbered if re.search(r"checkpoint-(\d+)\.pth$", p)]
    candidates += sorted(numbered, key=lambda p: -int(re.search(r"(\d+)\.pth$", p).group(1)))
    newest = None
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            state = load_checkpoint(path)
        except Exception as err:  # unreadable: say so and fall back to an older one
            log.warning("ignoring unreadable checkpoint %s: %s", path, err)
            continue
        if newest is None or state["step"] > newest[1]["step"]:
            newest = (path, state)
    return newest


# ---------------------------------------------------------------- logging
def setup_logging(dist_info, output_dir=None):
    """Rank 0 logs INFO (to the console and output_dir/train.log); other ranks only errors."""
    level = logging.INFO if dist_info.is_main else logging.ERROR
    handlers = [logging.StreamHandler(sys.stdout)]
    if output_dir and dist_info.is_main:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log")))
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def git_sha():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_header(args, dist_info):
    import timm
    device = (torch.cuda.get_device_name(dist_info.device) if dist_info.device.type == "cuda"
              else f"cpu ({os.cpu_count()} cores)")
    return (f"git {git_sha()} | torch {torch.__version__} | timm {timm.__version__} | "
            f"{device} x {dist_info.world_size} | python {sys.version.split()[0]}")


class MetricLogger:
    """Console lines with ETA, TensorBoard scalars and JSON lines (rank 0 only)."""

    def __init__(self, output_dir, log_dir, enabled):
        self.enabled, self.output_dir, self.writer = enabled, output_dir, None
        if enabled and log_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, step, values, prefix="train"):
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def epoch(self, record):
        if self.enabled:
            with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer:
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StopFlag:
    """SIGTERM / SIGUSR1 (SLURM pre-emption, time limit, scancel) set a flag that the training
    loop checks after each step, so it can save and exit cleanly instead of dying mid-step."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __bool__(self):
        return self.signal is not None


def stop_requested(flag, dist_info):
    """True on every rank if any rank was signalled (all must save and stop together)."""
    return all_reduce_mean(float(bool(flag)), dist_info) > 0
