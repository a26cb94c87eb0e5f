import argparse
import os
import re

import numpy as np
import pytest
import torch

import batches
import datasets
import decode_ahead
import errors
import video_io
from conftest import write_list
from media import (frame_numbers, indexed_frames, moving_square_frames, pretrain_args,
                   sideways_frames, write_video)


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_real_video_both_backends(video_dir, backend):
    source = moving_square_frames(40, 80, 64, seed=0)
    frames = video_io.read_clip(video_dir["clip0"], backend, lambda n: np.arange(0, 40, 5))
    assert frames.shape == (8, 64, 80, 3) and frames.dtype == np.uint8
    # lossy H.264, but it is the same picture
    assert np.abs(frames.astype(int) - source[::5].astype(int)).mean() < 6


def usable(backend):
    try:
        video_io.check_backend(backend)
        return backend
    except ValueError as err:
        return pytest.param(backend, marks=pytest.mark.skip(reason=str(err)))


@pytest.mark.parametrize("backend", ["pyav", usable("torchcodec")])  # torchcodec: optional
def test_backends_agree(video_dir, backend):
    idx = lambda n: np.array([0, 7, 13, 39, 39])  # noqa: E731
    a = video_io.read_clip(video_dir["clip1"], "decord", idx)
    b = video_io.read_clip(video_dir["clip1"], backend, idx)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


@pytest.mark.parametrize("options", [{}, {"x264-params": "keyint=8:bframes=3:b-pyramid=none"},
                                     {"tune": "fastdecode", "x264-params": "keyint=16"}])
def test_pyav_seeks_and_skips_yet_returns_exactly_the_frames_asked_for(tmp_path, options):
    """PyAV starts at the keyframe before the first wanted frame and skips the non-reference
    frames it does not keep: the frames it returns are still exactly the ones asked for, in
    the order asked, repeats included (each shows its own index)."""
    path = write_video(str(tmp_path / "indexed.mp4"), indexed_frames(150), options=options)
    rng = np.random.default_rng(0)
    for _ in range(12):
        wanted = rng.choice(150, 5)
        wanted = np.concatenate([wanted, wanted[-1:]])
        assert list(frame_numbers(video_io.read_clip(path, "pyav", lambda n: wanted))) == list(
            wanted)
    assert list(frame_numbers(video_io.read_clip(path, "pyav", lambda n: [149, 0]))) == [149, 0]


def test_pyav_decodes_and_converts_on_the_workers_own_thread(video_dir, monkeypatch):
    """A loader worker is one core: neither the codec nor swscale (on a pool of every core by
    default from PyAV 17) may start threads of their own. Counted while a frame is converted."""
    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731
    before, during, frombuffer = threads(), [], np.frombuffer
    monkeypatch.setattr(video_io.np, "frombuffer",
                        lambda *a, **k: during.append(threads()) or frombuffer(*a, **k))
    frames = video_io.decode_pyav(video_dir["clip0"], lambda n: np.arange(0, 40, 5))
    assert len(frames) == 8 and len(during) == 8 and max(during) == before


@pytest.mark.parametrize("backend", [usable("torchcodec")])
def test_torchcodecs_silent_cpu_fallback_is_reported(video_dir, monkeypatch, backend):
    """Without the driver's NVDEC library torchcodec decodes on the CPU and says so only in
    its `cpu_fallback`: decode_torchcodec hands that on (decode_ahead counts it as an NVDEC
    failure), with torchcodec's own status class and wording."""
    import torchcodec.decoders as tc
    from torchcodec.decoders._video_decoder import CpuFallbackStatus

    class WithoutNvcuvid(tc.VideoDecoder):
        @property
        def cpu_fallback(self):
            status = CpuFallbackStatus()
            status.status_known, status._is_fallback, status._backend = True, True, "CUDA"
            status._nvcuvid_unavailable = True
            return status
    reasons, choose, path = [], lambda n: [0, 5], video_dir["clip0"]
    expected = video_io.decode_torchcodec(path, choose, on_cpu_fallback=reasons.append)
    assert not reasons  # a real decoder on the CPU did not fall back
    monkeypatch.setattr(tc, "VideoDecoder", WithoutNvcuvid)
    frames = video_io.decode_torchcodec(path, choose, on_cpu_fallback=reasons.append)
    assert reasons == ["NVcuvid unavailable"] and np.array_equal(frames, expected)


@pytest.mark.parametrize("name,codec", [("v.webm", "libvpx-vp9"), ("v.avi", "mpeg4"),
                                        ("v.h264", "libx264"), ("v.ts", "libx264")])
def test_pyav_reads_the_containers_users_have(tmp_path, name, codec):
    """SSv2's VP9 WebM, UCF-101's and HMDB-51's AVI, a raw H.264 stream (no timestamps) and
    MPEG-TS (whose seek, by bytes, lands elsewhere): PyAV opens them without decoding a frame
    for their header, and returns the frames asked for in the order asked (repeats kept); the
    last two are read from their start."""
    path = write_video(str(tmp_path / name), indexed_frames(40), codec=codec)
    wanted = [31, 2, 2, 17, 39]
    assert list(frame_numbers(video_io.decode_pyav(path, lambda n: wanted))) == wanted
    pending = video_io.probe(path, lambda n: [n - 1])
    assert pending.frame_size == (64, 96) and list(pending.indices) == [39]


def test_missing_backend_is_one_line():
    with pytest.raises(ValueError, match="--video_backend no_such_decoder is not usable here"):
        video_io.check_backend("no_such_decoder")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("case,reason", [("missing", "not found"), ("empty", "empty file"),
                                         ("text", None), ("truncated", None)])
def test_bad_files_raise_decode_error(video_dir, backend, case, reason):
    with pytest.raises(video_io.VideoDecodeError, match=reason) as info:
        video_io.read_clip(video_dir[case], backend, lambda n: [0])
    assert info.value.path == video_dir[case]


@pytest.mark.parametrize("case,reason", [("missing", "not found"), ("empty", "empty file"),
                                         ("text", "pyav: "), ("truncated", None)])
def test_a_probe_refuses_what_a_decoder_refuses(video_dir, case, reason):
    """--decode_on device: the worker's probe (header and packets, no decoding) counts a file
    bad where the decoders do, so the training process gets files that open."""
    with pytest.raises(video_io.VideoDecodeError, match=reason) as info:
        video_io.probe(video_dir[case], lambda n: [0])
    assert info.value.path == video_dir[case]


@pytest.mark.parametrize("backend", ["pyav", "decord", usable("torchcodec")])
def test_a_probed_clip_decodes_in_the_training_process_to_the_workers_frames(video_dir,
                                                                           backend):
    lengths = []
    pending = video_io.probe(video_dir["clip2"], lambda n: lengths.append(n) or [0, 9, 39])
    assert lengths == [40] and pending.frame_size == (64, 80) and len(pending) == 3
    window = pending[:, 5:50, 10:70][:, 1:30, 2:40]  # as pack_plans cuts it, twice
    assert window.crop == (6, 35, 12, 50) and window.shape == (3, 29, 38, 3)
    frames, gave_up = decode_ahead.decode_pending(window, backend, torch.device("cpu"))
    decoded = video_io.read_clip(video_dir["clip2"], backend, lambda n: [0, 9, 39])
    assert gave_up == "" and torch.equal(frames, torch.from_numpy(decoded[:, 6:35, 12:50]))


def red_corner(frame):
    """Where the red quarter of sideways_frames() is in a decoded frame."""
    rows, columns = np.nonzero(frame[..., 0] > 150)
    height, width = frame.shape[:2]
    return ("top" if rows.mean() < height / 2 else "bottom",
            "left" if columns.mean() < width / 2 else "right")


@pytest.mark.parametrize("rotation, corner, container", [
    (90, ("bottom", "left"), "mp4"), (-90, ("top", "right"), "mp4"),
    (180, ("bottom", "right"), "mp4"), (-90, ("top", "right"), "mov"),
    (90, ("bottom", "left"), "mkv")])
def test_a_video_stored_sideways_is_read_upright_by_every_decoder_and_the_probe(
        tmp_path, rotation, corner, container):
    """A phone stores a portrait video sideways, with a display matrix to show it turned.
    decord and torchcodec turn its frames upright; PyAV, the default, read them as stored
    (and --decode_on device refused every such file: its probe gave the stored size, its
    decoder the turned frames). Now every decoder and the probe agree: the probe reads an
    MP4's or MOV's track header, and decodes another container's first frame."""
    path = write_video(str(tmp_path / f"phone.{container}"), sideways_frames(),
                       rotation=rotation)
    upright = (192, 128) if rotation % 180 else (128, 192)
    clip = video_io.decode("pyav", path, lambda n: [0, 7])
    assert clip.shape == (2, *upright, 3) and red_corner(clip[0]) == corner
    for backend in ("decord", "torchcodec")[container == "mkv":]:  # decord ignores MKV's
        try:
            video_io.check_backend(backend)
        except ValueError:
            continue  # torchcodec is optional
        other = video_io.decode(backend, path, lambda n: [0, 7])
        assert other.shape == clip.shape and np.abs(other.astype(int) - clip).mean() < 1
    pending = video_io.probe(path, lambda n: [0, 7])
    assert pending.frame_size == upright
    frames, gave_up = decode_ahead.decode_pending(pending[:, 10:100, 20:60], "pyav",
                                                  torch.device("cpu"))
    assert gave_up == "" and torch.equal(frames, torch.from_numpy(clip[:, 10:100, 20:60]))


def test_decoding_on_the_device_needs_the_pixel_work_there(tmp_path, video_dir):
    listing = write_list(tmp_path / "train.csv", [(video_dir["clip0"], 0)])
    with pytest.raises(ValueError, match="--decode_on device needs --augment_on device"):
        datasets.check_args(pretrain_args(background="video", data_path=listing,
                                          decode_on="device"))
    with pytest.raises(ValueError, match="--decode_threads must be >= 1"):
        datasets.check_args(pretrain_args(background="video", data_path=listing,
                                          augment_on="device", decode_on="device",
                                          decode_threads=0))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_what_is_not_a_regular_file_says_so_and_is_never_opened(tmp_path, kind):
    """A FIFO would block its reader until a writer came; a folder is no video either."""
    path = tmp_path / "clip.mp4"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    what = "a FIFO (named pipe)" if kind == "fifo" else "a folder"
    with pytest.raises(video_io.VideoDecodeError, match=re.escape(
            f"not a regular file: it is {what}")):
        video_io.read_clip(str(path), "pyav", lambda n: [0])
    with pytest.raises(video_io.VideoDecodeError, match="not a regular file"):
        video_io.read_image(str(path))


def test_dense_indices():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = video_io.dense_indices(100, 16, 4, rng)
        assert (np.diff(idx) == 4).all() and idx[0] >= 0 and idx[-1] <= 99
    # the window spans (4 - 1) * 4 + 1 = 13 frames, so starts run 0 .. 87
    assert list(video_io.dense_indices(100, 4, 4)) == [43, 47, 51, 55]  # centre view
    views = [video_io.dense_indices(100, 4, 4, view=v, num_views=3)[0] for v in range(3)]
    assert views == [0, 44, 87]
    assert list(video_io.dense_indices(5, 4, 2)) == [0, 2, 4, 4]  # short: repeat the last


def test_segment_indices():
    rng = np.random.default_rng(0)
    idx = video_io.segment_indices(80, 8, rng)
    assert ((idx >= np.arange(8) * 10) & (idx < np.arange(1, 9) * 10)).all()
    assert list(video_io.segment_indices(80, 8, view=0, num_views=2)) == list(
        np.arange(8) * 10 + 2)
    assert video_io.segment_indices(3, 8).max() <= 2


# ---------------------------------------------------------------- lists
def test_read_list(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a.mp4 3\n\nsub dir/b c.mp4 7\n")
    assert datasets.read_list(str(path), root="/data") == [("/data/a.mp4", 3),
                                                         ("/data/sub dir/b c.mp4", 7)]


def test_read_list_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a.mp4 3\nb.mp4 label\n")
    with pytest.raises(ValueError, match=r"train.csv:2: expected 'PATH LABEL'"):
        datasets.read_list(str(path))
    # pretraining takes bare paths, relative to the list's folder; 'PATH WORD' with PATH on
    # disk is a label that is not a number, not a file name with a space
    assert datasets.read_list(str(path), require_label=False)[1] == (
        str(tmp_path / "b.mp4 label"), -1)
    (tmp_path / "b.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train.csv:2: the label 'label' is not an integer"):
        datasets.read_list(str(path), require_label=False)
    path.write_text("path,label\nb.mp4,dog\n")  # the CSV form of the same mistake
    with pytest.raises(ValueError, match=r"train.csv:2: the label 'dog' is not an integer"):
        datasets.read_list(str(path), require_label=False)


def test_read_list_csv_header_and_relative_paths(tmp_path):
    path = tmp_path / "lists" / "train.csv"
    path.parent.mkdir()
    path.write_text("path,label\nvideos/a.mp4,3\n/abs/b c.mp4, 7\n", encoding="utf-8")
    assert datasets.read_list(str(path)) == [(str(tmp_path / "lists" / "videos" / "a.mp4"), 3),
                                             ("/abs/b c.mp4", 7)]


def test_stride_baked_videos_give_the_originals_frames(tmp_path):
    """A list prepared with --stride 4 samples --sampling_rate 4 as one frame in one: the
    same frames as the original's, up to the stride's phase (each frame shows its index)."""
    from tools import prepare_videos
    source = write_video(str(tmp_path / "src" / "v.mp4"), indexed_frames(120))
    original = write_list(tmp_path / "src" / "train.csv", [(source, 0)])
    assert prepare_videos.main([original, str(tmp_path / "s4"), "--stride", "4", "--workers",
                                "1"]) == 0
    baked = str(tmp_path / "s4" / "train.csv")
    assert open(baked).readline() == "# frame_stride 4\n"
    assert datasets.read_list(baked).frame_stride == 4
    windows = {}
    for name, listing in (("original", original), ("baked", baked)):
        dataset = datasets.build_pretraining_dataset(pretrain_args(
            2, background="video", data_path=listing, sampling_rate=4, num_frames=8))
        for epoch in range(6):
            dataset.set_epoch(epoch)
            numbers = frame_numbers(dataset.decode(0, dataset.rng(0)))
            assert (np.diff(numbers) == 4).all(), numbers  # 4 frames apart in real time
            if name == "baked":
                assert (numbers % 4 == 0).all()  # the frames the stride kept
        entries = datasets.read_list(listing)  # the evaluation's centre window, as it samples
        step = datasets.frame_step(entries, 4)
        windows[name] = frame_numbers(video_io.read_clip(
            entries[0][0], "pyav", lambda n: video_io.dense_indices(n, 8, step)))
    # the centre window of both lists: the same frames up to the stride's phase
    assert (np.diff(windows["baked"]) == 4).all()
    assert np.abs(windows["baked"] - windows["original"]).max() < 4


def test_multi_label_count_and_segment_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a b.mp4 3,1,3\nc.mp4 0\n")  # a path with a space; a repeated label
    entries = datasets.read_list(str(path), root="/d", task="multi_label")
    assert entries == [("/d/a b.mp4", (1, 3)), ("/d/c.mp4", (0,))] and entries.segments is None
    path.write_text("path,label\na.mp4,4\nb.mp4 2.5\nc.mp4 0\n")
    assert [c for _, c in datasets.read_list(str(path), task="counting")] == [4.0, 2.5, 0.0]
    path.write_text("P01/P01_01.mp4 120 480 7\nP01/P01_02.mp4 0 31 2\n")  # EPIC-Kitchens style
    entries = datasets.read_list(str(path), root="/epic")
    assert entries == [("/epic/P01/P01_01.mp4", 7), ("/epic/P01/P01_02.mp4", 2)]
    assert entries.segments == [(120, 480), (0, 31)]
    whole = tmp_path / "whole.csv"
    whole.write_text("P01/P01_01.mp4 7\nP01/P01_02.mp4 2\n")
    assert datasets.read_list(str(whole)).digest != entries.digest  # the segments count
    path.write_text("x.mp4 10 20 1,2\n")
    entries = datasets.read_list(str(path), task="multi_label")
    assert entries[0][1] == (1, 2) and entries.segments == [(10, 20)]


@pytest.mark.parametrize("rows,task,message", [
    ("a.mp4 1,2\n", "classification", r"train.csv:1: expected 'PATH LABEL' \(or PATH,LABEL\) "
                                       r"with an integer label, got 'a.mp4 1,2'"),
    ("a.mp4 1\nb.mp4 x,2\n", "multi_label", r"train.csv:2: expected 'PATH LABEL,LABEL,...' "
                                            r"with integer labels, got 'b.mp4 x,2'"),
    ("a.mp4 3\nb.mp4 -1\n", "counting", r"train.csv:2: expected 'PATH COUNT' \(or PATH,COUNT\) "
                                        r"with a count >= 0, got 'b.mp4 -1'"),
    ("a.mp4 nan\n", "counting", r"train.csv:1: expected 'PATH COUNT'"),
    ("a.mp4 50 10 1\n", "classification", r"train.csv:1: the segment ends \(frame 10\) before "
                                          r"it starts \(frame 50\)"),
    ("a.mp4 0 10 1\nb.mp4 1\n", "classification", r"train.csv:2: every row of a list gives a "
                                                  r"segment \(PATH START END LABEL\), or none "
                                                  r"does; the first row does$"),
    ("a.mp4 1\nb.mp4 0 10 1\n", "classification", r"train.csv:2: .*the first row does not$"),
    ("# frame_stride 2\na.mp4 0 10 1\n", "classification", r"train.csv: a list of segments "
                                                           r"prepared with a frame stride"),
])
def test_a_malformed_row_is_one_line_naming_file_and_row(tmp_path, rows, task, message):
    path = tmp_path / "train.csv"
    path.write_text(rows)
    with pytest.raises(errors.UsageError, match=message):
        datasets.read_list(str(path), task=task)


def test_labels_are_checked_for_the_task(tmp_path):
    (tmp_path / "train.csv").write_text("a.mp4 1,4\n")
    args = argparse.Namespace(data_path=str(tmp_path), data_root="", task="multi_label",
                              nb_classes=4, data_set="Kinetics-400")
    with pytest.raises(errors.UsageError, match=r"label 4 outside \[0, 4\) .*video .*a.mp4"):
        datasets.labelled_list(args, "train.csv")
    (tmp_path / "train.csv").write_text("a.mp4 17\n")  # a count has no classes to lie in
    assert datasets.labelled_list(argparse.Namespace(**{**vars(args), "task": "counting"}),
                                  "train.csv")[1] == 1


@pytest.mark.parametrize("mode", ["train", "test"])
def test_a_clip_of_a_segment_never_leaves_it(tmp_path, mode):
    """A 200-frame video whose frames show their index, segments of it as in EPIC-Kitchens;
    every clip, training (random) and test (spread views), takes frames of its segment only,
    also for a segment that runs past the video's end or is shorter than the clip."""
    video = write_video(str(tmp_path / "long.mp4"), indexed_frames(200))
    segments = [(40, 120), (150, 155), (190, 260)]
    listing = tmp_path / "train.csv"
    listing.write_text("".join(f"long.mp4 {a} {b} {i}\n" for i, (a, b) in enumerate(segments)))
    args = pretrain_args(data_path=str(tmp_path), data_set="Kinetics-400", nb_classes=3,
                         num_frames=8, sampling_rate=4, test_num_segment=4, test_num_crop=1,
                         input_size=32, short_side_size=32)
    dataset = datasets.VideoClsDataset(args, datasets.read_list(str(listing)), mode,
                                       segment_sampling=False, flip=False)
    for index in range(len(segments)):
        for draw in range(6 if mode == "train" else 1):
            dataset.set_epoch(draw)
            if mode == "train":
                numbers = frame_numbers(dataset.read(index, dataset.indices(dataset.rng(index))))
            else:
                numbers = np.concatenate([frame_numbers(dataset.read(index, dataset.indices(
                    view=view, num_views=4))) for view in range(4)])
            start, end = segments[index]
            assert (numbers >= start).all() and (numbers <= min(end, 199)).all(), numbers
    last = dataset[len(dataset) - 1][-1]  # the last segment's clip (its last view) decodes
    assert last is True if mode == "test" else last == [(2, "", "")]
    beyond = tmp_path / "beyond.csv"
    beyond.write_text("long.mp4 250 300 0\n")
    late = datasets.VideoClsDataset(args, datasets.read_list(str(beyond)), "test",
                                    segment_sampling=False, flip=False)
    assert late[0][-1] is False and "its segment starts at frame 250, and the video has 200 " \
        "frames" in late.eval_failures[video]


def test_a_sampling_rate_the_stride_does_not_divide_is_one_line(tmp_path, video_dir):
    listing = tmp_path / "train.csv"
    listing.write_text(f"# frame_stride 4\n{video_dir['clip0']}\n")
    with pytest.raises(ValueError, match="--sampling_rate 2 is not a multiple of the frame "
                                         "stride 4 of"):
        datasets.build_pretraining_dataset(pretrain_args(background="video",
                                                         data_path=str(listing)))
    listing.write_text(f"# frame_stride four\n{video_dir['clip0']}\n")
    with pytest.raises(ValueError, match="train.csv:1: expected '# frame_stride N'"):
        datasets.read_list(str(listing))


# ---------------------------------------------------------------- pretraining
@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("mask_type", ["tube", "trajectory"])
def test_pretraining_dataset_video(video_dir, tmp_path, backend, mask_type):
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    args = pretrain_args(background="video", data_path=listing, video_backend=backend,
                         mask_type=mask_type)
    datasets.check_args(args)
    dataset = datasets.build_pretraining_dataset(args)
    (clip,), (mask,), (object_tokens,), attempts = dataset[1]
    assert attempts == [(1, "", "")]  # sample 1 read fine at the first try
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8  # channels last, as decoded
    assert mask.shape == (64,) and mask.dtype == bool and mask.sum() == 4 * int(0.8 * 16)
    assert object_tokens.shape == (64,) and object_tokens.any()
    again = dataset[1]
    assert (clip == again[0][0]).all() and (mask == again[1][0]).all()  # seeded per sample
    dataset.set_epoch(1)
    assert not (clip == dataset[1][0][0]).all()


@pytest.mark.parametrize("stage", [1, 2])
def test_repeated_sampling_cuts_clips_from_one_decode(video_dir, tmp_path, monkeypatch, stage):
    """--repeated_sampling 3: one decode per sample, three clips each with its own crop, its
    own infusion (stage 1) and its own mask, as three rows of the batch."""
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    args = pretrain_args(stage, background="video", data_path=listing, repeated_sampling=3)
    dataset = datasets.build_pretraining_dataset(args)
    decodes = []
    real_read = datasets.read_clip
    monkeypatch.setattr(datasets, "read_clip", lambda *a: decodes.append(a[0]) or real_read(*a))
    clips, masks, object_tokens, attempts = dataset[2]
    assert decodes == [video_dir["clip2"]] and attempts == [(2, "", "")]
    assert len(clips) == 3 and masks.shape == object_tokens.shape == (3, 64)
    assert (masks.sum(1) == 4 * int(0.8 * 16)).all()
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert not (clips[a] == clips[b]).all() and not (masks[a] == masks[b]).all()
        if stage == 1:  # other objects on other paths
            assert not (object_tokens[a] == object_tokens[b]).all()
    if stage == 1:  # each trajectory mask covers its own clip's objects
        assert ((masks & object_tokens).sum(1) > 0.8 * object_tokens.sum(1)).all()
    batch = batches.collate_pretraining([dataset[0], dataset[1]])
    video, visible, masked, attempts = batch
    mask = torch.from_numpy(np.concatenate([dataset[0][1], dataset[1][1]]))
    assert video.shape == (6, 8, 64, 64, 3) and len(attempts) == 2
    assert (video[3:].numpy() == np.stack(dataset[1][0])).all()  # a video's clips together
    assert batch.video_on(torch.device("cpu")).shape == (6, 3, 8, 64, 64)
    assert visible.shape == (6, 64 - 48) and masked.shape == (6, 48)
    assert torch.equal(torch.gather(mask, 1, masked), torch.ones(6, 48, dtype=torch.bool))
    # torch's batched fetch renders the clips straight into the batch's array: no stacking
    samples = dataset.__getitems__([0, 1])
    fetched = batches.collate_pretraining(samples)
    assert fetched.video is samples.video and torch.equal(fetched.video, video)


@pytest.mark.parametrize("background", ["frame", "image", "black", "noise"])
def test_pretraining_backgrounds(video_dir, tmp_path, background):
    import cv2
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.jpg"), np.full((50, 70, 3), 40 * i, np.uint8))
    listing = write_list(tmp_path / "train.csv", [(video_dir["clip0"], 0)])
    args = pretrain_args(background=background, data_path=listing,
                         background_path=str(images), num_synthetic_clips=5)
    datasets.check_args(args)
    dataset = datasets.build_pretraining_dataset(args)
    assert len(dataset) == {"frame": 1, "image": 3, "black": 5, "noise": 5}[background]
    s = dataset.stages(0, dataset.rng(0))
    assert (s["original"] == s["original"][0]).all()  # the background itself is still
    assert not (s["infused"] == s["infused"][0]).all()  # the objects move
    (clip,), _, _, _ = dataset[0]
    assert clip.shape == (8, 64, 64, 3)


def test_no_infusion_gives_tube_mask(tmp_path):
    dataset = datasets.build_pretraining_dataset(pretrain_args(infusion_prob=0.0))
    s = dataset.stages(0, dataset.rng(0))
    assert s["objects"] is None and not s["object_tokens"].any()
    assert (s["original"] == s["infused"]).all()
    per_slice = s["mask"].reshape(4, 16)
    assert (per_slice == per_slice[0]).all()


def test_infusion_probability():
    dataset = datasets.build_pretraining_dataset(pretrain_args(infusion_prob=0.5,
                                                               num_synthetic_clips=200))
    infused = [dataset.stages(i, dataset.rng(i))["objects"] is not None for i in range(200)]
    assert 0.38 < np.mean(infused) < 0.62


def test_short_video_is_padded(video_dir, tmp_path):
    listing = write_list(tmp_path / "train.csv", [(video_dir["short"], 0)])
    dataset = datasets.build_pretraining_dataset(pretrain_args(background="video",
                                                               data_path=listing))
    (clip,), _, _, attempts = dataset[0]
    assert clip.shape == (8, 64, 64, 3)
    assert attempts == [(0, "", "")]  # read fine


def test_bad_video_substituted_and_reported(video_dir, tmp_path):
    good = [(video_dir[f"clip{i}"], 0) for i in range(4)] * 10
    listing = write_list(tmp_path / "train.csv", good + [(video_dir["text"], 0)])
    dataset = datasets.build_pretraining_dataset(pretrain_args(background="video",
                                                               data_path=listing))
    bad_index = len(good)
    (clip,), _, _, attempts = dataset[bad_index]  # a different, readable sample comes back
    assert clip.shape == (8, 64, 64, 3)
    assert attempts[0][:2] == (bad_index, video_dir["text"]) and attempts[0][2]
    assert attempts[1][0] != bad_index and attempts[1][2] == ""
    # known bad (from earlier in the run): the same substitute, without decoding the file
    dataset.known_bad = frozenset([bad_index])
    (again,), _, _, known = dataset[bad_index]
    assert (clip == again).all() and known == attempts[1:]


def test_all_bad_never_recurses(video_dir, tmp_path):
    listing = write_list(tmp_path / "train.csv", [(video_dir["missing"], 0)] * 3)
    dataset = datasets.build_pretraining_dataset(
        pretrain_args(background="video", data_path=listing, max_retries=5))
    with pytest.raises(errors.DataAbort, match="5 samples in a row"):
        dataset[0]


def finetune_args(tmp_path, video_dir, data_set, extra=(), nb_classes=2, **overrides):
    entries = [(video_dir[f"clip{i}"], i % 2) for i in range(4)] + list(extra)
    for split in ("train", "val", "test"):
        write_list(tmp_path / f"{split}.csv", entries)
    return pretrain_args(data_path=str(tmp_path), data_set=data_set, nb_classes=nb_classes,
                         test_num_segment=2, test_num_crop=3, short_side_size=64, **overrides)


@pytest.mark.parametrize("data_set", ["Kinetics-400", "SSV2"])
def test_finetune_dataset_modes(video_dir, tmp_path, data_set):
    args = finetune_args(tmp_path, video_dir, data_set)
    train, nb_classes = datasets.build_dataset(True, False, args)
    assert nb_classes == 2 and len(train) == 4
    clip, label, _ = train[1]
    assert clip.shape == (3, 8, 64, 64) and clip.dtype == torch.float32 and label == 1
    assert train.segment_sampling == (data_set == "SSV2") and train.flip == (data_set != "SSV2")
    val, _ = datasets.build_dataset(False, False, args)
    assert len(val) == 4 and val[0][4] is True
    test, _ = datasets.build_dataset(False, True, args)
    assert len(test) == 4 * 2 * 3
    views = [test[i] for i in range(6)]
    assert all(v[2] == 0 and v[4] for v in views) and [v[3] for v in views] == list(range(6))
    assert not torch.equal(views[0][0], views[2][0])  # crops differ


def test_finetune_test_never_substitutes_bad_video(video_dir, tmp_path):
    args = finetune_args(tmp_path, video_dir, "Kinetics-400", extra=[(video_dir["text"], 1)])
    test, _ = datasets.build_dataset(False, True, args)
    clip, label, video_index, view, ok = test[4 * 6]
    assert video_index == 4 and ok is False and label == 1 and not clip.any()
    assert video_dir["text"] in test.eval_failures


def test_finetune_label_out_of_range(video_dir, tmp_path):
    args = finetune_args(tmp_path, video_dir, "UCF101", extra=[(video_dir["clip0"], 150)],
                         nb_classes=None)
    with pytest.raises(ValueError, match="label 150 outside"):
        datasets.build_dataset(True, False, args)


def test_dataloader_workers(video_dir, tmp_path):
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    dataset = datasets.build_pretraining_dataset(pretrain_args(background="video",
                                                               data_path=listing))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2,
                                         collate_fn=batches.collate_pretraining)
    loaded = list(loader)
    assert len(loaded) == 2
    assert loaded[0].attempts == [(0, "", ""), (1, "", "")]
    assert loaded[0].video.shape == (2, 8, 64, 64, 3) and loaded[0].masked.shape[0] == 2
    assert (loaded[0].video[0].numpy() == dataset[0][0][0]).all()  # as the main process


def test_decord_rejects_valid_file_pyav_reads_it(tmp_path):
    # decord 0.6 fails on some small frame sizes ("size must exactly match"); PyAV steps in
    path = write_video(str(tmp_path / "small.mp4"), moving_square_frames(12, 48, 40, size=8))
    frames = video_io.read_clip(path, "decord", lambda n: [0, 5, 11])
    assert frames.shape == (3, 40, 48, 3)
