"""Write VideoMAE annotation lists from a folder laid out <root>/<class>/<video>.

    python tools/make_lists.py VIDEO_ROOT OUTPUT_DIR [--val_fraction 0.1] [--test_fraction 0]

Class names are sorted and numbered from 0 (written to classes.txt). Each class's videos are
split into train.csv / val.csv (and test.csv; without a test split, test.csv repeats val.csv so
fine-tuning finds all three) with a fixed seed. Every video is opened once (PyAV, then decord,
as in training; --video_backend decord for decord first); unreadable files are left out and
listed in unreadable.txt.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import exit_usage  # noqa: E402
from video_io import DECODERS, VideoDecodeError, read_clip  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder with one sub-folder of videos per class")
    parser.add_argument("output_dir")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video_backend", default="pyav", choices=tuple(DECODERS))
    parser.add_argument("--no_check", action="store_true", help="skip opening each video")
    return parser.parse_args(argv)


def readable(path, backend):
    try:
        read_clip(path, backend, lambda n: [0])
        return None
    except VideoDecodeError as err:
        return err.reason


def main(argv=None):
    args = get_args(argv)
    root = os.path.abspath(args.root)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        exit_usage(f"no class folders under {root}")
    rng = np.random.default_rng(args.seed)
    splits = {"train": [], "val": [], "test": []}
    unreadable = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        videos = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                        if f.lower().endswith(VIDEO_SUFFIXES))
        good = []
        for path in videos:
            reason = None if args.no_check else readable(path, args.video_backend)
            if reason:
                unreadable.append(f"{path} {reason}")
            else:
                good.append(path)
        order = rng.permutation(len(good))
        n_val = int(round(args.val_fraction * len(good)))
        n_test = int(round(args.test_fraction * len(good)))
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            splits[split].append(f"{good[i]} {label}\n")
    if not splits["test"]:
        splits["test"] = splits["val"]
    os.makedirs(args.output_dir, exist_ok=True)
    for split, lines in splits.items():
        with open(os.path.join(args.output_dir, f"{split}.csv"), "w") as f:
            f.writelines(sorted(lines))
    with open(os.path.join(args.output_dir, "classes.txt"), "w") as f:
        f.writelines(f"{label} {name}\n" for label, name in enumerate(classes))
    with open(os.path.join(args.output_dir, "unreadable.txt"), "w") as f:
        f.writelines(line + "\n" for line in unreadable)
    print(f"{len(classes)} classes: {len(splits['train'])} train, {len(splits['val'])} val, "
          f"{len(splits['test'])} test videos -> {args.output_dir}")
    if unreadable:
        print(f"{len(unreadable)} unreadable videos left out, listed in "
              f"{os.path.join(args.output_dir, 'unreadable.txt')}:")
        for line in unreadable[:5]:
            print("  " + line)
    return splits, unreadable


if __name__ == "__main__":
    main()
