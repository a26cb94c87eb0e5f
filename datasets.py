"""Video datasets for SMILE pretraining and fine-tuning (their batches: batches.py).

Pretraining: decode -> multi-scale crop -> (background) -> motion infusion -> mask(s), the clip
kept uint8 to the training device (a quarter of the bytes). Fine-tuning: decode -> crop/flip
(train) or resize + crop views (eval) -> normalised float clip [3, T, H, W].
"""
import argparse
import contextlib
import dataclasses
import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

import masking_generator
import motion_infusion
import object_banks
import tasks
from bad_files import NOTE
from errors import BadInputError, DataAbort
from lists import (DATASET_CLASSES, TASKS, class_count, frame_step, labelled_list,  # noqa: F401
                   pretraining_list, read_list)  # (re-exported for the entry points and tests)
from rendering import paste_objects, plan_clip, render_clip, shared_uint8
from utils import IMAGENET_MEAN, normalize_video, settled
from video_io import (DECODERS, PendingDecode, VideoDecodeError, check_backend, dense_indices,
                      in_segment, list_images, probe, read_clip, read_image, segment_indices)
from video_transforms import (random_resized_crop, resize_short_side, same_ops_per_frame,
                              seeded_rng, to_tensor, view_crop)

log = logging.getLogger("smile")


def add_args(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", default=None,
                       help="pretraining: the train list file; fine-tuning: the folder holding "
                            "train.csv / val.csv / test.csv ('PATH LABEL' lines)")
    group.add_argument("--data_root", default="",
                       help="folder that relative paths in the lists start from (default: the "
                            "list's own folder)")
    group.add_argument("--num_frames", type=int, default=16)
    group.add_argument("--sampling_rate", type=int, default=4,
                       help="frame stride of dense sampling (VideoMAE: 4 K400, 2 SSv2)")
    group.add_argument("--input_size", type=int, default=224)
    group.add_argument("--patch_size", type=int, default=16, help="spatial token side (pixels)")
    group.add_argument("--tubelet_size", type=int, default=2, help="frames per token")
    group.add_argument("--video_backend", default="pyav", choices=tuple(DECODERS),
                       help="pyav seeks and skips the frames it does not keep (README: How "
                            "fast); decord; torchcodec needs `pip install torchcodec` and "
                            "FFmpeg's libraries")
    group.add_argument("--max_bad_fraction", type=float, default=0.05,
                       help="stop when more than this fraction of samples cannot be read")
    group.add_argument("--max_retries", type=int, default=10,
                       help="unreadable samples in a row before giving up")
    group.add_argument("--seed", type=int, default=0)
    return parser


def add_pretraining_args(parser):
    group = parser.add_argument_group("pretraining data")
    group.add_argument("--background", default="video", choices=motion_infusion.BACKGROUNDS,
                       help="what objects move over (paper Table 7): the video, one of its "
                            "frames, a still image from --background_path, black or noise")
    group.add_argument("--background_path", default=None,
                       help="folder of still images for --background image")
    group.add_argument("--num_synthetic_clips", type=int, default=10000,
                       help="epoch length for --background black/noise (no dataset needed)")
    group.add_argument("--repeated_sampling", type=int, default=1,
                       help="clips cut from each decoded video, each with its own crop, "
                            "infusion and mask, in the same batch (MAE-ST's repeat_aug); "
                            "--batch_size and an epoch still count clips")
    group.add_argument("--augment_on", default="workers", choices=("workers", "device"),
                       help="where the pixel work (crop and resize, the objects' warps and "
                            "compositing) happens: the loader's workers, or batched on the "
                            "training device (the workers then decode and draw only)")
    group.add_argument("--decode_on", default="workers", choices=("workers", "device"),
                       help="with --augment_on device: `device` leaves the workers the file's "
                            "header only; the training process decodes each batch a step "
                            "ahead, on the GPU with --video_backend torchcodec (NVDEC)")
    group.add_argument("--decode_threads", type=int, default=4,
                       help="--decode_on device: files the training process decodes at once")
    return parser


def add_finetune_args(parser):
    """Labels, evaluation views, augmentation (VideoMAE's through timm): fine-tuning's only."""
    group = parser.add_argument_group("labels and evaluation")
    group.add_argument("--data_set", default="Kinetics-400", choices=tuple(DATASET_CLASSES))
    group.add_argument("--nb_classes", type=int, default=None,
                       help="number of classes (default: the dataset's own)")
    group.add_argument("--task", default="classification", choices=TASKS, help="the labels: "
                       "one class, several ('PATH L,L,...': mAP), a count ('PATH COUNT')")
    group.add_argument("--segment_sampling", action=argparse.BooleanOptionalAction,
                       help="one frame from each of --num_frames equal parts (TSN; default: SSV2)")
    group.add_argument("--short_side_size", type=int, default=224,
                       help="evaluation: resize the short side to this before cropping views")
    group.add_argument("--test_num_segment", type=int, default=5)
    group.add_argument("--test_num_crop", type=int, default=3)
    group = parser.add_argument_group("fine-tuning augmentation")
    group.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1",
                       help="timm RandAugment policy, the same ops for every frame ('' = off)")
    group.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    group.add_argument("--remode", default="pixel", help="random erasing mode")
    group.add_argument("--recount", type=int, default=1, help="random erasing count")
    return parser


def implied_by_stage(args, stage):
    """--mask_type and --infusion_prob where they were left unset: stage 1 trajectory masks on
    infused clips, stage 2 tube masks on original ones; --training_mode mixed infuses half of
    its clips."""
    mixed = getattr(args, "training_mode", None) == "mixed"
    implied = dict(mask_type=masking_generator.stage_mask_type(stage),
                   infusion_prob=0.5 if mixed else float(stage == 1))
    return {key: value for key, value in implied.items() if getattr(args, key) is None}


def data_settings(stage=1, **values):
    """The pretraining data flags' defaults with `values` over them, and what `stage` implies:
    what tools, benchmarks and tests build a PretrainingDataset from."""
    parser = argparse.ArgumentParser()
    for add in (add_args, add_pretraining_args, motion_infusion.add_args, object_banks.add_args,
                masking_generator.add_args):
        add(parser)
    args = settled(parser.parse_args([]), **values)
    return settled(args, **implied_by_stage(args, stage))


def check_args(args, pretraining=True):
    """Raise ValueError (one line) for data settings that cannot work."""
    masking_generator.token_grid(args.num_frames, args.input_size, args.patch_size,
                                 args.tubelet_size)
    if args.sampling_rate < 1:
        raise ValueError(f"--sampling_rate must be >= 1 (frames between samples), got "
                         f"{args.sampling_rate}: 0 would repeat one frame, < 0 reverse time")
    check_backend(args.video_backend)
    if not 0 <= args.max_bad_fraction < 1 or args.max_retries < 1:
        raise ValueError("--max_bad_fraction must be in [0, 1) and --max_retries >= 1")
    if not pretraining:
        return
    masking_generator.check_args(args)
    if args.infusion_prob is not None and not 0 <= args.infusion_prob <= 1:
        raise ValueError(f"--infusion_prob must be in [0, 1], got {args.infusion_prob}")
    if args.decode_on == "device" and (args.augment_on != "device"
                                       or args.background != "video"):
        raise ValueError("--decode_on device needs --augment_on device and --background video "
                         "(a still background is decoded where it is drawn)")
    if args.decode_threads < 1:
        raise ValueError(f"--decode_threads must be >= 1, got {args.decode_threads}")
    if args.object_cache_mb < 0:
        raise ValueError(f"--object_cache_mb must be >= 0, got {args.object_cache_mb}")
    for flag in ("repeated_sampling", "num_objects"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.background in ("video", "frame") and not args.data_path:
        raise ValueError(f"--background {args.background} needs --data_path")
    if args.data_path and args.background in ("video", "frame"):
        pretraining_list(args.data_path)
    if args.background == "image" and not (args.background_path
                                           and os.path.isdir(args.background_path)):
        raise ValueError("--background image needs --background_path, a folder of images")
    if args.objects_path and not os.path.isdir(args.objects_path):
        raise ValueError(f"--objects_path {args.objects_path} is not a folder")


# ---------------------------------------------------------------- datasets
class _RetryingDataset(Dataset):
    """Draws a different sample when one cannot be read, at most `max_retries` times in a row.

    A sample comes back with the files it tried, [(index, path, reason)] (reason '' = read
    fine), for the run-wide judgement in bad_files.py; indices in `known_bad` (found unreadable
    earlier in the run) are substituted without being decoded again. Each attempt gets its own
    rng from (seed, epoch, index, attempt), and the substitute its own too, so samples are
    reproducible per seed, independent of how they are spread over workers, and the same
    whether a bad file fails again or is skipped as known."""

    def __init__(self, seed, max_retries):
        self.seed, self.max_retries = seed, max_retries
        self.epoch = 0
        self.known_bad = frozenset()
        self.notes = []  # what the current sample's files told besides failing
        self.file_paths = []  # the file behind each sample index (none for synthetic samples)
        self.board = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def rng(self, index, attempt=0):
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def read(self, index, choose_indices):
        """read_clip of entry `index` (within its segment, if the list gives one), noting a file
        of a single frame (a still image, or a JPEG named .mp4): it trains as a still clip,
        which the run says once (bad_files.NOTE). With --decode_on device: its probe (a
        video_io.PendingDecode), which the training process decodes."""
        path, lengths = self.entries[index][0], []
        choose = in_segment(choose_indices, getattr(self.entries, "segments", None) and
                            self.entries.segments[index], path)
        counted = lambda n: lengths.append(n) or choose(n)  # noqa: E731
        if getattr(self.args, "decode_on", "workers") == "device":
            frames = dataclasses.replace(probe(path, counted), index=index)
        else:
            frames = read_clip(path, self.args.video_backend, counted)
        if lengths[-1:] == [1]:
            self.notes.append((-1, path, NOTE + "a single frame: it trains as a still clip"))
        return frames

    def retrying(self, index, load):
        attempts, skipped = [], 0
        for attempt in range(self.max_retries):
            if index in self.known_bad:
                skipped += 1
            else:
                try:  # the run's watch (guard.ReadBoard) sees what is being read
                    self.notes = []
                    with self.board.reading(index) if self.board else contextlib.nullcontext():
                        out = load(index, self.rng(index, attempt))
                    attempts += [(index, "", "")] + self.notes
                    return out, attempts
                except BadInputError as err:
                    video_failed = err.path in self.file_paths[index:index + 1]
                    attempts.append((index if video_failed else -1, err.path, err.reason))
            substitute = np.random.default_rng([self.seed, self.epoch, index, attempt, 1])
            index = int(substitute.integers(len(self)))
        failed = [f"{path} ({reason})" for _, path, reason in attempts[-3:]]
        raise DataAbort(f"{self.max_retries} samples in a row could not be read ({skipped} of "
                        f"them known bad from earlier); last: {'; '.join(failed) or 'none'}")


class PretrainingDataset(_RetryingDataset):
    """Clips for SMILE pretraining from a video list or a synthetic background.

    A sample is ([R clips], masks [R, N] or [R, K, N], object tokens [R, N], attempts) for
    --repeated_sampling R: each clip is uint8 [T, S, S, 3] (channels last, as decoded), or with
    --augment_on device its rendering.ClipPlan (the training device renders it)."""

    def __init__(self, args, entries, infuser, mask_generator):
        super().__init__(args.seed, args.max_retries)
        self.args, self.entries, self.infuser = args, entries, infuser
        self.mask_generator, self.grid = mask_generator, mask_generator.grid
        self.images = list_images(args.background_path) if args.background == "image" else None
        self.file_paths = [p for p, _ in entries] if entries else self.images or []
        self.list_digest = getattr(entries, "digest", None)  # what a resume compares
        self.step = frame_step(entries, args.sampling_rate) if entries else 1

    def __len__(self):  # synthetic backgrounds have no files behind their samples
        return len(self.file_paths) or self.args.num_synthetic_clips

    def decode(self, index, rng):
        """What a sample's clips are cut from: the video's frame window (uint8 [T, H, W, 3]),
        a still image, or None for a synthetic background."""
        a = self.args
        if a.background == "image":
            return read_image(self.images[index])
        if a.background in ("black", "noise"):
            return None
        return self.read(index, lambda n: dense_indices(n, a.num_frames, self.step, rng))

    def plan(self, decoded, rng):
        """One clip's draws (rendering.ClipPlan) and its mask(s): (plan, masks [N] or [K, N],
        object tokens [N])."""
        a = self.args
        plan = plan_clip(decoded, a.background, self.infuser, a.infusion_prob, a.num_frames,
                         a.input_size, rng)
        object_tokens = np.zeros(int(np.prod(self.grid)), dtype=bool)
        if plan.objects:
            objects = motion_infusion.infused_objects(plan.objects, a.num_frames, a.input_size,
                                                      a.input_size, a.traj_region == "footprint")
            object_tokens = masking_generator.object_tokens(objects, a.traj_region, self.grid,
                                                            a.patch_size, a.tubelet_size)
        masks = [self.mask_generator(rng, object_tokens) for _ in range(a.num_masks_per_clip)]
        return plan, masks[0] if len(masks) == 1 else np.stack(masks), object_tokens

    def stages(self, index, rng):
        """Every intermediate of one sample's first clip (for pictures)."""
        a = self.args
        decoded = self.decode(index, rng)
        if isinstance(decoded, PendingDecode):  # --decode_on device: the pictures decode here
            decoded = read_clip(decoded.path, a.video_backend, lambda n: decoded.indices)
        plan, mask, object_tokens = self.plan(decoded, rng)
        original = render_clip(plan, objects=False)
        objects = motion_infusion.infused_objects(plan.objects, a.num_frames, a.input_size,
                                                  a.input_size) if plan.objects else None
        return dict(original=original, infused=paste_objects(original.copy(), plan.objects),
                    objects=objects, mask=mask, object_tokens=object_tokens)

    def clips(self, index, rng, out=None):
        """--repeated_sampling R clips from one decode (MAE-ST's repeat_aug), each with its own
        crop, objects and mask(s); rendered here (into `out` [R, T, S, S, 3] when given)
        unless the device renders them."""
        decoded = self.decode(index, rng)
        planned = [self.plan(decoded, rng) for _ in range(self.args.repeated_sampling)]
        on_device = self.args.augment_on == "device"
        rows = [None] * len(planned) if out is None else out
        return ([plan if on_device else render_clip(plan, out=row)
                 for (plan, _, _), row in zip(planned, rows)],
                np.stack([mask for _, mask, _ in planned]),
                np.stack([tokens for _, _, tokens in planned]))

    def __getitem__(self, index, out=None):
        (clips, masks, object_tokens), attempts = self.retrying(
            index, lambda i, rng: self.clips(i, rng, out))
        return clips, masks, object_tokens, attempts

    def __getitems__(self, indices):
        """A batch's samples (torch's batched fetch): the workers' clips are rendered straight
        into one array, which batches.collate_pretraining hands on as the batch's video."""
        a = self.args
        if a.augment_on == "device":
            return [self[i] for i in indices]
        r = a.repeated_sampling
        rows, video = shared_uint8((len(indices) * r, a.num_frames, a.input_size, a.input_size,
                                    3), zeros=False)
        samples = Batch(self.__getitem__(i, rows[k * r:(k + 1) * r])
                        for k, i in enumerate(indices))
        samples.video = video
        return samples


class Batch(list):
    """A batch's samples, with the array their clips were rendered into (`video`)."""
    video = None


class VideoClsDataset(_RetryingDataset):
    """Labelled clips for fine-tuning and evaluation.

    train: random clip, random resized crop, flip unless `flip` is False -> (clip, label).
    validation: one centre view; test: `views` = (segments, crops) per video (default
    --test_num_segment x --test_num_crop).
    Training samples also carry the files they tried (see _RetryingDataset). Evaluation never
    substitutes another video for a bad one: it returns (clip, label, video_index, view_index,
    ok) with ok False and a zero clip instead, and notes the file in `eval_failures`.
    """

    def __init__(self, args, entries, mode, segment_sampling, flip, views=None):
        super().__init__(args.seed, args.max_retries)
        self.file_paths, self.eval_failures = [p for p, _ in entries], {}  # path -> reason
        self.list_digest = getattr(entries, "digest", None)  # what a resume compares
        self.args, self.entries, self.mode, self.flip = args, entries, mode, flip
        self.segment_sampling, self.step = segment_sampling, frame_step(entries, args.sampling_rate)
        self.task, self.nb_classes = getattr(args, "task", "classification"), class_count(args)
        self.num_segments, self.num_crops = (1, 1) if mode != "test" else views or (
            args.test_num_segment, args.test_num_crop)
        self.rand_augment = self.random_erasing = None
        if mode == "train" and getattr(args, "aa", None):
            from timm.data.auto_augment import rand_augment_transform
            self.rand_augment = rand_augment_transform(args.aa, dict(
                translate_const=int(args.input_size * 0.45),
                img_mean=tuple(round(255 * m) for m in IMAGENET_MEAN)))
        if mode == "train" and getattr(args, "reprob", 0) > 0:
            from timm.data.random_erasing import RandomErasing
            self.random_erasing = RandomErasing(args.reprob, mode=args.remode,
                                                max_count=args.recount, device="cpu")

    def __len__(self):
        views = 1 if self.mode == "train" else self.num_segments * self.num_crops
        return len(self.entries) * views

    def indices(self, rng=None, view=0, num_views=1):
        a = self.args
        if self.segment_sampling:
            return lambda n: segment_indices(n, a.num_frames, rng, view, num_views)
        return lambda n: dense_indices(n, a.num_frames, self.step, rng, view, num_views)

    def load_train(self, index, rng):
        frames = self.read(index, self.indices(rng))
        # timm's augmentations draw from the global `random`/numpy state: seed it per sample
        seed = int(rng.integers(2**31))
        if self.rand_augment is not None:
            frames = same_ops_per_frame(self.rand_augment, frames, seed)
        frames = random_resized_crop(frames, self.args.input_size, rng)
        if self.flip and rng.uniform() < 0.5:
            frames = frames[:, :, ::-1]
        clip = normalize_video(to_tensor(frames))
        if self.random_erasing is not None:  # per frame, as VideoMAE (frames as a batch)
            with seeded_rng(seed):
                clip = self.random_erasing(clip.transpose(0, 1)).transpose(0, 1)
        return clip, self.target(index)

    def target(self, index):  # entry `index`'s label as its task trains on it
        return tasks.target(self.task, self.entries[index][1], self.nb_classes)

    def __getitem__(self, index):
        if self.mode == "train":
            (clip, label), attempts = self.retrying(index, self.load_train)
            return clip, label, attempts
        views = self.num_segments * self.num_crops
        video_index, view = divmod(index, views)
        segment, crop = divmod(view, self.num_crops)
        label, a, self.notes = self.target(video_index), self.args, []
        try:
            frames = self.read(video_index, self.indices(view=segment, num_views=self.num_segments))
        except VideoDecodeError as err:
            self.eval_failures.setdefault(err.path, err.reason)
            clip = torch.zeros(3, a.num_frames, a.input_size, a.input_size)
            return clip, label, video_index, view, False
        frames = resize_short_side(frames, max(a.short_side_size, a.input_size))
        frames = view_crop(frames, a.input_size, crop, self.num_crops)
        return normalize_video(to_tensor(frames)), label, video_index, view, True


def build_pretraining_dataset(args):
    grid = masking_generator.token_grid(args.num_frames, args.input_size, args.patch_size,
                                        args.tubelet_size)
    entries = read_list(pretraining_list(args.data_path), args.data_root, require_label=False
                        ) if args.background in ("video", "frame") else None
    objects = object_banks.build_object_bank(
        args.objects_path, args.object_list, log.info,
        max_side=motion_infusion.largest_side(args.num_frames, args.input_size),
        cache_mb=args.object_cache_mb)
    infuser = motion_infusion.MotionInfuser(objects, args.num_objects, args.object_fit)
    return PretrainingDataset(args, entries, infuser, masking_generator.build_mask_generator(
        grid, args.mask_type, args.mask_ratio, args.traj_unmask_ratio))


def build_dataset(is_train, test_mode, args):
    """VideoMAE's interface: -> (dataset, nb_classes)."""
    mode = "train" if is_train else ("test" if test_mode else "validation")
    split = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}[mode]
    entries, nb_classes = labelled_list(args, split)
    ssv2 = args.data_set == "SSV2"  # flipping would swap left/right labels
    return VideoClsDataset(args, entries, mode, segment_sampling=segment_sampling(args),
                           flip=not ssv2), nb_classes


def segment_sampling(args):  # --segment_sampling, else as VideoMAE samples: TSN for SSv2 only
    chosen = getattr(args, "segment_sampling", None)
    return args.data_set == "SSV2" if chosen is None else chosen
