"""What both entry points share besides processes (distributed.py) and checkpoints
(checkpoint.py): run flags, input normalisation, the step-indexed LR schedule and logging."""
import argparse
import functools
import json
import logging
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

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
    g.add_argument("--update_freq", type=int, default=1,
                   help="gradient accumulation: batches per optimiser update (the paper's batch "
                        "on fewer GPUs; the LR and the schedule follow the effective batch)")
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
    g.add_argument("--save_ckpt_freq", type=int, default=20,
                   help="keep checkpoint-N.pth every this many epochs (and the last)")
    g.add_argument("--keep_last", type=int, default=0,
                   help="keep only the newest N checkpoint-N.pth files (0: all)")
    g.add_argument("--auto_resume", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--resume", default=None, help="checkpoint to resume from")
    g.add_argument("--new_data_list", action="store_true",
                   help="resume on a list whose content changed (e.g. LIST.clean after a data "
                        "abort): from the next epoch boundary, steps per epoch of the new list")
    g.add_argument("--print_freq", type=int, default=20)
    g.add_argument("--vis_freq", type=int, default=None,
                   help="epochs between pictures in TensorBoard (default: about 4 per run and "
                        "the last epoch; 0: none)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by torch.distributed.launch; torchrun uses LOCAL_RANK instead")
    g.add_argument("--enable_deepspeed", action="store_true",
                   help="DeepSpeed engine (ZeRO stage 0) instead of DDP")
    g = parser.add_argument_group("what may stall a run (README: Stopping and resuming)")
    g.add_argument("--data_warn_s", type=float, default=60,
                   help="warn every this many seconds without a batch, naming the files read")
    g.add_argument("--data_timeout_s", type=float, default=600,
                   help="without a batch this long, save the last update, list the file being "
                        "read in bad_files.tsv and exit 5 (requeued; the resume skips it)")
    g.add_argument("--dist_timeout_s", type=float, default=1200,
                   help="a collective waiting this long for a peer ends the run: save, one "
                        "line, exit 5; keep it above --data_timeout_s, so that the rank whose "
                        "read hangs names its file first")
    return parser


def parse_with_config(parser, argv=None):
    """timm-style: --config run.yaml supplies defaults, the command line wins. Each YAML value
    goes through the flag's own type, choices and on/off form, as if typed before the command
    line's flags; a value that would not parse there is one line naming its key."""
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return parser.parse_args(argv)
    import yaml
    fail = functools.partial(_config_error, parser, known.config)
    try:
        with open(known.config) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        fail(str(err).splitlines()[0])
    if not isinstance(values, dict):  # (fail exits)
        fail("is not 'flag: value' lines")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    if unknown := sorted(set(values) - set(actions)):  # nothing would read them
        fail(f"sets {', '.join(unknown)}: not flags of {parser.prog}")
    words = []
    for key, value in values.items():
        words += (mine := _config_words(actions[key], value, functools.partial(fail, key=key)))
        parser.exit_on_error = False  # the key's own error, not argparse's page
        try:
            parser.parse_known_args(mine)
        except argparse.ArgumentError as err:
            fail(f"{value!r}: {err.message}", key=key)
        finally:
            parser.exit_on_error = True
    return parser.parse_args(words + list(sys.argv[1:] if argv is None else argv))


def _config_words(action, value, fail):
    """One YAML value as the command-line words that set it."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            fail(f"{value!r} is not true or false (unquoted)")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else "--no-" + flag[2:]]
        return [flag] if value == isinstance(action, argparse._StoreTrueAction) else []
    if value is None:  # the flag's default
        return []
    if action.nargs in (None, "?"):
        if isinstance(value, (list, dict)):
            fail(f"{value!r} is a list; {flag} takes one value")
        return [flag, str(value)]
    if not isinstance(value, list):
        fail(f"{value!r} is one value; {flag} takes a list")
    return [flag, *map(str, value)]


def _config_error(parser, path, what, key=None):  # one line, exit 2
    parser.exit(2, f"error: --config {path}: {key + ': ' if key else ''}{what}\n")


def check_run_args(args):
    for flag, path in (("output_dir", args.output_dir), ("log_dir", args.log_dir)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"--{flag} {path} is a file, not a folder")
    if args.resume and not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume} does not exist")
    for name in ("batch_size", "epochs", "print_freq", "save_ckpt_freq", "update_freq"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise ValueError(f"--warmup_epochs must be in [0, --epochs {args.epochs}), got "
                         f"{args.warmup_epochs}: the run would never leave its warm-up")
    for name in ("data_warn_s", "data_timeout_s", "dist_timeout_s"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be > 0 (seconds)")
    if args.keep_last < 0:
        raise ValueError("--keep_last must be >= 0 (0 keeps every numbered checkpoint)")
    if args.precision in ("bf16", "fp16") and args.device == "cpu":
        raise ValueError(f"--precision {args.precision} needs --device cuda")


class Settings(SimpleNamespace):
    """A run's flags together with what follows from them, made once (the entry point's
    `settle`) and read-only after: builders read it, and a value derived anywhere else would be
    a second source of truth. Stored in checkpoints as a plain dict (vars)."""

    def __setattr__(self, name, *value):
        raise AttributeError(f"the run's settings are read-only: {name} is derived once, "
                             "where they are made (settle, run_settings)")

    __delattr__ = __setattr__


def settled(args, **values):
    """Settings from parsed flags (or Settings) and the values derived from them."""
    return Settings(**{**vars(args), **values})


def run_settings(args, world_size, **derived):
    """args -> Settings, with what every run derives: the effective batch (batch x processes x
    --update_freq), the LRs scaled per 256 clips of it, the concrete precision, the TensorBoard
    folder; `derived` adds (or fills in) an entry point's own."""
    total = args.batch_size * world_size * args.update_freq
    scale = total / 256
    precision = args.precision
    if precision == "auto":
        cuda = args.device == "cuda" and torch.cuda.is_available()
        precision = "fp32" if not cuda else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return settled(args, total_batch_size=total, scaled_lr=args.lr * scale,
                   scaled_min_lr=args.min_lr * scale, scaled_warmup_lr=args.warmup_lr * scale,
                   precision=precision, log_dir=args.log_dir or os.path.join(args.output_dir,
                                                                             "tb"), **derived)


# ---------------------------------------------------------------- schedule
def cosine_lr(step, base_lr, min_lr, warmup_steps, total_steps, warmup_lr=0.0):
    """Linear warmup from warmup_lr to base_lr, then cosine to min_lr at total_steps."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- logging
def setup_logging(dist_info, output_dir=None):
    """Rank 0 logs INFO to the console and DEBUG (tracebacks of the errors that the console
    shows as one line) to output_dir/train.log; other ranks log only errors."""
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if dist_info.is_main else logging.ERROR)
    handlers = [console]
    if output_dir and dist_info.is_main:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log")))
    logging.basicConfig(level=logging.INFO if dist_info.is_main else logging.ERROR,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", handlers=handlers,
                        force=True)
    log.setLevel(logging.DEBUG if dist_info.is_main else logging.ERROR)


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


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
