"""Shared plumbing: normalisation constants and helpers used by both data and engines."""
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_video(video, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 video [..., 3, T, H, W] (any device) -> float32 (x / 255 - mean) / std.

    The pretraining loader hands over uint8 so that workers and host-to-device copies move a
    quarter of the bytes; this runs once, on the training device.
    """
    shape = (3, 1, 1, 1)
    scale = torch.tensor([1 / (255 * s) for s in std], device=video.device).view(shape)
    offset = torch.tensor([m / s for m, s in zip(mean, std)], device=video.device).view(shape)
    return video.float().mul_(scale).sub_(offset)
