"""A small motion-classification video set, written as real H.264 files with VideoMAE lists.

    python tools/synthetic_videos.py OUTPUT_DIR [--videos_per_class 24] [--size 112]

Class k = the direction a textured square moves in (right, left, down, up, ...) over a
random still background; nothing but the motion tells the classes apart. Writes
OUTPUT_DIR/videos/<class>/<i>.mp4 and OUTPUT_DIR/{train,val,test}.csv ('PATH LABEL').
The quick-start uses it as stage-2 video and for the linear probe; the tests use its helpers.
"""
import argparse
import os

import cv2
import numpy as np

DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]


def moving_square_frames(num_frames, width, height, seed=0, direction=(1, 0), speed=4, size=24):
    """uint8 [T, H, W, 3]: a blurred random background with a striped square moving along
    `direction` (wrapping around the frame)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (9, 9), 0)
    frames = np.repeat(background[None], num_frames, axis=0)
    color = rng.integers(150, 256, size=3)
    stripes = (np.arange(size) // 4 % 2)[None, :, None] * 0.4 + 0.6
    square = (color * stripes * np.ones((size, 1, 1))).astype(np.uint8)
    x0, y0 = rng.integers(0, width - size), rng.integers(0, height - size)
    for t in range(num_frames):
        x = int(x0 + direction[0] * speed * t) % (width - size)
        y = int(y0 + direction[1] * speed * t) % (height - size)
        frames[t, y:y + size, x:x + size] = square
    return frames


def write_video(path, frames, fps=25, codec="libx264"):
    """Encode uint8 RGB frames [T, H, W, 3] into a real video file (H.264 by default)."""
    import av
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_dataset(output_dir, num_classes=4, videos_per_class=24, size=112, num_frames=32,
                 val_fraction=0.25, seed=0):
    """Write the videos and lists; returns {split: [(path, label)]}."""
    if not 2 <= num_classes <= len(DIRECTIONS):
        raise ValueError(f"num_classes must be in [2, {len(DIRECTIONS)}]")
    splits = {"train": [], "val": []}
    n_val = int(round(val_fraction * videos_per_class))
    for label in range(num_classes):
        for i in range(videos_per_class):
            path = os.path.join(output_dir, "videos", f"class{label}", f"{i}.mp4")
            if not os.path.isfile(path):
                frames = moving_square_frames(num_frames, size, size,
                                              seed=seed * 100003 + label * 1009 + i,
                                              direction=DIRECTIONS[label], speed=3)
                write_video(path, frames)
            splits["val" if i < n_val else "train"].append((os.path.abspath(path), label))
    splits["test"] = splits["val"]
    for split, entries in splits.items():
        with open(os.path.join(output_dir, f"{split}.csv"), "w") as f:
            f.writelines(f"{p} {label}\n" for p, label in entries)
    return splits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--videos_per_class", type=int, default=24)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--num_frames", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    splits = make_dataset(args.output_dir, args.num_classes, args.videos_per_class, args.size,
                          args.num_frames, seed=args.seed)
    print(f"{args.num_classes} motion classes: {len(splits['train'])} train / "
          f"{len(splits['val'])} val videos, lists in {args.output_dir}")


if __name__ == "__main__":
    main()
