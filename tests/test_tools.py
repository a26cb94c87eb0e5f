import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_script, save_random_student

pytestmark = pytest.mark.slow  # every test here runs a script


def test_make_lists(video_dir, tmp_path):
    root = tmp_path / "videos"
    for name in ("clip0", "clip1", "clip2", "clip3"):
        src = video_dir[name]
        dst = root / os.path.basename(os.path.dirname(src)) / os.path.basename(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    shutil.copy(video_dir["text"], root / "class1" / "broken.mp4")
    lists = tmp_path / "lists"
    code, out = run_script("tools/make_lists.py", str(root), str(lists), "--val_fraction", "0.5")
    assert code == 0, out
    assert "1 unreadable" in out and "broken.mp4" in out
    train = (lists / "train.csv").read_text().splitlines()
    val = (lists / "val.csv").read_text().splitlines()
    assert len(train) == 2 and len(val) == 2
    assert (lists / "test.csv").read_text().splitlines() == val
    assert (lists / "classes.txt").read_text().splitlines() == ["0 class0", "1 class1"]
    for line in train + val:
        path, label = line.rsplit(" ", 1)
        assert os.path.basename(os.path.dirname(path)) == f"class{label}"


def test_visualize_infusion_writes_png_and_gif(tmp_path):
    code, out = run_script("tools/visualize_infusion.py", "--background", "noise", "--num_frames",
                           "4", "--input_size", "64", "--output_dir", str(tmp_path), "--index", "2")
    assert code == 0, out
    assert "tokens masked" in out
    png = Image.open(tmp_path / "infusion_2.png")
    assert png.size == (4 * 64, 3 * 64)  # rows: original, infused, mask overlay
    gif = Image.open(tmp_path / "infusion_2.gif")
    assert gif.n_frames == 4


def test_visualize_rejects_bad_geometry(tmp_path):
    code, out = run_script("tools/visualize_infusion.py", "--background", "black", "--num_frames",
                           "5", "--output_dir", str(tmp_path))
    assert code != 0
    assert out.strip().splitlines() == [
        "error: --num_frames 5 is not divisible by the tubelet size 2"]


def test_feature_similarity(video_dir, tmp_path):
    ckpt = save_random_student(tmp_path / "pretrained.pth")
    code, out = run_script("tools/feature_similarity.py", "--video", video_dir["clip0"],
                           "--checkpoints", ckpt, "random", "--model", "vit_tiny_patch16_224",
                           "--num_frames", "8", "--sampling_rate", "2", "--input_size", "32",
                           "--output_dir", str(tmp_path / "sim"))
    assert code == 0, out
    data = json.load(open(tmp_path / "sim" / "similarity.json"))
    matrix = data[ckpt]["matrix"]
    assert len(matrix) == 4 and all(abs(matrix[i][i] - 1) < 1e-3 for i in range(4))
    assert "random" in data and (tmp_path / "sim" / "similarity.png").is_file()


def test_check_videos_writes_an_exact_clean_list(video_dir, tmp_path):
    lines = [f"{video_dir['clip0']} 0", f"{video_dir['missing']} 1", "", f"{video_dir['clip1']} 1",
             f"{video_dir['truncated']} 0", f"{video_dir['empty']} 1", f"{video_dir['short']} 0"]
    listing = tmp_path / "train.csv"
    listing.write_text("\n".join(lines) + "\n")
    code, out = run_script("tools/check_videos.py", str(listing), "--workers", "2")
    assert code == 1, out
    assert (tmp_path / "train.csv.clean").read_text().splitlines() == [lines[0], lines[3],
                                                                       lines[6]]
    bad = [row.split("\t") for row in (tmp_path / "train.csv.bad.tsv").read_text().splitlines()]
    assert bad[0] == ["path", "reason"]
    assert [row[0] for row in bad[1:]] == [video_dir[k] for k in ("missing", "truncated", "empty")]
    assert all(row[1] for row in bad[1:]) and "3 of 6 files are usable" in out
    assert "6/6 files" in out and "eta" in out  # the progress line

    # the clean list passes, in the CSV form too, with relative paths under --data_root
    root = os.path.dirname(video_dir["clip0"])
    csv = tmp_path / "clean.csv"
    csv.write_text("path,label\nclip0.mp4,0\nclip2.mp4,0\n")
    code, out = run_script("tools/check_videos.py", str(csv), "--data_root", root)
    assert code == 0 and "2 of 2 files are usable" in out, out
    assert (tmp_path / "clean.csv.clean").read_text().splitlines()[1:] == ["clip0.mp4,0",
                                                                          "clip2.mp4,0"]
    # without --data_root relative paths start at the list's folder, as in training, and a
    # byte-order mark (a list saved by Excel) is not part of the first path
    shutil.copy(video_dir["clip0"], tmp_path / "clip0.mp4")
    (tmp_path / "bom.csv").write_bytes("\ufeffclip0.mp4 0\n".encode())
    code, out = run_script("tools/check_videos.py", str(tmp_path / "bom.csv"))
    assert code == 0 and "1 of 1 files are usable" in out, out


def test_prepare_videos_converts_names_failures_and_resumes_after_a_kill(video_dir, tmp_path):
    """Short side down to 48, a keyframe every 8 frames, no audio; the truncated and the
    missing file are named; a run killed mid-way (its whole process group, as SLURM does)
    leaves no half-written output behind that a second run would keep."""
    import signal
    import time

    import av
    listing = tmp_path / "train.csv"
    good = [video_dir[f"clip{i}"] for i in range(4)]
    listing.write_text("".join(f"{p} {i % 2}\n" for i, p in enumerate(good))
                       + f"{video_dir['truncated']} 1\n{tmp_path / 'missing.mp4'} 0\n")
    out = tmp_path / "out"
    argv = ("tools/prepare_videos.py", str(listing), str(out), "--short_side", "48",
            "--keyint", "8", "--workers", "1")
    proc = run_script(*argv, wait=False, new_session=True)

    def finished():
        return len([p for p in out.rglob("*.mp4") if not p.name.endswith(".partial.mp4")])

    deadline = time.time() + 120
    while not finished() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = finished()
    assert 1 <= finished < 4, "the kill should land mid-run"
    code, log = run_script(*argv)
    assert code == 1, log  # some inputs failed
    assert f"4 of 6 videos ready in {out} ({finished} done before this run" in log
    assert not list(out.rglob("*.partial.mp4"))
    failed = (out / "train.csv.failed.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in failed) == sorted(
        [video_dir["truncated"], str(tmp_path / "missing.mp4")])
    lines = (out / "train.csv").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["0", "1", "0", "1"]  # labels kept, in order
    for line, source in zip(lines, good):
        with av.open(str(out / line.split()[0])) as converted, av.open(source) as original:
            stream = converted.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (60, 48)
            assert not converted.streams.audio and stream.average_rate == 25
            packets = sorted((p for p in converted.demux(stream) if p.size),
                             key=lambda p: p.pts)  # display order
            assert len(packets) == original.streams.video[0].frames == 40  # every frame
            assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 8, 16, 24, 32]
    code, log = run_script(*argv)  # a third run has nothing left to do
    assert "(4 done before this run" in log


def test_prepare_videos_bakes_a_stride_in_and_keeps_one_kind_of_file_per_folder(video_dir,
                                                                               tmp_path):
    """--stride 2: every other frame at half the frame rate (time is kept), and the new list
    says so in its first line, which check_videos keeps in the clean list. A rerun into the
    folder with other settings is refused: it would mix two kinds of files."""
    import av

    from tools import prepare_videos
    listing = tmp_path / "train.csv"
    listing.write_text(f"{video_dir['clip0']} 0\n{video_dir['clip1']} 1\n")
    out = tmp_path / "s2"
    assert prepare_videos.main([str(listing), str(out), "--stride", "2", "--workers", "1"]) == 0
    lines = (out / "train.csv").read_text().splitlines()
    assert lines[0] == "# frame_stride 2" and [line.split()[1] for line in lines[1:]] == ["0", "1"]
    with av.open(str(out / lines[1].split()[0])) as converted:
        stream = converted.streams.video[0]
        assert stream.frames == 20 and stream.average_rate == 12.5  # 40 frames at 25 fps
    code, log = run_script("tools/prepare_videos.py", str(listing), str(out), "--workers", "1")
    assert code == 2 and "holds videos prepared with --stride 2 (now 1), --keyint 8 (now 16)" \
        in log, log
    code, log = run_script("tools/check_videos.py", str(out / "train.csv"), "--workers", "1")
    assert code == 0 and "2 of 2 files are usable" in log, log
    assert (out / "train.csv.clean").read_text().splitlines() == lines


COLOUR_PATCHES = np.array([[220, 30, 40], [30, 200, 60], [40, 50, 210], [230, 220, 40]],
                          np.uint8)


def write_tagged_video(path, matrix, full_range):
    """Four flat saturated patches, converted to YUV with `matrix` ('itu709' or 'itu601') and
    the range asked for, and tagged so, as a camera writes its files."""
    import av
    frame = np.repeat(np.repeat(COLOUR_PATCHES.reshape(2, 2, 3), 32, 0), 48, 1)
    tags = dict(colorspace=1 if matrix == "itu709" else 6, color_range=2 if full_range else 1)
    with av.open(path, mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for tag, value in tags.items():
            setattr(stream.codec_context, tag, value)
        for i in range(8):
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=matrix, dst_color_range=2 if full_range else 1)
            yuv.pts = i
            out.mux(stream.encode(yuv))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("matrix, full_range", [("itu709", False), ("itu601", True)])
def test_prepared_videos_keep_the_colours_of_their_sources(tmp_path, matrix, full_range):
    """A BT.709 or full-range source decodes to its own colours, and so does the file that
    prepare_videos makes of it: the frames are scaled, not converted, and the file carries the
    source's colour tags (without them it read as BT.601 in TV range: 16-27 levels off)."""
    import video_io
    from tools import prepare_videos
    (tmp_path / "src").mkdir()
    source = write_tagged_video(str(tmp_path / "src" / "tagged.mp4"), matrix, full_range)
    listing = tmp_path / "train.csv"
    listing.write_text(f"{source} 0\n")
    assert prepare_videos.main([str(listing), str(tmp_path / "out"), "--workers", "1"]) == 0
    for path in (source, str(tmp_path / "out" / "tagged.mp4")):
        frames = video_io.read_clip(path, "pyav", lambda n: [0, n - 1]).astype(int)
        centres = frames[:, 16::32, 24::48].reshape(2, 4, 3)  # the middle of each patch
        assert np.abs(centres - COLOUR_PATCHES).max() <= 6, (path, centres[0])  # before: 16, 27


@pytest.mark.parametrize("rotation", [90, 180])
def test_prepare_videos_writes_a_video_stored_sideways_upright(tmp_path, rotation):
    """A phone's portrait video (stored sideways, with a display matrix) becomes an upright
    file with no display matrix, whose frames are the ones the loader reads from the source
    (before, it became a sideways file: its display matrix was dropped)."""
    import av

    import video_io
    from media import sideways_frames, write_video
    from tools import prepare_videos
    (tmp_path / "src").mkdir()
    source = write_video(str(tmp_path / "src" / "phone.mp4"), sideways_frames(),
                         rotation=rotation)
    listing = tmp_path / "train.csv"
    listing.write_text(f"{source} 0\n")
    assert prepare_videos.main([str(listing), str(tmp_path / "out"), "--workers", "1"]) == 0
    prepared = str(tmp_path / "out" / "phone.mp4")
    with av.open(prepared) as container:
        assert next(container.decode(video=0)).rotation == 0
    read = [video_io.read_clip(path, "pyav", lambda n: [0, 7]).astype(int)
            for path in (source, prepared)]
    assert read[0].shape == read[1].shape and np.abs(read[0] - read[1]).max() <= 6


def test_prepare_videos_cuts_each_segment_into_a_file_of_its_own(tmp_path):
    """A list of segments (EPIC-Kitchens'): each becomes a file of its own, overlapping ones
    too, in one pass over the video, with --stride 2 counted from the segment's start; the
    new list holds whole files with the labels as written, and the loader reads it. A segment
    starting after the video's end is named with why, by check_videos.py too. --task
    multi_label (Charades) keeps several labels; without it such a row is refused before any
    work."""
    import numpy as np

    import lists
    import video_io
    from media import frame_numbers, indexed_frames, write_video
    from tools import prepare_videos
    video = write_video(str(tmp_path / "src" / "long.mp4"), indexed_frames(60))
    listing = tmp_path / "segments.txt"
    listing.write_text("src/long.mp4 5 20 3\nsrc/long.mp4 12 59 1\nsrc/long.mp4 70 80 2\n")
    out = tmp_path / "out"
    assert prepare_videos.main([str(listing), str(out), "--stride", "2", "--workers", "1"]) == 1
    assert (out / "segments.txt").read_text().splitlines() == [
        "# frame_stride 2", "long_5_20.mp4 3", "long_12_59.mp4 1"]
    for name, expected in (("long_5_20", range(5, 21, 2)), ("long_12_59", range(12, 60, 2))):
        frames = video_io.decode_pyav(str(out / f"{name}.mp4"), np.arange)
        assert list(frame_numbers(frames)) == list(expected)
    assert (out / "segments.txt.failed.tsv").read_text().splitlines()[1:] == [
        f"{video} 70 80\tthe segment starts at frame 70, after the video's 60 frames"]
    entries = lists.read_list(str(out / "segments.txt"))
    assert entries.frame_stride == 2 and not entries.segments and len(entries) == 2
    code, log = run_script("tools/check_videos.py", str(listing), "--workers", "1")
    assert code == 1 and (tmp_path / "segments.txt.bad.tsv").read_text().splitlines()[1:] == [
        f"{video}\tits segment starts at frame 70, and the video has 60 frames"], log

    (tmp_path / "charades.txt").write_text("src/long.mp4 4,9\n")
    code, log = run_script("tools/prepare_videos.py", str(tmp_path / "charades.txt"),
                           str(tmp_path / "c"), "--workers", "1")
    assert code == 2 and "several labels: --task multi_label" in log, log
    assert prepare_videos.main([str(tmp_path / "charades.txt"), str(tmp_path / "c"),
                                "--task", "multi_label", "--workers", "1"]) == 0
    assert (tmp_path / "c" / "charades.txt").read_text() == "long.mp4 4,9\n"


def test_check_videos_eta_leaves_out_the_pools_start_up():
    """The first result comes after every worker imported its decoders (seconds); the rate
    counts from there, and only once enough files were done after it."""
    from tools.check_videos import rate_and_eta
    first = (1, 10.0)  # 1 file done at t = 10 s, after a 10 s start-up
    assert rate_and_eta(5, 1000, first, 10.5, min_files=8) == "eta: measuring"
    assert rate_and_eta(21, 1001, first, 12.0, min_files=8) == "10.0 files/s  eta 0:01:38"


def test_extract_features_names_broken_files_and_resumes(video_dir, tmp_path, monkeypatch,
                                                        capsys):
    """Features of every video of a list with a broken file in it; a run stopped after its
    first part goes on from there and ends with what an uninterrupted run writes; a part cut
    off, or made by another checkpoint, is made again with one line naming it."""
    import numpy as np

    from tools import extract_features
    listing = tmp_path / "list.txt"
    listing.write_text(f"{video_dir['clip0']} 0\n{video_dir['truncated']} 1\n"
                       f"{video_dir['clip1']}\n")
    checkpoint = save_random_student(tmp_path / "pretrained.pth")
    flags = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
             "--test_num_segment", "2", "--test_num_crop", "1", "--device", "cpu",
             "--num_workers", "0", "--chunk", "2"]
    whole = str(tmp_path / "whole.npz")
    assert extract_features.main([str(listing), checkpoint, whole, "--tokens", *flags]) == 0
    with np.load(whole) as out:
        assert out["features"].shape == (3, 192) and out["tokens"].shape == (3, 8, 192)
        assert out["ok"].tolist() == [True, False, True] and out["labels"].tolist() == [0, 1, -1]
        assert np.isnan(out["features"][1]).all() and np.isfinite(out["features"][[0, 2]]).all()
        assert out["paths"][1] == video_dir["truncated"]
        whole_features = out["features"]
    assert video_dir["truncated"] in (tmp_path / "whole.npz.failed.tsv").read_text()

    real, calls, stop_on = extract_features.engine.extract_features, [], [2]

    def stopped_after_one_part(*a, **k):
        calls.append(1)
        if len(calls) in stop_on:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extract_features.engine, "extract_features", stopped_after_one_part)
    resumed = str(tmp_path / "resumed.npz")
    with pytest.raises(KeyboardInterrupt):
        extract_features.main([str(listing), checkpoint, resumed, *flags])
    assert os.path.isfile(resumed + ".part00000.npz") and not os.path.isfile(resumed)
    assert extract_features.main([str(listing), checkpoint, resumed, *flags]) == 0
    assert len(calls) == 3  # the second run computed the second part only
    with np.load(resumed) as out:
        assert np.array_equal(out["features"], whole_features, equal_nan=True)
    assert not [p for p in os.listdir(tmp_path) if ".part" in p]

    def stop_after_the_first_part_then(*argv, cut=False):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            extract_features.main([str(listing), checkpoint, resumed, *flags])
        part = resumed + ".part00000.npz"
        if cut:  # as a copy or a full disk leaves it
            data = open(part, "rb").read()
            open(part, "wb").write(data[:len(data) // 2])
        calls.clear()
        stop_on.clear()
        assert extract_features.main([str(listing), *argv, resumed, *flags]) == 0
        stop_on.append(2)
        assert len(calls) == 2  # both parts made
        with np.load(resumed) as out:
            return out["features"]

    capsys.readouterr()
    features = stop_after_the_first_part_then(checkpoint, cut=True)
    assert np.array_equal(features, whole_features, equal_nan=True)
    assert "part00000.npz is unreadable (BadZipFile): it is made again" in capsys.readouterr().out
    other = save_random_student(tmp_path / "other.pth", seed=1)
    features = stop_after_the_first_part_then(other)
    assert "was made by another checkpoint, list or setting: it is made again" in (
        capsys.readouterr().out)
    assert not np.allclose(features[0], whole_features[0])  # not rows of the first model
