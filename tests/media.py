"""Real inputs made on the spot: H.264 videos (tools/synthetic_videos.py), RGBA object PNGs."""
import os

import cv2
import numpy as np

from tools.synthetic_videos import moving_square_frames, write_video

__all__ = ["moving_square_frames", "write_video", "write_object_png", "pretrain_args"]


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
