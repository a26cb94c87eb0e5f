"""A small motion-classification video set, written as real H.264 files with VideoMAE lists
(and footage-like videos for the benchmarks: footage_frames).

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


def footage_frames(num_frames, width, height, seed=0, grain=5.0):
    """uint8 [T, H, W, 3] that cost a decoder what downloaded footage does: a camera panning
    and zooming over a textured scene (multi-scale luma detail, soft colour, hard-edged
    shapes) with sensor grain, which is what makes real footage expensive to compress. At
    640x360 and 30 fps x264 (medium, crf 23) spends 1.2 Mbit/s on it: what Kinetics downloads
    average (K600's CVDF copy: 648 GB for 427,549 clips of 10 s)."""
    rng = np.random.default_rng(seed)
    scene_w, scene_h = int(width * 1.8), int(height * 1.8)
    scene = np.full((scene_h, scene_w, 3), 110, np.float32)
    for cell, amplitude in ((96, 50), (24, 30), (6, 18), (2, 14)):  # luma detail, coarse to fine
        noise = rng.normal(0, 1, (scene_h // cell + 2, scene_w // cell + 2)).astype(np.float32)
        scene += amplitude * cv2.resize(noise, (scene_w, scene_h), interpolation=cv2.INTER_CUBIC)[
            ..., None]
    tint = rng.normal(0, 1, (scene_h // 48 + 2, scene_w // 48 + 2, 3)).astype(np.float32)
    scene += 25 * cv2.resize(tint, (scene_w, scene_h), interpolation=cv2.INTER_CUBIC)
    for _ in range(30):  # man-made edges
        x, y = (int(v) for v in rng.integers(0, (scene_w, scene_h)))
        corner = (x + int(rng.integers(10, 120)), y + int(rng.integers(10, 120)))
        cv2.rectangle(scene, (x, y), corner, rng.uniform(30, 220, 3).tolist(),
                      -1 if rng.uniform() < 0.5 else 2)
    t = np.linspace(0, 1, num_frames)
    cx = scene_w / 2 + (scene_w - 1.3 * width) / 2 * np.sin(
        2 * np.pi * (rng.uniform(0.3, 0.8) * t + rng.uniform()))
    cy = scene_h / 2 + (scene_h - 1.3 * height) / 2 * np.sin(
        2 * np.pi * (rng.uniform(0.2, 0.6) * t + rng.uniform()))
    zoom = 1 + 0.25 * np.sin(np.pi * rng.uniform(0.5, 1.5) * t)
    grains = rng.normal(0, grain, (8, height, width)).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        camera = np.float32([[zoom[i], 0, width / 2 - zoom[i] * cx[i]],
                             [0, zoom[i], height / 2 - zoom[i] * cy[i]]])
        frame = cv2.warpAffine(scene, camera, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        frame += np.roll(grains[i % 8], int(rng.integers(width)), axis=1)[..., None]
        frames[i] = np.clip(frame, 0, 255)
    return frames


def write_video(path, frames, fps=25, codec="libx264", bit_rate=None, options=None, rotation=0):
    """Encode uint8 RGB frames [T, H, W, 3] into a real video file (H.264 by default);
    `bit_rate` (bits/s) for an average-bit-rate encode, `options` for the encoder's own;
    `rotation` (degrees counter-clockwise) in a display matrix, as a phone stores a portrait
    video: the frames as given, to be shown turned."""
    import av
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        stream.options = dict(options or {})
        if rotation:
            stream.set_display_rotation(rotation)
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
