"""--augment_on device: the workers decode and draw (ClipPlans), the training device renders
a batch of them; it gives the clips the workers render from the same plans (run here on CPU
tensors: the ops are the ones a GPU runs)."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

import batches
import datasets
import decode_ahead
import rendering
import video_io
from conftest import write_list
from media import moving_square_frames, pretrain_args, write_video
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


def decoded_ahead(args, indices):
    """The batches of `indices` (lists of sample indices) as the training process gets them
    with --decode_on device (on CPU tensors), and how many batches the loader had handed over
    when each came out."""
    dataset = datasets.build_pretraining_dataset(args)
    pulled = []

    def loader():
        for batch_indices in indices:
            pulled.append(batch_indices)
            yield batches.collate_pretraining([dataset[i] for i in batch_indices])
    out = []
    for batch in decode_ahead.DecodeAhead(args.video_backend, CPU, 2)(loader()):
        out.append((batch, len(pulled)))
    return out


def test_decoding_in_the_training_process_gives_the_workers_clips(video_dir, tmp_path):
    """--decode_on device: the workers read headers only (video_io.PendingDecode); the
    training process decodes a batch ahead of the step and renders exactly the clips, masks
    and attempts that decoding in the workers gives."""
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    args = pretrain_args(background="video", data_path=listing, augment_on="device",
                         decode_on="device", repeated_sampling=2, input_size=48)
    workers = datasets.build_pretraining_dataset(settled(args, decode_on="workers"))
    planned = datasets.build_pretraining_dataset(args)[1][0][0].source
    assert isinstance(planned, video_io.PendingDecode) and planned.index == 1
    assert planned.frame_size == (64, 80) and planned.shape == (8, 64, 80, 3)
    out = decoded_ahead(args, [[0, 1], [2, 3], [1, 2]])
    assert [pulled for _, pulled in out] == [2, 3, 3]  # one batch ahead of the step
    for (batch, _), indices in zip(out, [[0, 1], [2, 3], [1, 2]]):
        reference = batches.collate_pretraining([workers[i] for i in indices])
        assert torch.equal(batch.sources, reference.sources)
        assert torch.equal(batch.video_on(CPU), reference.video_on(CPU))
        assert torch.equal(batch.masked, reference.masked) and batch.attempts == \
            reference.attempts


def test_a_file_the_training_process_cannot_decode_is_bad_and_its_clips_black(video_dir,
                                                                             tmp_path):
    """A file that passed its worker's probe and then cannot be decoded (here: removed in
    between) leaves its clips a black background this once and is reported as bad with the
    batch; the batch's other clips are the ones the workers give."""
    import shutil
    copy = shutil.copy(video_dir["clip1"], tmp_path / "going.mp4")
    listing = write_list(tmp_path / "train.csv", [(video_dir["clip0"], 0), (copy, 0)])
    args = pretrain_args(background="video", data_path=listing, augment_on="device",
                         decode_on="device", infusion_prob=0.0, input_size=48)
    dataset = datasets.build_pretraining_dataset(args)
    batch = batches.collate_pretraining([dataset[0], dataset[1]])
    os.remove(copy)
    decoded, = decode_ahead.DecodeAhead("pyav", CPU, 2)(iter([batch]))
    assert (decoded.sources[1] == 0).all() and decoded.sources[0].any()
    (index, path, reason), = [a for a in decoded.attempts if a[2]]
    assert (index, path) == (1, str(copy)) and "file not found" in reason
    assert "trained on a black background this once" in reason
    reference = datasets.build_pretraining_dataset(settled(args, decode_on="workers"))
    expected = batches.collate_pretraining([reference[0]]).video_on(CPU)
    assert torch.equal(decoded.video_on(CPU)[:1], expected)


def test_a_hung_decode_in_the_training_process_is_named_and_ends_the_wait(video_dir, tmp_path,
                                                                          monkeypatch):
    """A decoder thread whose read never returns (a stale mount) is watched as a worker's read:
    the watch names the file and the thread, and at --data_timeout_s it bails with the file
    listed as hung (here the bail is recorded and the read let go)."""
    import threading

    import guard
    import stop_signals
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(2)])
    args = pretrain_args(background="video", data_path=listing, augment_on="device",
                         decode_on="device", input_size=48)
    dataset = datasets.build_pretraining_dataset(args)
    batch = batches.collate_pretraining([dataset[0], dataset[1]])
    stale, real = threading.Event(), decode_ahead.decode_pending
    monkeypatch.setattr(decode_ahead, "decode_pending", lambda p, *a: (
        p.index == 1 and stale.wait(60) and None) or real(p, *a))
    board, bailed = guard.ReadBoard(0, decode_threads=2), []
    watch = guard.DataWatch(board, dataset.file_paths.__getitem__, 1, 2,
                            stop_signals.stop_flag(), lambda *a: bailed.append(a) or stale.set())
    with watch:
        decoded, = watch.batches(decode_ahead.DecodeAhead("pyav", CPU, 2)(iter([batch]), board, 1))
    (code, line, hung), = bailed
    assert code == 5 and re.match(  # seconds as the watch's once-a-second look finds them
        rf"no batch for \d s \(--data_timeout_s 2\): decoder thread [01] of the training "
        rf"process has been reading {re.escape(video_dir['clip1'])} for \d s", line), line
    assert [path for path, _ in hung] == [video_dir["clip1"]]
    assert board.reader(1) == "decoder thread 0 of the training process"
    assert decoded.sources[1].any()  # let go, it read the file


FAILURES = {"rejects": "CPU-only", "falls back": "NVcuvid unavailable",
            "turns wrongly": "and its header said"}


@pytest.mark.parametrize("nvdec_fails", FAILURES)
def test_files_nvdec_rejects_are_decoded_on_the_cpu_and_a_failing_nvdec_is_dropped(
        video_dir, tmp_path, monkeypatch, caplog, nvdec_fails):
    """Run here with a stand-in for torchcodec's CUDA decoder that fails on every file: it
    rejects them (as a CPU-only torchcodec build does on a GPU), or decodes them on the CPU
    and only its `cpu_fallback` says so (as torchcodec does without the driver's NVDEC
    library), or gives frames of another size than the probe's (as a torchcodec before 0.11
    does for a video stored sideways). Each file's clips are still the workers', the first
    failure is said, and after
    NVDEC_TRIES failures and no success NVDEC is not asked again (one warning), rather than one
    line per file for the rest of the run, or a run that says NVDEC and decodes on the CPU."""
    listing = write_list(tmp_path / "train.csv",
                         [(video_dir[f"clip{i}"], 0) for i in range(4)] * 3)
    args = pretrain_args(background="video", data_path=listing, augment_on="device",
                         decode_on="device", input_size=48)
    asked = []

    def no_nvdec(path, choose, device="cpu", on_cpu_fallback=None):
        asked.append(path)
        if nvdec_fails == "rejects":
            raise RuntimeError("Unsupported device: cuda (a CPU-only build)")
        if nvdec_fails == "turns wrongly":
            return video_io.decode_pyav(path, choose).transpose(0, 2, 1, 3)
        on_cpu_fallback("NVcuvid unavailable")
        return video_io.decode_pyav(path, choose)
    monkeypatch.setitem(video_io.DECODERS, "torchcodec", no_nvdec)
    dataset = datasets.build_pretraining_dataset(args)
    reference = datasets.build_pretraining_dataset(settled(args, decode_on="workers"))
    loader = [batches.collate_pretraining([dataset[i] for i in range(k, k + 4)])
              for k in (0, 4, 8, 0)]
    decoder = decode_ahead.DecodeAhead("pyav", CPU, 2, nvdec=True)
    with caplog.at_level("WARNING", logger="smile"):
        out = list(decoder(iter(loader)))
    # batches 1 and 2, and what of batch 3 (decoding ahead) asked before NVDEC went off;
    # batch 4 asks nothing
    assert decode_ahead.NVDEC_TRIES <= len(asked) <= 12 and not decoder.nvdec
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "files it rejects are decoded on the CPU" in warnings[0]
    assert "NVDEC decoded none of the first 8 files" in warnings[1]
    assert FAILURES[nvdec_fails] in warnings[1]
    for batch, k in zip(out, (0, 4, 8, 0)):
        expected = batches.collate_pretraining([reference[i] for i in range(k, k + 4)])
        assert torch.equal(batch.video_on(CPU), expected.video_on(CPU))
        assert not [a for a in batch.attempts if a[2]]  # nothing counted bad


def nvdec_usable():
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    try:
        video_io.check_backend("torchcodec")
    except ValueError as err:
        return str(err)
    return ""


@pytest.mark.skipif(bool(nvdec_usable()), reason=nvdec_usable() or "")
@pytest.mark.parametrize("rotation", [0, 90])
def test_nvdec_gives_the_cpu_decoders_frames_on_the_gpu(video_dir, tmp_path, rotation):
    """On a GPU (bench/device_check.sh): torchcodec's CUDA decode of a probed window stays on
    the device, NVDEC is not rejected, and its frames are the CPU decoder's up to colour
    conversion (NVDEC's YUV->RGB is not swscale's), a video stored sideways too."""
    cuda = torch.device("cuda")
    path = video_dir["clip3"] if not rotation else write_video(
        str(tmp_path / "phone.mp4"), moving_square_frames(40, 80, 64, seed=3), rotation=rotation)
    pending = video_io.probe(path, lambda n: [0, 5, 17, 39])[:, 4:60, 8:60]
    frames, gave_up = decode_ahead.decode_pending(pending, "pyav", cuda, nvdec=True)
    cpu, _ = decode_ahead.decode_pending(pending, "pyav", CPU)
    assert gave_up == "" and frames.device.type == "cuda" and frames.shape == cpu.shape
    assert (frames.cpu().int() - cpu.int()).abs().float().mean() < 3
