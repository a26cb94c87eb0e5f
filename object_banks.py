"""Where the pasted objects come from: a folder of RGBA PNGs (e.g. the PIN synthetic objects),
the bundle tools/prepare_objects.py makes of one, or procedural textured shapes. A bank hands
out uint8 RGBA objects cropped to their alpha, premultiplied (colour x alpha / 255: what
resizing and compositing need) and never larger than `max_side`, the largest side motion
infusion can ever paste (motion_infusion.largest_side): from a folder decoded and shrunk
once, then kept in a per-process cache of bounded size; from a bundle, copied out of a memory
map (the page cache is shared by every worker and rank of a machine)."""
import glob
import json
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from errors import BadInputError

BUNDLE = "objects.json"  # tools/prepare_objects.py's index, beside its objects.npy


def add_args(parser):
    group = parser.add_argument_group("objects")
    group.add_argument("--objects_path", default=None,
                       help="folder of RGBA objects laid out <category>/<instance>.png (e.g. the "
                            "PIN synthetic objects), or the bundle tools/prepare_objects.py "
                            "made of one (faster); without it, procedural textured shapes")
    group.add_argument("--object_list", default=None,
                       help="list of object PNGs relative to --objects_path, one per line "
                            "(annotation_files/object_instances.txt format); default: scan")
    group.add_argument("--object_cache_mb", type=int, default=256,
                       help="decoded, shrunk objects each loader worker keeps (MiB); a bank "
                            "that fits is read from disk once per worker")
    return parser


class ObjectImageError(BadInputError):
    """An object PNG that cannot be used (unreadable, no alpha, empty alpha)."""


def crop_to_alpha(rgba):
    """Tight crop around alpha > 0, so box sizes refer to the object, not its padding."""
    x, y, w, h = cv2.boundingRect(rgba[..., 3])
    return rgba[y:y + h, x:x + w] if w else None


def premultiplied(rgba, max_side=None):
    """Straight uint8 RGBA -> premultiplied, scaled down (area filter, aspect kept) so that
    neither side exceeds max_side. Averaging premultiplied colour keeps the colour hidden under
    alpha 0 (often black or white) out of the edge."""
    alpha = rgba[..., 3]
    out = cv2.multiply(rgba, cv2.merge([alpha, alpha, alpha, np.full_like(alpha, 255)]),
                       scale=1 / 255)
    scale = max_side / max(rgba.shape[:2]) if max_side else 1
    if scale >= 1:
        return out
    size = (max(int(rgba.shape[1] * scale), 1), max(int(rgba.shape[0] * scale), 1))
    return cv2.resize(out, size, interpolation=cv2.INTER_AREA)


class FolderObjectBank:
    """RGBA PNGs under `root/<category>/<instance>.png` (nested category folders too, any
    case of `.png`), sampled uniformly over instances.

    Every file is checked when the bank is built (threads; a progress line for large banks):
    an unreadable, alpha-less or all-transparent one is named once and left out, instead of
    discarding clips mid-run."""

    def __init__(self, root, list_file=None, log=print, threads=8, max_side=None, cache_mb=256):
        usable, _ = read_objects(root, self.listed(root, list_file), lambda rgba: None, threads,
                                 log)
        self.paths = [path for path, _ in usable]
        self.max_side, self.cache_bytes = max_side, cache_mb << 20
        self.cache, self.cached_bytes = OrderedDict(), 0

    @staticmethod
    def listed(root, list_file=None):
        """The object files, in the order draws index them (FileNotFoundError: none)."""
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
        return paths

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
        path = self.paths[rng.integers(len(self.paths))]
        if path in self.cache:
            self.cache.move_to_end(path)
            return self.cache[path]
        rgba = premultiplied(self.load(path), self.max_side)
        self.cache[path], self.cached_bytes = rgba, self.cached_bytes + rgba.nbytes
        while self.cached_bytes > self.cache_bytes:  # least recently used out first
            self.cached_bytes -= self.cache.popitem(last=False)[1].nbytes
        return rgba


def read_objects(root, paths, keep, threads, log):
    """Every object file decoded and checked, in threads (cv2 decodes outside the GIL), with a
    progress line every 5,000 and one line naming each unusable file -> ([(path, keep(rgba))]
    of the usable ones, in order, [(path, why)] of the others); FileNotFoundError when none
    is usable."""
    def read(path):
        try:
            return path, keep(FolderObjectBank.load(path)), ""
        except ObjectImageError as err:
            return path, None, err.reason

    usable, bad = [], []
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        for i, (path, kept, reason) in enumerate(pool.map(read, paths), 1):
            (bad.append((path, reason)) if reason else usable.append((path, kept)))
            if len(paths) >= 5000 and (i % 5000 == 0 or i == len(paths)):
                log(f"objects: {i}/{len(paths)} read, {len(bad)} unusable")
    for path, reason in bad:
        log(f"object left out: {path} ({reason})")
    if not usable:
        raise FileNotFoundError(f"none of the {len(paths)} images under {root} is a usable "
                                f"object (e.g. {bad[0][0]}: {bad[0][1]})")
    return usable, bad


class BundleObjectBank:
    """The objects of tools/prepare_objects.py's bundle (checked, cropped, premultiplied and
    shrunk when it was made), drawn as FolderObjectBank draws them from its folder."""

    def __init__(self, root, max_side=None):
        with open(os.path.join(root, BUNDLE), encoding="utf-8") as f:
            index = json.load(f)
        if max_side and index["max_side"] < max_side:
            raise FileNotFoundError(
                f"--objects_path {root} holds objects of at most {index['max_side']} px, and "
                f"this run pastes up to {max_side} px: make the bundle with this run's "
                "--num_frames and --input_size (tools/prepare_objects.py)")
        self.objects = index["objects"]  # [path, offset, height, width]
        self.flat = np.load(os.path.join(root, "objects.npy"), mmap_mode="r")

    def __len__(self):
        return len(self.objects)

    def sample(self, rng):
        _, offset, height, width = self.objects[rng.integers(len(self.objects))]
        return np.array(self.flat[offset:offset + height * width * 4]).reshape(height, width, 4)


class ProceduralObjectBank:
    """Textured random shapes with soft alpha, so nothing has to be downloaded.

    Like a folder of `num_instances` PNGs: instance i is always the same shape (drawn from
    seed i), made on first use and kept, so sampling costs what reading a cached file would.
    """

    def __init__(self, num_instances=1000, max_side=None):
        self.num_instances, self.max_side = num_instances, max_side
        self.cache = {}

    def __len__(self):
        return self.num_instances

    def sample(self, rng):
        i = int(rng.integers(self.num_instances))
        if i not in self.cache:
            self.cache[i] = premultiplied(self.draw(np.random.default_rng(i)), self.max_side)
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


def build_object_bank(objects_path, object_list, log=print, max_side=None, cache_mb=256):
    if objects_path and os.path.isfile(os.path.join(objects_path, BUNDLE)):
        if object_list:
            raise FileNotFoundError(f"--objects_path {objects_path} is a bundle: it holds the "
                                    "objects it was made of (--object_list is for making it)")
        return BundleObjectBank(objects_path, max_side)
    if objects_path:
        return FolderObjectBank(objects_path, object_list, log, max_side=max_side,
                                cache_mb=cache_mb)
    return ProceduralObjectBank(max_side=max_side)
