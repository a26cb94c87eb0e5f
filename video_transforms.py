"""Spatial transforms of uint8 clips [T, H, W, 3]: one draw per clip, applied to every frame."""
import contextlib
import random

import cv2
import numpy as np
import torch
from PIL import Image

MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


def resize(frames, width, height, out=None):
    """Bilinear resize of every frame, written into `out` (uint8 [T, height, width, 3]) when
    given: the clip's one copy between the decoder's frames and the batch."""
    out = np.empty((len(frames), height, width, 3), np.uint8) if out is None else out
    for frame, target in zip(frames, out):
        cv2.resize(frame, (width, height), dst=target, interpolation=cv2.INTER_LINEAR)
    return out


def multi_scale_box(height, width, size, rng, scales=MULTI_SCALES, max_distort=1):
    """VideoMAE/TSN GroupMultiScaleCrop's draw: crop sides from `scales` x short side (aspect
    distorted by at most `max_distort` scale steps) at one of 13 fixed positions -> (x0, y0,
    crop width, crop height), resized to size² by crop_resize."""
    base = min(height, width)
    sides = [size if abs(int(base * s) - size) < 3 else int(base * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides)
             if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    step_x, step_y = (width - crop_w) / 4, (height - crop_h) / 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
            (1, 1), (3, 1), (1, 3), (3, 3)]
    gx, gy = grid[rng.integers(len(grid))]
    return int(gx * step_x), int(gy * step_y), crop_w, crop_h


def crop_resize(frames, box, size, out=None):
    x0, y0, w, h = box
    return resize(frames[:, y0:y0 + h, x0:x0 + w], size, size, out)


def random_resized_crop(frames, size, rng, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
    """Same crop for every frame: area fraction in `scale`, log-uniform aspect in `ratio`."""
    height, width = frames.shape[1:3]
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = rng.integers(width - w + 1), rng.integers(height - h + 1)
            return resize(frames[:, y0:y0 + h, x0:x0 + w], size, size)
    side = min(height, width)  # fall back to a centre square
    y0, x0 = (height - side) // 2, (width - side) // 2
    return resize(frames[:, y0:y0 + side, x0:x0 + side], size, size)


def resize_short_side(frames, short_side):
    height, width = frames.shape[1:3]
    if min(height, width) == short_side:
        return frames
    s = short_side / min(height, width)
    return resize(frames, max(int(round(width * s)), short_side),
                  max(int(round(height * s)), short_side))


def view_crop(frames, size, view, num_views):
    """Square crop number `view` of `num_views` evenly spaced along the long side."""
    height, width = frames.shape[1:3]
    slack_y, slack_x = height - size, width - size
    where = 0.5 if num_views == 1 else view / (num_views - 1)
    y0 = int(round(slack_y * where)) if slack_y > slack_x else slack_y // 2
    x0 = int(round(slack_x * where)) if slack_x >= slack_y else slack_x // 2
    return frames[:, y0:y0 + size, x0:x0 + size]


def to_tensor(frames):
    """uint8 [T, H, W, 3] -> uint8 tensor [3, T, H, W] (a view, no copy)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


def same_ops_per_frame(transform, frames, seed):
    """Apply a random PIL transform (timm RandAugment) with the same draws to every frame, so
    a clip is augmented consistently over time."""
    out = []
    for frame in frames:
        random.seed(seed)
        np.random.seed(seed)
        out.append(np.asarray(transform(Image.fromarray(frame))))
    return np.stack(out)


@contextlib.contextmanager
def seeded_rng(seed):
    """Python's and torch's global draws inside are a function of `seed` (timm's RandomErasing
    takes no generator), wherever the sample is made; torch's state outside is kept."""
    random.seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
