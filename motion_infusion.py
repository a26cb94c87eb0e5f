"""Synthetic object motion pasted into clips (SMILE stage 1, as the authors' code ran it).

`MotionInfuser(bank, num_objects)(frames, rng)` takes uint8 frames [T, H, W, 3] after crop and
resize and returns new frames with `num_objects` RGBA objects moving along smooth random paths,
growing/shrinking and rotating between keyframes, plus an `InfusedObjects` record of where each
object is. Knows pixels only: no patch size, tokens or masks.
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

# Anchor boxes of the released generator, in pixels for a 224 input (scaled with the input).
ANCHOR_SIZES = (32, 48, 56, 64, 96, 128)
ANCHOR_RATIOS = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
SIDE_JITTER = 0.18                      # each side times exp(U(-j, j))
PATH_POINTS, PATH_SIGMA = 48, 8.0       # random points smoothed into a path
PATH_EXTENT = (40, 179)                 # path spans S ~ U{40..179} pixels at 224
INNER_KEYFRAMES_P = (0.5, 0.3, 0.2)     # P(0, 1, 2 inner keyframes)
SCALE_RATE, ROTATION_RATE = 0.025, 6.0  # per frame between keyframes: log-scale, degrees
EASING_P = (0.7, 0.15, 0.15)            # uniform, accelerating, decelerating
REFERENCE_SIZE = 224
PAD = 1  # transparent border around prepared objects (see prepare_object)
BACKGROUNDS = ("video", "frame", "image", "black", "noise")


def add_args(parser):
    group = parser.add_argument_group("motion infusion")
    group.add_argument("--num_objects", type=int, default=2, help="objects pasted per clip")
    group.add_argument("--infusion_prob", type=float, default=None,
                       help="probability that a clip is motion-infused (default: the stage's, "
                            "datasets.implied_by_stage; the run's first lines say it)")
    group.add_argument("--object_fit", default="contain", choices=("contain", "stretch"),
                       help="contain: keep the object's aspect ratio inside its box; stretch: "
                            "distort it to the box (the authors' code)")
    return parser


@dataclass
class InfusedObjects:
    """Where the pasted objects are, per object k and frame t.

    boxes: float32 [K, T, 4] unrotated box (x0, y0, x1, y1) in pixels, may extend past the frame.
    footprint: bool [K, T, H, W], pixels where the object's alpha is visible (rotation-aware),
    or None where nothing asked for it.
    angles: float32 [K, T] degrees; scales: float32 [K, T, 2] (w, h) factors vs. the first frame.
    """
    boxes: np.ndarray
    footprint: np.ndarray
    angles: np.ndarray
    scales: np.ndarray


def sample_box_size(rng, size_scale):
    """Anchor (w, h) with independent per-side jitter."""
    s = ANCHOR_SIZES[rng.integers(len(ANCHOR_SIZES))] * size_scale
    r = ANCHOR_RATIOS[rng.integers(len(ANCHOR_RATIOS))]
    jitter = np.exp(rng.uniform(-SIDE_JITTER, SIDE_JITTER, size=2))
    return s * np.sqrt(r) * jitter[0], s / np.sqrt(r) * jitter[1]


def sample_trajectory(rng, num_frames, height, width, size_scale):
    """Object centre per frame, float [T, 2] (x, y): a smoothed random walk inside the frame."""
    points = rng.uniform(0, 1, size=(PATH_POINTS, 2)) * (width, height)
    path = gaussian_filter1d(points, PATH_SIGMA, axis=0, mode="reflect")
    span = np.ptp(path, axis=0)
    path = (path - path.min(axis=0)) / np.where(span > 0, span, 1)
    extent = rng.integers(PATH_EXTENT[0], PATH_EXTENT[1] + 1) * size_scale
    path = path * extent
    offset = rng.uniform(0, 1, size=2) * np.maximum((width - extent, height - extent), 0)
    path = np.clip(path + offset, 0, (width - 1, height - 1))
    return path[np.round(np.linspace(0, PATH_POINTS - 1, num_frames)).astype(int)]


def choose(rng, probabilities):
    """Index drawn with the given probabilities (cheaper than Generator.choice for 2-3 items)."""
    return int(np.searchsorted(np.cumsum(probabilities), rng.uniform() * sum(probabilities),
                               side="right"))


def keyframes(rng, num_frames):
    """Sorted keyframe indices: first, last and 0-2 evenly spaced, jittered inner ones."""
    if num_frames < 2:
        return np.zeros(1, dtype=int)
    inner = choose(rng, INNER_KEYFRAMES_P)
    gap = (num_frames - 1) / (inner + 1)
    jitter = int(gap / 3)
    mids = np.round(np.linspace(0, num_frames - 1, inner + 2)[1:-1]).astype(int)
    mids = mids + rng.integers(-jitter, jitter + 1, size=inner)
    return np.unique(np.clip(np.concatenate([[0], mids, [num_frames - 1]]), 0, num_frames - 1))


def keyframed_motion(rng, num_frames):
    """Per-frame (w, h) scale factors [T, 2] and rotation in degrees [T]."""
    keys = keyframes(rng, num_frames)
    gaps = np.diff(keys)
    log_scale = np.zeros((len(keys), 2))
    angle = np.zeros(len(keys))
    for i, gap in enumerate(gaps, start=1):
        log_scale[i] = log_scale[i - 1] + rng.uniform(-SCALE_RATE * gap, SCALE_RATE * gap, 2)
        angle[i] = angle[i - 1] + rng.uniform(-ROTATION_RATE * gap, ROTATION_RATE * gap)
    scale_at, angle_at = np.exp(log_scale), angle
    scales = np.repeat(scale_at[:1], num_frames, axis=0)
    angles = np.full(num_frames, angle_at[0])
    for i, gap in enumerate(gaps):
        p = np.arange(gap + 1) / gap
        p = (p, p ** 2, 1 - (1 - p) ** 2)[choose(rng, EASING_P)]  # in EASING_P's order
        span = slice(keys[i], keys[i + 1] + 1)
        scales[span] = scale_at[i] + (scale_at[i + 1] - scale_at[i]) * p[:, None]
        angles[span] = angle_at[i] + (angle_at[i + 1] - angle_at[i]) * p
    return scales, angles


def prepare_object(premultiplied, max_size):
    """Premultiplied uint8 RGBA (an object bank's) -> straight uint8 RGBA ready for per-frame
    warping, with a transparent border of PAD pixels.

    Shrinks once (area filter) to the largest size the clip needs, so the per-frame warp only
    resamples near scale 1 and never aliases. Resizing happens on premultiplied colour, and the
    colour of transparent pixels next to the object is filled from their neighbours: bilinear
    warping then never mixes in the (often black or white) colour hidden under alpha 0.
    """
    premul, height, width = premultiplied, *premultiplied.shape[:2]
    target = (min(int(max_size[0]), width), min(int(max_size[1]), height))
    if target != (width, height):
        premul = cv2.resize(premul, (max(target[0], 1), max(target[1], 1)),
                            interpolation=cv2.INTER_AREA)
    premul = premul.astype(np.float32)
    # a pixel's own colour where it is visible, else its neighbours' (alpha-weighted)
    source = np.where(premul[..., 3:] > 0, premul, cv2.blur(premul, (3, 3)))
    color = source[..., :3] * (255 / np.maximum(source[..., 3:], 1e-3))
    # a transparent ring carrying the edge colour: the warp samples it instead of the black
    # border it would otherwise invent outside the image
    color = cv2.copyMakeBorder(color, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(premul[..., 3], PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0)
    return cv2.convertScaleAbs(cv2.merge([color, alpha]))  # rounded, saturated to uint8


def largest_side(num_frames, size):
    """The longest side (pixels) any object can be pasted at: the largest anchor at the most
    elongated ratio, full side jitter and the most growth keyframes allow over the clip
    (object banks shrink their objects to it once; prepare_object then never enlarges)."""
    longest = max(ANCHOR_SIZES) * size / REFERENCE_SIZE * math.sqrt(
        max(max(ANCHOR_RATIOS), 1 / min(ANCHOR_RATIOS)))
    return math.ceil(longest * math.exp(SIDE_JITTER + SCALE_RATE * (num_frames - 1))) + 2


def placements(object_shape, centers, sizes, angles, height, width):
    """Per frame, the affine map from object pixels to frame pixels and the frame ROI it covers.

    The object (h, w, without its PAD border) is scaled to `sizes` [T, 2] (w, h), rotated by
    `angles` [T] degrees (counter-clockwise on screen, as cv2.getRotationMatrix2D) about its
    centre and centred at `centers` [T, 2]. Returns matrices [T, 2, 3] (pixel indices, cv2's
    convention) and ROIs [T, 4] (x0, y0, x1, y1), empty where the object is outside the frame.
    """
    oh, ow = object_shape[:2]
    rad = np.deg2rad(angles)
    cos, sin = np.cos(rad), np.sin(rad)
    sx, sy = sizes[:, 0] / (ow - 2 * PAD), sizes[:, 1] / (oh - 2 * PAD)
    linear = np.stack([np.stack([cos * sx, sin * sy], -1), np.stack([-sin * sx, cos * sy], -1)], 1)
    shift = centers - linear @ np.array([ow / 2, oh / 2])
    corners = np.einsum("tij,cj->tci", linear, np.array([[0, 0], [ow, 0], [0, oh], [ow, oh]]))
    corners += shift[:, None]
    lo = np.maximum(np.floor(corners.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(corners.max(axis=1)).astype(int) + 1, (width, height))
    # source pixel u has its centre at u + 0.5; cv2 maps pixel indices, so shift by half a pixel
    offset = shift + linear @ np.array([0.5, 0.5]) - 0.5
    return np.concatenate([linear, offset[..., None]], axis=2), np.concatenate([lo, hi], axis=1)


def warp(image, matrix, roi):
    """cv2.warpAffine of `image` through `matrix` (object -> frame pixels), the ROI only."""
    x0, y0, x1, y1 = roi
    return cv2.warpAffine(image, matrix - np.array([[0, 0, x0], [0, 0, y0]]), (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass
class ObjectPlan:
    """One object's motion through a clip, drawn and not yet pasted: its prepared RGBA
    (prepare_object), per frame t the map object -> frame pixels `matrices[t]` [2, 3] and the
    ROI it covers `rois[t]` (x0, y0, x1, y1), and what InfusedObjects records."""
    rgba: np.ndarray
    matrices: np.ndarray
    rois: np.ndarray
    boxes: np.ndarray
    angles: np.ndarray
    scales: np.ndarray


def paste_objects(frames, plans):
    """Alpha-composite each plan's object into uint8 frames [T, H, W, 3], in place and in
    plan order: out = frame * (1 - a) + rgb * a, computed in float and rounded once (no uint8
    truncation: 255 over 255 stays 255)."""
    for plan in plans:
        for t, roi in enumerate(plan.rois.tolist()):
            if roi[0] < roi[2] and roi[1] < roi[3]:
                warped = warp(plan.rgba, plan.matrices[t], roi)
                alpha = warped[..., 3].astype(np.float32) * (1 / 255)
                region = frames[t, roi[1]:roi[3], roi[0]:roi[2]]
                region[...] = cv2.blendLinear(region, cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB),
                                              1 - alpha, alpha)
    return frames


def footprints(plans, num_frames, height, width):
    """bool [K, T, H, W], the pixels where each object's alpha is visible (rotation-aware):
    made only where something reads it (--traj_region footprint, pictures, tests)."""
    out = np.zeros((len(plans), num_frames, height, width), bool)
    for k, plan in enumerate(plans):
        for t, (x0, y0, x1, y1) in enumerate(plan.rois.tolist()):
            if x0 < x1 and y0 < y1:
                out[k, t, y0:y1, x0:x1] = warp(plan.rgba[..., 3], plan.matrices[t],
                                               (x0, y0, x1, y1)) > 0
    return out


def infused_objects(plans, num_frames, height, width, footprint=True):
    """The InfusedObjects record of planned objects (footprint None unless asked for)."""
    return InfusedObjects(
        boxes=np.stack([p.boxes for p in plans]), angles=np.stack([p.angles for p in plans]),
        scales=np.stack([p.scales for p in plans]),
        footprint=footprints(plans, num_frames, height, width) if footprint else None)


class MotionInfuser:
    """Pastes `num_objects` moving objects into a clip; `fit` is 'contain' or 'stretch'.
    `object_bank.sample(rng)` -> a premultiplied uint8 RGBA object (object_banks.py)."""

    def __init__(self, object_bank, num_objects, fit="contain"):
        if num_objects < 1:
            raise ValueError(f"--num_objects must be >= 1, got {num_objects}")
        self.object_bank, self.num_objects, self.fit = object_bank, num_objects, fit

    def plan_object(self, rgba, rng, num_frames, height, width):
        size_scale = min(height, width) / REFERENCE_SIZE
        box_w, box_h = sample_box_size(rng, size_scale)
        if self.fit == "contain":
            fit = min(box_w / rgba.shape[1], box_h / rgba.shape[0])
            box_w, box_h = rgba.shape[1] * fit, rgba.shape[0] * fit
        centers = sample_trajectory(rng, num_frames, height, width, size_scale)
        scales, angles = keyframed_motion(rng, num_frames)
        sizes = scales * (box_w, box_h)
        rgba = prepare_object(rgba, np.ceil(sizes.max(axis=0)) + 1)
        matrices, rois = placements(rgba.shape, centers, sizes, angles, height, width)
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        return ObjectPlan(rgba, matrices, rois, boxes.astype(np.float32),
                          angles.astype(np.float32), scales.astype(np.float32))

    def plan(self, rng, num_frames, height, width):
        """Every draw of one clip's objects, in paste order: the larger object first, so the
        smaller one stays visible on top."""
        plans = [self.plan_object(self.object_bank.sample(rng), rng, num_frames, height, width)
                 for _ in range(self.num_objects)]
        return sorted(plans, key=lambda p: -np.prod(p.boxes[0, 2:] - p.boxes[0, :2]))

    def __call__(self, frames, rng):
        """frames: uint8 [T, H, W, 3] -> (new uint8 [T, H, W, 3], InfusedObjects)."""
        plans = self.plan(rng, *frames.shape[:3])
        out = paste_objects(np.array(frames, dtype=np.uint8, copy=True), plans)
        return out, infused_objects(plans, *frames.shape[:3])


def still_frame(kind, size, rng, frames=None):
    """The still background of paper Table 7 besides natural video (the motion then comes from
    the objects alone), uint8 [H, W, 3]: frame: one random frame of `frames`; image: the still
    image, given as `frames` of one; black: zeros; noise: one uniform-noise image (size²)."""
    if kind in ("frame", "image"):
        return frames[rng.integers(len(frames))]
    if kind == "black":
        return np.zeros((size, size, 3), np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    raise ValueError(f"unknown background {kind!r}; choose from {BACKGROUNDS}")
