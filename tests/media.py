"""Real inputs made on the spot: H.264 videos (tools/synthetic_videos.py), RGBA object PNGs."""
import os

import cv2
import numpy as np

from tools.synthetic_videos import moving_square_frames, write_video

__all__ = ["moving_square_frames", "write_video", "write_object_png", "pretrain_args",
           "indexed_frames", "frame_numbers", "sideways_frames"]


def write_object_png(path, width=60, height=40, color=(200, 30, 30), alpha=True):
    """An RGBA PNG: an ellipse on a transparent canvas with padding around it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas = np.zeros((height + 20, width + 20, 4), np.uint8)
    cv2.ellipse(canvas, (width // 2 + 10, height // 2 + 10), (width // 2, height // 2), 0, 0, 360,
                (*color[::-1], 255), -1)
    cv2.imwrite(path, canvas if alpha else canvas[..., :3])
    return path


def pretrain_args(stage=1, **overrides):
    """Pretraining data settings (datasets.data_settings) with small, fast defaults."""
    import datasets
    return datasets.data_settings(stage, **{**dict(
        num_frames=8, input_size=64, patch_size=16, tubelet_size=2, sampling_rate=2,
        background="noise", num_synthetic_clips=8), **overrides})


BITS = 8


def indexed_frames(num_frames, width=96, height=64):
    """uint8 [T, H, W, 3] whose frame i shows i in binary, one column block per bit (white =
    1): it survives lossy H.264, so a decoded frame says which source frame it is."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    block = width // BITS
    for i in range(num_frames):
        for bit in range(BITS):
            if i >> bit & 1:
                frames[i, :, bit * block:(bit + 1) * block] = 255
    return frames


def sideways_frames():
    """uint8 [8, 128, 192, 3] with the top left quarter red: which way up a decoded frame is
    shows where the red is."""
    frames = np.zeros((8, 128, 192, 3), np.uint8)
    frames[:, :64, :96] = (220, 30, 40)
    return frames


def frame_numbers(frames):
    """The index each decoded frame of indexed_frames() shows."""
    block = frames.shape[2] // BITS
    bits = frames[:, :, :block * BITS].reshape(len(frames), -1, BITS, block, 3).mean(
        axis=(1, 3, 4)) > 127
    return (bits * (1 << np.arange(BITS))).sum(axis=1)
