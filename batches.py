"""What a training step takes: named batches, made by the collate functions in the loader's
workers (the masks' token indices included, so the step never waits on the host for them)."""
from typing import NamedTuple

import torch
from torch.utils.data import default_collate

import masking_generator


class PretrainingBatch(NamedTuple):
    """A pretraining step's input (engine_for_pretraining.train_loss)."""
    video: torch.Tensor  # uint8 [B, 3, T, H, W], normalised on the training device
    visible: torch.Tensor  # long [B, N_visible] token indices ([B, K, .] with K masks per clip)
    masked: torch.Tensor  # long [B, N_masked] (or [B, K, N_masked]), in token order
    attempts: list  # [(sample index, path, reason)] of the files tried, for bad_files.py


class ClassificationBatch(NamedTuple):
    """A fine-tuning step's input (engine_for_finetuning.train_loss)."""
    video: torch.Tensor  # float [B, 3, T, H, W], normalised
    label: torch.Tensor  # long [B]
    attempts: list


def _stack(samples, repeats):
    """default_collate of the sample fields but the last (a sample's `repeats` clips become
    rows of the batch), and the files the samples tried as one flat list."""
    batch = default_collate([sample[:-1] for sample in samples])
    if repeats > 1:
        batch = [field.flatten(0, 1) for field in batch]
    return (*batch, [attempt for sample in samples for attempt in sample[-1]])


def collate_classification(samples):
    """datasets.VideoClsDataset's training samples (clip, label, attempts)."""
    return ClassificationBatch(*_stack(samples, 1))


def collate_pretraining(samples, repeats=1):
    """datasets.PretrainingDataset's samples -> clips, masks as token indices (made here, in
    the loader's workers) and the files tried; the boolean masks and the object tokens stay
    with the samples (tools/visualize_infusion.py reads them there)."""
    video, mask, _, attempts = _stack(samples, repeats)
    visible, masked = (torch.from_numpy(i) for i in masking_generator.mask_indices(mask.numpy()))
    return PretrainingBatch(video, visible, masked, attempts)
