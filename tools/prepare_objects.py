"""Shrink an object folder once into a bundle every loader worker reads without decoding.

    python tools/prepare_objects.py OBJECTS_PATH OUT_DIR [--object_list LIST]
                                    [--num_frames 16 --input_size 224] [--workers N]

Each RGBA PNG of OBJECTS_PATH (laid out <category>/<instance>.png, as --objects_path) is
checked, cropped to its alpha, premultiplied and scaled down (area filter) to the largest side
motion infusion can paste at --num_frames x --input_size (318 px for 16 x 224), then all are
written into OUT_DIR/objects.npy (one uint8 array) with OUT_DIR/objects.json (each object's
path, offset and size) and OUT_DIR/objects.failed.tsv (the files left out, with why). Train with
--objects_path OUT_DIR: the workers memory-map the bundle, so an object costs a copy from the
page cache (shared by every worker and rank of a node) instead of a PNG decode and a shrink,
and a run starts without checking every file again. A run with a larger --num_frames or
--input_size than the bundle was made for is refused (it would paste upscaled objects).
Exits 0, 1 when some files were left out, 2 for a folder it cannot read.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import exit_usage  # noqa: E402
from motion_infusion import largest_side  # noqa: E402
from object_banks import BUNDLE, FolderObjectBank, premultiplied, read_objects  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objects_path", help="folder of RGBA PNGs, <category>/<instance>.png")
    parser.add_argument("out_dir", help="folder for objects.npy and objects.json")
    parser.add_argument("--object_list", default=None, help="as --object_list in training")
    parser.add_argument("--num_frames", type=int, default=16, help="the largest you train with")
    parser.add_argument("--input_size", type=int, default=224, help="the largest you train with")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding threads")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    max_side = largest_side(args.num_frames, args.input_size)
    start = time.time()
    try:
        paths = FolderObjectBank.listed(args.objects_path, args.object_list)
        objects, failed = read_objects(args.objects_path, paths,
                                       lambda rgba: premultiplied(rgba, max_side), args.workers,
                                       lambda line: print(line, flush=True))
    except (FileNotFoundError, OSError) as err:
        exit_usage(err)
    os.makedirs(args.out_dir, exist_ok=True)
    sizes = [rgba.size for _, rgba in objects]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    partial = os.path.join(args.out_dir, "objects.partial.npy")
    flat = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                     shape=(int(offsets[-1]),))
    for (_, rgba), offset in zip(objects, offsets):
        flat[offset:offset + rgba.size] = rgba.reshape(-1)
    flat.flush()
    del flat
    os.replace(partial, os.path.join(args.out_dir, "objects.npy"))
    index = {"max_side": max_side, "objects": [
        [os.path.relpath(path, args.objects_path), int(offset), *rgba.shape[:2]]
        for (path, rgba), offset in zip(objects, offsets)]}
    with open(os.path.join(args.out_dir, BUNDLE + ".partial"), "w", encoding="utf-8") as f:
        json.dump(index, f)
    os.replace(os.path.join(args.out_dir, BUNDLE + ".partial"),
               os.path.join(args.out_dir, BUNDLE))  # last: a bundle is complete when it exists
    with open(os.path.join(args.out_dir, "objects.failed.tsv"), "w", encoding="utf-8") as f:
        f.write("path\treason\n")
        f.writelines(f"{path}\t{reason}\n" for path, reason in failed)
    print(f"{len(objects)} of {len(paths)} objects in {args.out_dir} ({offsets[-1] / 2**30:.2f} "
          f"GiB, largest side {max_side} px; {time.time() - start:.0f} s); train with "
          f"--objects_path {args.out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
