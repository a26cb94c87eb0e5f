"""Real inputs made on the spot: H.264 videos written with PyAV, RGBA object PNGs, images."""
import argparse
import os

import cv2
import numpy as np


def moving_square_frames(num_frames, width, height, seed=0, direction=(1, 0), speed=4, size=24):
    """uint8 [T, H, W, 3]: a textured background with a bright square moving in `direction`."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (9, 9), 0)
    frames = np.repeat(background[None], num_frames, axis=0)
    x, y = width // 2 - size // 2, height // 2 - size // 2
    for t in range(num_frames):
        cx = int(x + direction[0] * speed * (t - num_frames / 2)) % (width - size)
        cy = int(y + direction[1] * speed * (t - num_frames / 2)) % (height - size)
        frames[t, cy:cy + size, cx:cx + size] = (230, 200, 40)
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


def write_object_png(path, width=60, height=40, color=(200, 30, 30), alpha=True):
    """An RGBA PNG: an ellipse on a transparent canvas with padding around it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas = np.zeros((height + 20, width + 20, 4), np.uint8)
    cv2.ellipse(canvas, (width // 2 + 10, height // 2 + 10), (width // 2, height // 2), 0, 0, 360,
                (*color[::-1], 255), -1)
    cv2.imwrite(path, canvas if alpha else canvas[..., :3])
    return path


def pretrain_args(**overrides):
    """Parsed pretraining data arguments with small, fast defaults."""
    import datasets
    import masking_generator
    import motion_infusion
    parser = argparse.ArgumentParser()
    for module in (datasets, motion_infusion, masking_generator):
        module.add_args(parser)
    args = parser.parse_args([])
    defaults = dict(num_frames=8, input_size=64, patch_size=16, tubelet_size=2,
                    sampling_rate=2, background="noise", num_synthetic_clips=8)
    for key, value in {**defaults, **overrides}.items():
        setattr(args, key, value)
    return args
