"""Token masks for masked video modeling: tube masking and SMILE's trajectory masking.

Knows tokens, never pixels: object regions arrive as boxes or alpha footprints in pixel
coordinates and are turned into token cells here. A mask is a bool array of length
N = T' * H' * W' with True = masked, flat index `t * H'W' + h * W' + w` (the order a
Conv3d tubelet embedding produces).
"""
import math

import numpy as np

MASK_TYPES = ("tube", "trajectory")
MASK_TYPE_ALIASES = {"tubelet": "tube"}


def add_args(parser):
    group = parser.add_argument_group("masking")
    group.add_argument("--mask_type", default=None,
                       choices=MASK_TYPES + tuple(MASK_TYPE_ALIASES),
                       help="tube: VideoMAE tube masking; trajectory: SMILE masking of the infused "
                            "objects' tokens ('tubelet': the authors' alias for tube). Default: "
                            "trajectory in stage 1, tube in stage 2")
    group.add_argument("--mask_ratio", type=float, default=0.8,
                       help="fraction of tokens masked; the count per clip is exactly "
                            "T' * int(mask_ratio * H'W')")
    group.add_argument("--traj_unmask_ratio", type=float, default=0.1,
                       help="fraction of object tokens left visible by trajectory masking")
    group.add_argument("--traj_region", default="box", choices=("box", "footprint"),
                       help="object region for trajectory masking: the unrotated box (what the "
                            "released models used) or the rotation-aware alpha footprint")
    group.add_argument("--num_masks_per_clip", type=int, default=1,
                       help="masks drawn per clip, all trained on in the same step with one "
                            "teacher pass (README: repeated sampling and masks per clip)")
    return parser


def stage_mask_type(stage):
    """What --mask_type means when left unset: trajectory masks in stage 1 (infused clips),
    tube masks in stage 2."""
    return "trajectory" if stage == 1 else "tube"


def check_args(args):
    """ValueError (one line) for masking flags that cannot work, before anything is built."""
    _, h, w = token_grid(args.num_frames, args.input_size, args.patch_size, args.tubelet_size)
    if not 0 < args.mask_ratio < 1:
        raise ValueError(f"--mask_ratio must be in (0, 1), got {args.mask_ratio}")
    if not 0 < int(args.mask_ratio * h * w) < h * w:
        raise ValueError(f"--mask_ratio {args.mask_ratio} masks {int(args.mask_ratio * h * w)} "
                         f"of the {h * w} cells of a {h}x{w} slice; the student needs some "
                         "masked and some visible: raise it or --input_size")
    if not 0 <= args.traj_unmask_ratio <= 1:
        raise ValueError(f"--traj_unmask_ratio must be in [0, 1], got {args.traj_unmask_ratio}")
    if args.num_masks_per_clip < 1:
        raise ValueError(f"--num_masks_per_clip must be >= 1, got {args.num_masks_per_clip}")


def token_grid(num_frames, input_size, patch_size, tubelet_size):
    """(T', H', W') for a clip, or ValueError naming the number that does not divide."""
    if num_frames % tubelet_size:
        raise ValueError(f"--num_frames {num_frames} is not divisible by the tubelet size "
                         f"{tubelet_size}")
    if input_size % patch_size:
        raise ValueError(f"--input_size {input_size} is not divisible by the patch size "
                         f"{patch_size}")
    side = input_size // patch_size
    return num_frames // tubelet_size, side, side


def mask_indices(mask):
    """bool masks [..., N] (True = masked; every mask masks the same number, as the generators
    guarantee) -> (visible [..., N_visible], masked [..., N_masked]) int64 token indices, each
    in token order. Computed where the masks are made (the loader), so the training step
    selects tokens by index and never reads a mask back from the device to size its outputs,
    as boolean indexing would at every step."""
    mask = np.asarray(mask)
    counts = np.count_nonzero(mask.reshape(-1, mask.shape[-1]), axis=1)
    if (counts != counts[0]).any():  # the indices would silently mix masked and visible
        raise ValueError(f"masks of one batch mask {counts.min()} to {counts.max()} tokens; "
                         "every mask must mask the same number")
    num_masked = int(counts[0])
    order = np.argsort(mask, axis=-1, kind="stable")  # visible first
    split = mask.shape[-1] - num_masked
    return order[..., :split].astype(np.int64), order[..., split:].astype(np.int64)


def tube_mask(grid, mask_ratio, rng):
    """VideoMAE tube mask: the same int(ratio * H'W') cells masked in every temporal slice."""
    t, h, w = grid
    per_slice = int(mask_ratio * h * w)
    slice_mask = np.zeros(h * w, dtype=bool)
    slice_mask[rng.choice(h * w, per_slice, replace=False)] = True
    return np.tile(slice_mask, t)


def boxes_to_tokens(boxes, grid, patch_size, tubelet_size):
    """Token cells covered by unrotated object boxes.

    boxes: [K, T, 4] float (x0, y0, x1, y1) in pixels, per object and frame; NaN rows are
    frames where the object is absent. A token slice i covers frames i*tubelet .. +tubelet-1;
    the union of the boxes over those frames covers cells [floor(min/p), ceil(max/p)+1) per axis,
    clamped to the grid -- the released models' rule, generous by one cell on the far side.
    Returns bool [N].
    """
    t, h, w = grid
    cells = np.zeros((t, h, w), dtype=bool)
    for obj in boxes:
        for i in range(t):
            frames = obj[i * tubelet_size:(i + 1) * tubelet_size]
            frames = frames[~np.isnan(frames).any(axis=1)]
            if len(frames) == 0:
                continue
            x0, y0 = frames[:, 0].min(), frames[:, 1].min()
            x1, y1 = frames[:, 2].max(), frames[:, 3].max()
            c0, r0 = max(math.floor(x0 / patch_size), 0), max(math.floor(y0 / patch_size), 0)
            c1 = min(math.ceil(x1 / patch_size) + 1, w)
            r1 = min(math.ceil(y1 / patch_size) + 1, h)
            if c0 < c1 and r0 < r1:
                cells[i, r0:r1, c0:c1] = True
    return cells.reshape(-1)


def footprint_to_tokens(footprint, grid, patch_size, tubelet_size):
    """Token cells touched by any object pixel: bool [..., T, H, W] (leading axes, e.g. one
    per object, are merged) -> bool [N]."""
    t, h, w = grid
    footprint = footprint.reshape(-1, *footprint.shape[-3:]).any(axis=0)
    cells = footprint.reshape(t, tubelet_size, h, patch_size, w, patch_size)
    return cells.any(axis=(1, 3, 5)).reshape(-1)


def _flip_random(mask, candidates, count, value, rng):
    """Set `count` random entries of `mask` among index array `candidates` to `value`."""
    count = min(count, len(candidates))
    if count > 0:
        mask[rng.choice(candidates, count, replace=False)] = value
    return count


def trajectory_mask(grid, mask_ratio, object_tokens, traj_unmask_ratio, rng):
    """SMILE trajectory masking with an exact budget (the released generator's rule, below).

    Start from a tube mask, mask every object token, leave a random traj_unmask_ratio of them
    visible, then rebalance to exactly T' * int(ratio * H'W') masked tokens, touching
    background tokens before object tokens in both directions.
    """
    t, h, w = grid
    budget = t * int(mask_ratio * h * w)
    mask = tube_mask(grid, mask_ratio, rng)
    object_idx = np.flatnonzero(object_tokens)
    mask[object_idx] = True
    _flip_random(mask, object_idx, int(round(traj_unmask_ratio * len(object_idx))), False, rng)

    excess = int(mask.sum()) - budget
    if excess > 0:
        excess -= _flip_random(mask, np.flatnonzero(mask & ~object_tokens), excess, False, rng)
        _flip_random(mask, np.flatnonzero(mask & object_tokens), excess, False, rng)
    elif excess < 0:
        deficit = -excess
        deficit -= _flip_random(mask, np.flatnonzero(~mask & ~object_tokens), deficit, True, rng)
        _flip_random(mask, np.flatnonzero(~mask & object_tokens), deficit, True, rng)
    return mask


class TubeMaskingGenerator:
    """VideoMAE's interface: `TubeMaskingGenerator((T', H', W'), ratio)()` -> bool [N].

    `rng` (a numpy Generator) makes the mask reproducible; `object_tokens` is accepted and
    ignored so both generators are called the same way.
    """

    def __init__(self, input_size, mask_ratio):
        self.grid, self.mask_ratio = tuple(input_size), mask_ratio
        t, h, w = self.grid
        self.num_masks = t * int(mask_ratio * h * w)

    def __repr__(self):
        return (f"{type(self).__name__}(grid {self.grid}, total tokens {int(np.prod(self.grid))}, "
                f"masked {self.num_masks})")

    def __call__(self, rng=None, object_tokens=None):
        return tube_mask(self.grid, self.mask_ratio, rng or np.random.default_rng())


class TrajectoryMaskingGenerator(TubeMaskingGenerator):
    """Trajectory masking over the tokens of the infused objects (None: a plain tube mask)."""

    def __init__(self, input_size, mask_ratio, traj_unmask_ratio):
        super().__init__(input_size, mask_ratio)
        self.traj_unmask_ratio = traj_unmask_ratio

    def __call__(self, rng=None, object_tokens=None):
        if object_tokens is None:
            object_tokens = np.zeros(int(np.prod(self.grid)), dtype=bool)
        return trajectory_mask(self.grid, self.mask_ratio, object_tokens,
                               self.traj_unmask_ratio, rng or np.random.default_rng())


def object_tokens(objects, region, grid, patch_size, tubelet_size):
    """Token cells of motion infusion's objects (its `InfusedObjects` record) -> bool [N]."""
    if region == "box":
        return boxes_to_tokens(objects.boxes, grid, patch_size, tubelet_size)
    if region == "footprint":
        return footprint_to_tokens(objects.footprint, grid, patch_size, tubelet_size)
    raise ValueError(f"unknown trajectory region {region!r}")


def build_mask_generator(grid, mask_type, mask_ratio, traj_unmask_ratio):
    mask_type = MASK_TYPE_ALIASES.get(mask_type, mask_type)
    if mask_type == "tube":
        return TubeMaskingGenerator(grid, mask_ratio)
    if mask_type == "trajectory":
        return TrajectoryMaskingGenerator(grid, mask_ratio, traj_unmask_ratio)
    raise ValueError(f"unknown mask type {mask_type!r}; choose from {MASK_TYPES}")
