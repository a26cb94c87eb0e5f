"""Synthetic object motion pasted into clips (SMILE stage 1, as the authors' code ran it).

`MotionInfuser(bank, num_objects)(frames, rng)` takes uint8 frames [T, H, W, 3] after crop and
resize and returns new frames with `num_objects` RGBA objects moving along smooth random paths,
growing/shrinking and rotating between keyframes, plus an `InfusedObjects` record of where each
object is. Knows pixels only: no patch size, tokens or masks.
"""
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from errors import BadInputError

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
    group.add_argument("--objects_path", default=None,
                       help="folder of RGBA objects laid out <category>/<instance>.png (e.g. the "
                            "PIN synthetic objects); without it, procedural textured shapes")
    group.add_argument("--object_list", default=None,
                       help="list of object PNGs relative to --objects_path, one per line "
                            "(annotation_files/object_instances.txt format); default: scan")
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
    footprint: bool [K, T, H, W], pixels where the object's alpha is visible (rotation-aware).
    angles: float32 [K, T] degrees; scales: float32 [K, T, 2] (w, h) factors vs. the first frame.
    """
    boxes: np.ndarray
    footprint: np.ndarray
    angles: np.ndarray
    scales: np.ndarray


class ObjectImageError(BadInputError):
    """An object PNG that cannot be used (unreadable, no alpha, empty alpha)."""


def crop_to_alpha(rgba):
    """Tight crop around alpha > 0, so box sizes refer to the object, not its padding."""
    ys, xs = np.nonzero(rgba[..., 3])
    if len(ys) == 0:
        return None
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


class FolderObjectBank:
    """RGBA PNGs under `root/<category>/<instance>.png` (nested category folders too, any
    case of `.png`), sampled uniformly over instances.

    Every file is checked when the bank is built (threads; a progress line for large banks):
    an unreadable, alpha-less or all-transparent one is named once and left out, instead of
    discarding clips mid-run."""

    def __init__(self, root, list_file=None, log=print, threads=8):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--objects_path {root} is not a folder")
        if list_file:
            with open(list_file, encoding="utf-8") as f:
                paths = [os.path.join(root, line.strip()) for line in f if line.strip()]
        else:
            paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                           if p.lower().endswith(".png") and os.path.dirname(p) != root)
        if not paths:
            raise FileNotFoundError(f"no objects under {root}: expected RGBA PNGs laid out "
                                    "<category>/<instance>.png")
        self.paths, bad = [], []
        with ThreadPoolExecutor(threads) as pool:  # cv2 decodes outside the GIL
            for i, (path, reason) in enumerate(pool.map(self.check, paths), 1):
                (bad.append((path, reason)) if reason else self.paths.append(path))
                if len(paths) >= 5000 and (i % 5000 == 0 or i == len(paths)):
                    log(f"objects: {i}/{len(paths)} checked, {len(bad)} unusable")
        for path, reason in bad:
            log(f"object left out: {path} ({reason})")
        if not self.paths:
            raise FileNotFoundError(f"none of the {len(paths)} images under {root} is a usable "
                                    f"object (e.g. {bad[0][0]}: {bad[0][1]})")

    @classmethod
    def check(cls, path):
        try:
            cls.load(path)
            return path, ""
        except ObjectImageError as err:
            return path, err.reason

    def __len__(self):
        return len(self.paths)

    @staticmethod
    def load(path):
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ObjectImageError(path, "missing or not a readable image")
        if image.ndim != 3 or image.shape[2] != 4:
            raise ObjectImageError(path, "has no alpha channel; objects must be RGBA PNGs "
                                         "whose alpha marks the object")
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        rgba = crop_to_alpha(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA))
        if rgba is None:
            raise ObjectImageError(path, "alpha is zero everywhere")
        return rgba

    def sample(self, rng):
        return self.load(self.paths[rng.integers(len(self.paths))])


class ProceduralObjectBank:
    """Textured random shapes with soft alpha, so nothing has to be downloaded.

    Like a folder of `num_instances` PNGs: instance i is always the same shape (drawn from
    seed i), made on first use and kept, so sampling costs what reading a cached file would.
    """

    def __init__(self, num_instances=1000):
        self.num_instances = num_instances
        self.cache = {}

    def __len__(self):
        return self.num_instances

    def sample(self, rng):
        i = int(rng.integers(self.num_instances))
        if i not in self.cache:
            self.cache[i] = self.draw(np.random.default_rng(i))
        return self.cache[i]

    @staticmethod
    def draw(rng):
        h, w = (int(v) for v in rng.integers(64, 161, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        theta = rng.uniform(0, np.pi)
        ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / (h + w)
        stripes = 0.5 + 0.5 * np.sin(ramp * rng.uniform(10, 60))
        ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
        mix = np.clip(0.6 * ramp + 0.4 * stripes, 0, 1)[..., None]
        rgb = c0 * (1 - mix) + c1 * mix + rng.normal(0, 8, size=(h, w, 3))

        alpha = np.zeros((h, w), np.uint8)
        shape = rng.integers(3)
        if shape:
            n = int(rng.integers(3, 9))
            # evenly spread vertices, jittered: never a sliver
            angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
            # shape 1: polygon on an ellipse; shape 2: star-like, radius varies per vertex
            radius = rng.uniform(0.35, 1.0, n) if shape == 2 else np.ones(n)
            pts = np.stack([w / 2 + (w / 2 - 2) * radius * np.cos(angles),
                            h / 2 + (h / 2 - 2) * radius * np.sin(angles)], axis=1)
            cv2.fillPoly(alpha, [pts.astype(np.int32)], 255)
        if not alpha.any():  # shape 0, or a degenerate polygon: an ellipse
            cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 2, h // 2 - 2), 0, 0, 360, 255, -1)
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0)  # soft edge, like a matted object
        return crop_to_alpha(np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha]))


def build_object_bank(objects_path, object_list, log=print):
    if objects_path:
        return FolderObjectBank(objects_path, object_list, log)
    return ProceduralObjectBank()


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


def prepare_object(rgba, max_size):
    """uint8 RGBA ready for per-frame warping, with a transparent border of PAD pixels.

    Shrinks once (area filter) to the largest size the clip needs, so the per-frame warp only
    resamples near scale 1 and never aliases. Resizing happens on premultiplied colour, and the
    colour of transparent pixels next to the object is filled from their neighbours: bilinear
    warping then never mixes in the (often black or white) colour hidden under alpha 0.
    """
    alpha = rgba[..., 3:].astype(np.float32) * (1.0 / 255)
    premul = np.dstack([rgba[..., :3] * alpha, alpha])
    target = (min(int(max_size[0]), rgba.shape[1]), min(int(max_size[1]), rgba.shape[0]))
    if target != (rgba.shape[1], rgba.shape[0]):
        premul = cv2.resize(premul, (max(target[0], 1), max(target[1], 1)),
                            interpolation=cv2.INTER_AREA)
    alpha = premul[..., 3:]
    color = premul[..., :3] / np.maximum(alpha, 1e-6)
    near = cv2.blur(premul, (3, 3))
    fill = near[..., :3] / np.maximum(near[..., 3:], 1e-6)
    color = np.where(alpha > 0, color, fill)
    # a transparent ring carrying the edge colour: the warp samples it instead of the black
    # border it would otherwise invent outside the image
    color = cv2.copyMakeBorder(color, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(alpha, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0)
    out = np.dstack([color, alpha * 255])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def placements(object_shape, centers, sizes, angles, height, width):
    """Per frame, the affine map from object pixels to frame pixels and the frame ROI it covers.

    The object (h, w, without its PAD border) is scaled to `sizes` [T, 2] (w, h), rotated by
    `angles` [T] degrees
    (counter-clockwise on screen, as cv2.getRotationMatrix2D) about its centre and centred at
    `centers` [T, 2]. Returns matrices [T, 2, 3] in ROI coordinates and ROIs [T, 4]
    (x0, y0, x1, y1), empty where the object is entirely outside the frame.
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
    offset = shift - lo + linear @ np.array([0.5, 0.5]) - 0.5
    return np.concatenate([linear, offset[..., None]], axis=2), np.concatenate([lo, hi], axis=1)


def paste(frame, rgba, matrix, roi):
    """Alpha-composite uint8 RGBA `rgba` into uint8 `frame` in place at `roi` (x0, y0, x1, y1)
    through `matrix`; returns the bool footprint (alpha > 0) inside the ROI."""
    x0, y0, x1, y1 = roi
    warped = cv2.warpAffine(rgba, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = warped[..., 3].astype(np.float32) * (1.0 / 255)
    region = frame[y0:y1, x0:x1]
    # out = frame * (1 - a) + rgb * a, computed in float and rounded once (no uint8 truncation)
    region[...] = cv2.blendLinear(region, cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), 1 - alpha,
                                  alpha)
    return warped[..., 3] > 0


class MotionInfuser:
    """Pastes `num_objects` moving objects into a clip; `fit` is 'contain' or 'stretch'."""

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
        return rgba, centers, sizes, scales, angles

    def __call__(self, frames, rng):
        """frames: uint8 [T, H, W, 3] -> (uint8 [T, H, W, 3], InfusedObjects)."""
        num_frames, height, width = frames.shape[:3]
        plans = [self.plan_object(self.object_bank.sample(rng), rng, num_frames, height, width)
                 for _ in range(self.num_objects)]
        # larger object first so the smaller one stays visible on top
        plans.sort(key=lambda plan: -plan[2][0].prod())
        out = np.array(frames, dtype=np.uint8, copy=True)
        k = len(plans)
        boxes = np.zeros((k, num_frames, 4), np.float32)
        footprint = np.zeros((k, num_frames, height, width), bool)
        for i, (rgba, centers, sizes, _, angles) in enumerate(plans):
            boxes[i, :, :2] = centers - sizes / 2
            boxes[i, :, 2:] = centers + sizes / 2
            matrices, rois = placements(rgba.shape, centers, sizes, angles, height, width)
            for t, (x0, y0, x1, y1) in enumerate(rois.tolist()):
                if x0 < x1 and y0 < y1:
                    footprint[i, t, y0:y1, x0:x1] = paste(out[t], rgba, matrices[t],
                                                          (x0, y0, x1, y1))
        objects = InfusedObjects(boxes=boxes, footprint=footprint,
                                 angles=np.stack([p[4] for p in plans]).astype(np.float32),
                                 scales=np.stack([p[3] for p in plans]).astype(np.float32))
        return out, objects


def still_background(kind, num_frames, size, rng, frames=None):
    """Backgrounds of paper Table 7 besides natural video, held still (the motion comes from
    the objects): uint8 [T, size, size, 3]. frame: one random frame of `frames`; image: the
    still image, given as `frames` of one; black: zeros; noise: one uniform-noise image."""
    if kind in ("frame", "image"):
        still = frames[rng.integers(len(frames))]
    elif kind == "black":
        still = np.zeros((size, size, 3), np.uint8)
    elif kind == "noise":
        still = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        raise ValueError(f"unknown background {kind!r}; choose from {BACKGROUNDS}")
    return np.repeat(still[None], num_frames, axis=0)
