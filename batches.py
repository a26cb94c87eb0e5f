"""What a training step takes: named batches, made by the collate functions in the loader's
workers (the masks' token indices included, so the step never waits on the host for them).
A pretraining batch hands its clips over with `video_on(device)`: uint8 [B, 3, T, H, W]."""
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate

import masking_generator
from rendering import pack_plans, render_batch


class PretrainingBatch(NamedTuple):
    """A pretraining step's input (engine_for_pretraining.train_loss): rendered clips."""
    video: torch.Tensor  # uint8 [B, T, H, W, 3], channels last as decoded
    visible: torch.Tensor  # long [B, N_visible] token indices ([B, K, .] with K masks per clip)
    masked: torch.Tensor  # long [B, N_masked] (or [B, K, N_masked]), in token order
    attempts: list  # [(sample index, path, reason)] of the files tried, for bad_files.py

    def video_on(self, device):
        """uint8 [B, 3, T, H, W] on the device: permuted there, not in the workers."""
        video = self.video.to(device, non_blocking=True)
        return video.permute(0, 4, 1, 2, 3).contiguous()


class PlannedBatch(NamedTuple):
    """--augment_on device: what the workers decoded and drew, rendered on the device
    (rendering.render_batch has the fields' shapes)."""
    sources: torch.Tensor
    source_of: list
    boxes: list
    objects: torch.Tensor
    inverse: torch.Tensor
    num_frames: int
    size: int
    visible: torch.Tensor
    masked: torch.Tensor
    attempts: list

    def video_on(self, device):
        return render_batch(self.sources, self.source_of, self.boxes, self.objects,
                            self.inverse, self.num_frames, self.size, device)


class ClassificationBatch(NamedTuple):
    """A fine-tuning step's input (engine_for_finetuning.train_loss)."""
    video: torch.Tensor  # float [B, 3, T, H, W], normalised
    label: torch.Tensor  # long [B]
    attempts: list


def collate_classification(samples):
    """datasets.VideoClsDataset's training samples (clip, label, attempts)."""
    batch = default_collate([sample[:-1] for sample in samples])
    return ClassificationBatch(*batch, [attempt for s in samples for attempt in s[-1]])


def collate_pretraining(samples):
    """datasets.PretrainingDataset's samples (R clips each) -> one batch of their clips, the
    masks as token indices (made here, in the loader's workers) and the files tried. The
    dataset's batched fetch renders the clips straight into the batch (`samples.video`);
    single samples are stacked once, into the shared memory the workers hand batches over in.
    The boolean masks and the object tokens stay with the samples (pictures read them)."""
    clips = [clip for sample in samples for clip in sample[0]]
    masks = np.concatenate([sample[1] for sample in samples])
    visible, masked = (torch.from_numpy(i) for i in masking_generator.mask_indices(masks))
    attempts = [attempt for sample in samples for attempt in sample[-1]]
    if getattr(samples, "video", None) is not None:  # rendered into the batch already
        return PretrainingBatch(samples.video, visible, masked, attempts)
    if isinstance(clips[0], np.ndarray):
        video = default_collate([torch.from_numpy(clip) for clip in clips])
        return PretrainingBatch(video, visible, masked, attempts)
    return PlannedBatch(*pack_plans(clips), visible, masked, attempts)
