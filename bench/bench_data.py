"""Data-path throughput per CPU core, on generated videos or on your own list.

    python bench/bench_data.py [--clips 60] [--backend decord] [--repeats 1,2,4]
    python bench/bench_data.py --list LIST [--objects DIR] [--target_clips_per_s 1700]

Times, on one thread, `--clips` samples of each pipeline, clip by clip in turn so that drift in
machine load hits all alike: decode only (16 frames, stride 4); the stage-2 sample (decode,
multi-scale crop to 224, tube mask; uint8 out, normalised later on the device); the stage-1
sample (the same plus motion infusion of 2 objects and trajectory masking). Stage 1 and 2 run
with each --repeats R (--repeated_sampling: R clips cut from one decode). Prints decoded
videos/s, clips/s and ms per clip per core, and with --target_clips_per_s the cores needed.

Without --list: `--videos` generated 10-second 340x256 H.264 videos (30 fps). With --list: a
seeded sample of `--videos` entries of LIST (paths as the loader reads them). Objects: the
procedural bank, filled first as a worker's is after its first ~1000 objects, or --objects.
"""
import argparse
import functools
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import datasets  # noqa: E402
import lists  # noqa: E402
import video_io  # noqa: E402
from tools.synthetic_videos import moving_square_frames, write_video  # noqa: E402


def timed_interleaved(pipelines, n):
    """clips/s of each pipeline; clip i runs through all of them back to back, so drift in
    machine load hits every pipeline alike. Each gets the same clip and the same frames."""
    totals = dict.fromkeys(pipelines, 0.0)
    for i in range(-1, n):  # i = -1 warms up decoders and caches
        for name, fn in pipelines.items():
            start = time.perf_counter()
            fn(max(i, 0))
            if i >= 0:
                totals[name] += time.perf_counter() - start
    return {name: n / total for name, total in totals.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60, help="samples timed per pipeline")
    parser.add_argument("--videos", type=int, default=4, help="videos generated or sampled")
    parser.add_argument("--backend", default="decord", choices=tuple(video_io.DECODERS))
    parser.add_argument("--repeats", default="1,2,4", help="--repeated_sampling values")
    parser.add_argument("--list", default=None, help="your video list (else generated videos)")
    parser.add_argument("--data_root", default="", help="as in training")
    parser.add_argument("--objects", default=None, help="object PNG folder (--objects_path)")
    parser.add_argument("--target_clips_per_s", type=float, default=None,
                        help="print the CPU cores each pipeline needs to feed this rate")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    repeats = [int(r) for r in opts.repeats.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        if opts.list:
            entries = lists.read_list(lists.pretraining_list(opts.list), opts.data_root,
                                      require_label=False)
            chosen = np.random.default_rng(0).permutation(len(entries))[:opts.videos]
            paths = [entries[i][0] for i in sorted(chosen)]
            source = f"{len(paths)} videos sampled from {opts.list}"
        else:
            paths = [write_video(os.path.join(tmp, f"v{i}.mp4"),
                                 moving_square_frames(300, 340, 256, seed=i), fps=30)
                     for i in range(opts.videos)]
            source = f"{len(paths)} generated 10 s 340x256 H.264 videos"
        listing = os.path.join(tmp, "train.csv")
        with open(listing, "w") as f:
            f.writelines(f"{p} 0\n" for p in paths)

        common = dict(data_path=listing, video_backend=opts.backend, num_frames=16,
                      sampling_rate=4, input_size=224, objects_path=opts.objects)
        built = {(stage, r): datasets.build_pretraining_dataset(
            datasets.data_settings(stage, repeated_sampling=r, **common))
            for stage in (2, 1) for r in repeats}
        for (stage, _), dataset in built.items():
            bank = dataset.infuser.object_bank
            if stage == 1 and hasattr(bank, "draw"):  # procedural: fill as in steady state
                for i in range(len(bank)):
                    bank.cache[i] = bank.draw(np.random.default_rng(i))

        def sample(dataset, i):
            # clip i: video i mod V in "epoch" i // V, so frame windows differ from clip to clip
            dataset.set_epoch(i // len(paths))
            return dataset[i % len(paths)]

        first = next(iter(built.values()))

        def decode_only(i):
            first.set_epoch(i // len(paths))
            rng = first.rng(i % len(paths))  # the stage datasets draw the window first
            video_io.read_clip(paths[i % len(paths)], opts.backend,
                               lambda n: video_io.dense_indices(n, 16, 4, rng))

        pipelines = {("decode only", 1): decode_only}
        for (stage, r), dataset in built.items():
            pipelines[(f"stage {stage}" + (" (+ infusion, trajectory mask)" if stage == 1 else
                                           " (crop, tube mask)"), r)] = functools.partial(
                sample, dataset)
        rates = timed_interleaved(pipelines, opts.clips)
    print(f"backend {opts.backend}, {opts.clips} samples of 16x224x224 from {source}, 1 thread")
    need = f"{'cores for ' + format(opts.target_clips_per_s, 'g') + '/s':>18s}" \
        if opts.target_clips_per_s else ""
    print(f"{'pipeline':38s} {'R':>2s} {'videos/s':>9s} {'clips/s':>8s} {'ms/clip':>8s}{need}")
    for (name, r), rate in rates.items():
        cores = f"{opts.target_clips_per_s / (rate * r):18.1f}" if need else ""
        print(f"{name:38s} {r:2d} {rate:9.1f} {rate * r:8.1f} {1000 / (rate * r):8.1f}{cores}")


if __name__ == "__main__":
    main()
