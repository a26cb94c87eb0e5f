"""The pixels of a pretraining clip: every draw is made first, in the loader's worker (a
ClipPlan: crop box, still frame, objects and their motion), then the plan is rendered, either
right there (numpy/cv2, `render_clip`) or, a batch at a time, on the training device (torch,
`render_batch`: --augment_on device). Both render one plan to the same clip, up to the
rounding of their interpolations (tests/test_rendering.py)."""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info

from motion_infusion import paste_objects, still_frame
from video_transforms import crop_resize, multi_scale_box


@dataclass
class ClipPlan:
    """One clip, drawn and not rendered: `box` (x0, y0, width, height) of `source` (uint8
    [Ts, H, W, 3]: the decoded frames, Ts = T, or one still frame, Ts = 1) is resized to
    size x size; then `objects` (motion_infusion.ObjectPlan, paste order) are pasted."""
    source: np.ndarray
    box: tuple
    objects: list
    num_frames: int
    size: int


def plan_clip(decoded, background, infuser, infusion_prob, num_frames, size, rng):
    """The draws of one clip, in the order the worker path has always made them: crop,
    still frame (or noise), whether to infuse, the objects. `decoded`: uint8 [T, H, W, 3]
    frames, one still image [1, H, W, 3], or None for a synthetic background."""
    box = (0, 0, size, size) if decoded is None else multi_scale_box(*decoded.shape[1:3], size,
                                                                       rng)
    source = decoded if background == "video" else still_frame(background, size, rng,
                                                                decoded)[None]
    infused = rng.uniform() < infusion_prob
    objects = infuser.plan(rng, num_frames, size, size) if infused else []
    return ClipPlan(source, box, objects, num_frames, size)


def render_clip(plan, objects=True, out=None):
    """uint8 [T, size, size, 3] in the worker, written into `out` when given (a row of the
    batch: the resize is then the one copy between the decoded frames and the batch);
    without `objects` the background alone."""
    if len(plan.source) == plan.num_frames:
        frames = crop_resize(plan.source, plan.box, plan.size, out)
    else:  # a still background
        frames = np.empty((plan.num_frames, plan.size, plan.size, 3), np.uint8) if out is None \
            else out
        frames[:] = crop_resize(plan.source, plan.box, plan.size)
    return paste_objects(frames, plan.objects) if objects else frames


def shared_uint8(shape, zeros=True):
    """A uint8 array that a loader worker hands over without a copy: in shared memory, as
    default_collate allocates its output (torch's storage API, the one private call here);
    plain memory outside a worker. (numpy view, tensor)"""
    if get_worker_info() is None:
        tensor = (torch.zeros if zeros else torch.empty)(shape, dtype=torch.uint8)
    else:  # a new shared file reads as zeros already
        tensor = torch.empty(0, dtype=torch.uint8).set_(
            torch.UntypedStorage._new_shared(int(np.prod(shape)))).view(shape)
    return tensor.numpy(), tensor


def object_from_frame(matrices):
    """Inverse affine maps [..., 2, 3]: frame pixel -> object pixel (cv2 inverts them itself)."""
    linear = np.linalg.inv(matrices[..., :2])
    return np.concatenate([linear, -linear @ matrices[..., 2:]], axis=-1).astype(np.float32)


@dataclass
class PendingSources:
    """pack_plans' sources before they are decoded (--decode_on device): the crops
    (video_io.PendingDecode) and the padded shape [n, T, H, W, 3] they are decoded into."""
    crops: list
    shape: tuple


def pack_plans(plans):
    """ClipPlans as render_batch's padded tensors. The clips cut from one decode share its
    frames, which travel once (in a worker's shared memory), cut to the union of their boxes."""
    groups = {}  # the clips of each source
    for i, plan in enumerate(plans):
        groups.setdefault(id(plan.source), (plan.source, []))[1].append(i)
    boxes = np.array([plan.box for plan in plans])  # x0, y0, width, height
    ends = boxes[:, :2] + boxes[:, 2:]
    source_of, crops = np.zeros(len(plans), np.int64), []
    for g, (source, members) in enumerate(groups.values()):
        (x0, y0), (x1, y1) = boxes[members, :2].min(0), ends[members].max(0)
        crops.append(source[:, y0:y1, x0:x1])
        source_of[members] = g
        boxes[members, :2] -= (x0, y0)
    shape = (len(crops), *np.max([c.shape for c in crops], axis=0))
    if not isinstance(crops[0], np.ndarray):  # video_io.PendingDecode (--decode_on device)
        sources = PendingSources(crops, shape)
    else:
        padded, sources = shared_uint8(shape)
        for target, crop in zip(padded, crops):
            target[:crop.shape[0], :crop.shape[1], :crop.shape[2]] = crop
    k = max(len(plan.objects) for plan in plans)
    rgba = [o.rgba for plan in plans for o in plan.objects] or [np.zeros((1, 1, 4), np.uint8)]
    objects = torch.zeros((len(plans), k, *np.max([o.shape for o in rgba], axis=0)),
                          dtype=torch.uint8)
    inverse = np.zeros((len(plans), k, plans[0].num_frames, 2, 3), np.float32)
    for i, plan in enumerate(plans):
        for j, o in enumerate(plan.objects):
            objects[i, j, :o.rgba.shape[0], :o.rgba.shape[1]] = torch.from_numpy(o.rgba)
            inverse[i, j] = object_from_frame(o.matrices)
    return (sources, source_of.tolist(), boxes.tolist(), objects, torch.from_numpy(inverse),
            plans[0].num_frames, plans[0].size)


def render_batch(sources, source_of, boxes, objects, inverse, num_frames, size, device,
                 chunk=8):
    """The training device's share of --augment_on device: crop + bilinear resize, the
    objects' warps and alpha compositing, as batched tensor ops.

    sources uint8 [n, Ts, H, W, 3] (zero-padded), source_of [B] and boxes [B] (x0, y0, w, h)
    as Python ints, objects uint8 [B, K, h, w, 4] (zero-padded RGBA: alpha 0 pastes nothing),
    inverse float [B, K, T, 2, 3] (frame -> object pixels). Returns uint8 [B, 3, T, S, S].
    Values are rounded where the worker path stores uint8 (after the resize, the warp and
    each paste), so the two paths differ only by cv2's fixed-point interpolation."""
    sources = sources.to(device, non_blocking=True)
    clips = []
    for i, (x0, y0, w, h) in zip(source_of, boxes):  # plain ints: nothing read from a device
        crop = sources[i, :, y0:y0 + h, x0:x0 + w].permute(0, 3, 1, 2).float()
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        clips.append(resized.round_().clamp_(0, 255).expand(num_frames, -1, -1, -1))
    video = torch.stack(clips)  # float [B, T, 3, S, S]
    if objects.shape[1]:
        objects = objects.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float()
        inverse = inverse.to(device, non_blocking=True)
        height, width = objects.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(size, device=device, dtype=torch.float32),
                                torch.arange(size, device=device, dtype=torch.float32),
                                indexing="ij")
        for start in range(0, len(video), chunk):  # bounds the sampling grids' memory
            part = slice(start, start + chunk)
            for k in range(objects.shape[1]):  # paste order
                m = inverse[part, k, ..., None, None]  # [b, T, 2, 3, 1, 1]
                x = m[:, :, 0, 0] * xs + m[:, :, 0, 1] * ys + m[:, :, 0, 2]  # object pixels
                y = m[:, :, 1, 0] * xs + m[:, :, 1, 1] * ys + m[:, :, 1, 2]
                # align_corners=False: pixel index u sits at (2u + 1) / size - 1; the T frames
                # are stacked along the grid's height, one object image per clip
                grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], -1)
                warped = F.grid_sample(objects[part, k], grid.flatten(1, 2), mode="bilinear",
                                       padding_mode="zeros", align_corners=False)
                warped = warped.unflatten(2, (num_frames, size)).transpose(1, 2).round_()
                alpha = warped[:, :, 3:] / 255
                frames = video[part]
                video[part] = (frames * (1 - alpha) + warped[:, :, :3] * alpha).round_()
    return video.clamp_(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4).contiguous()
