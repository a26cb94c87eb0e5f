"""--augment_on device: the workers decode and draw (ClipPlans), the training device renders
a batch of them; it gives the clips the workers render from the same plans (run here on CPU
tensors: the ops are the ones a GPU runs)."""
import cv2
import numpy as np
import pytest
import torch

import batches
import datasets
import rendering
from conftest import write_list
from media import pretrain_args
from utils import settled

CPU = torch.device("cpu")


def device_and_workers(args, count):
    """(the device's render of `count` samples' plans, the workers' render of the same plans,
    the samples)."""
    dataset = datasets.build_pretraining_dataset(args)
    samples = [dataset[i] for i in range(count)]
    batch = batches.collate_pretraining(samples)
    assert isinstance(batch, batches.PlannedBatch)
    on_device = batch.video_on(CPU)
    assert on_device.dtype == torch.uint8 and on_device.shape[1] == 3  # [B, 3, T, H, W]
    in_workers = np.stack([rendering.render_clip(plan) for s in samples for plan in s[0]])
    return on_device.permute(0, 2, 3, 4, 1).numpy(), in_workers, samples


@pytest.mark.parametrize("background", ["video", "frame", "image", "black", "noise"])
@pytest.mark.parametrize("repeats,infusion_prob,region", [(1, 1.0, "box"), (2, 0.5, "footprint")])
def test_the_device_renders_the_clips_the_workers_render(video_dir, tmp_path, background,
                                                         repeats, infusion_prob, region):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.jpg"), np.random.default_rng(i).integers(
            0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8))
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    args = pretrain_args(background=background, data_path=listing, background_path=str(images),
                         augment_on="device", repeated_sampling=repeats,
                         infusion_prob=infusion_prob, traj_region=region, input_size=48)
    on_device, in_workers, samples = device_and_workers(args, 3)
    difference = np.abs(on_device.astype(int) - in_workers)
    assert difference.max() <= 1 and difference.mean() < 0.2  # rounding of interpolations only
    backgrounds = np.stack([rendering.render_clip(plan, objects=False) for s in samples
                            for plan in s[0]])
    assert (in_workers != backgrounds).any()  # objects were pasted, so they were compared
    # the worker path draws the same plans: the same clips and masks from the same seeds
    workers = datasets.build_pretraining_dataset(settled(args, augment_on="workers"))
    for i, sample in enumerate(samples):
        clips, masks, object_tokens, _ = workers[i]
        assert (np.stack(clips) == in_workers[i * repeats:(i + 1) * repeats]).all()
        assert (masks == sample[1]).all() and (object_tokens == sample[2]).all()


def test_a_decodes_frames_travel_once_cut_to_its_clips(video_dir, tmp_path):
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    dataset = datasets.build_pretraining_dataset(pretrain_args(
        background="video", data_path=listing, augment_on="device", repeated_sampling=3,
        input_size=32))
    samples = [dataset[i] for i in range(2)]
    batch = batches.collate_pretraining(samples)
    assert batch.source_of == [0, 0, 0, 1, 1, 1]
    height, width = batch.sources.shape[2:4]
    assert batch.sources.shape[:2] == (2, 8) and height <= 64 and width <= 80
    for i, plan in enumerate(plan for s in samples for plan in s[0]):
        x0, y0, w, h = batch.boxes[i]
        crop = batch.sources[batch.source_of[i], :, y0:y0 + h, x0:x0 + w].numpy()
        px, py, pw, ph = plan.box
        assert (crop == plan.source[:, py:py + ph, px:px + pw]).all()
    assert batch.visible.shape[0] == batch.masked.shape[0] == 6


def test_mask_indices_refuse_masks_of_different_counts():
    import masking_generator
    masks = np.zeros((2, 16), bool)
    masks[0, :12], masks[1, :11] = True, True
    with pytest.raises(ValueError, match="mask 11 to 12 tokens"):
        masking_generator.mask_indices(masks)


def test_an_unknown_mask_type_is_refused():
    import masking_generator
    with pytest.raises(ValueError, match="unknown mask type 'random'"):
        masking_generator.build_mask_generator((2, 4, 4), "random", 0.5, 0.1)
