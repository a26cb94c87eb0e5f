"""Data-path throughput per CPU core: decode only vs. the stage-2 and stage-1 transforms.

    python bench/bench_data.py [--clips 60] [--backend decord] [--videos 4]

Writes `--videos` generated 10-second 340x256 H.264 videos (30 fps) to a temporary folder and
times, on one thread, `--clips` samples of: decode only (16 frames, stride 4); the stage-2
sample (decode, multi-scale crop to 224, tube mask; uint8 out, normalised later on the device);
the stage-1 sample (the same plus motion infusion of 2 procedural objects and trajectory
masking; the procedural object bank is filled first, as in a worker after its first ~1000
objects). Prints clips/s and each stage's overhead over decode only.
"""
import argparse
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
import masking_generator  # noqa: E402
import motion_infusion  # noqa: E402
import video_io  # noqa: E402
from tools.synthetic_videos import moving_square_frames, write_video  # noqa: E402


def data_args(**overrides):
    parser = argparse.ArgumentParser()
    for module in (datasets, motion_infusion, masking_generator):
        module.add_args(parser)
    datasets.add_pretraining_args(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


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
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--backend", default="decord", choices=("decord", "pyav"))
    opts = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_video(os.path.join(tmp, f"v{i}.mp4"),
                             moving_square_frames(300, 340, 256, seed=i), fps=30)
                 for i in range(opts.videos)]
        listing = os.path.join(tmp, "train.csv")
        with open(listing, "w") as f:
            f.writelines(f"{p} 0\n" for p in paths)

        common = dict(data_path=listing, video_backend=opts.backend, num_frames=16,
                      sampling_rate=4, input_size=224)
        stage2 = datasets.build_pretraining_dataset(
            data_args(mask_type="tube", infusion_prob=0.0, **common))
        stage1 = datasets.build_pretraining_dataset(
            data_args(mask_type="trajectory", infusion_prob=1.0, **common))

        # steady state: a worker's procedural bank is filled after its first ~1000 objects
        bank = stage1.infuser.object_bank
        for i in range(len(bank)):
            bank.cache[i] = bank.draw(np.random.default_rng(i))

        def sample(dataset, i):
            # clip i: video i mod V in "epoch" i // V, so frame windows differ from clip to clip
            dataset.set_epoch(i // len(paths))
            return dataset[i % len(paths)]

        def decode_only(i):
            stage2.set_epoch(i // len(paths))
            rng = stage2.rng(i % len(paths))  # the stage datasets draw the window first
            video_io.read_clip(paths[i % len(paths)], opts.backend,
                               lambda n: video_io.dense_indices(n, 16, 4, rng))

        rates = timed_interleaved({
            "decode only": decode_only,
            "stage 2 (crop, tube mask)": lambda i: sample(stage2, i),
            "stage 1 (+ infusion, trajectory mask)": lambda i: sample(stage1, i)}, opts.clips)
    base = rates["decode only"]
    print(f"backend {opts.backend}, {opts.clips} clips of 16x224x224 from 10 s 340x256 H.264, "
          f"1 thread")
    print(f"{'pipeline':40s} {'clips/s':>8s} {'ms/clip':>8s} {'overhead vs decode':>20s}")
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.1f} {1000 / rate:8.1f} {base / rate - 1:19.1%}")


if __name__ == "__main__":
    main()
