"""The benchmarks still run (their figures are read by people, not asserted): a tiny run of
each prints its table."""
import numpy as np
import pytest

from conftest import run_script, write_list


@pytest.mark.slow
def test_bench_data_prints_every_pipeline(video_dir, tmp_path):
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(2)])
    code, out = run_script("bench/bench_data.py", "--list", listing, "--videos", "2", "--samples",
                           "2", "--rounds", "1", "--repeats", "2", "--objects", "procedural",
                           "--decoders", "pyav")
    assert code == 0, out
    assert "yours: 2 videos, 80x64 at 25 fps" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("yours ")]
    assert [(row[2], row[3]) for row in rows] == [("decode", "pyav"), ("workers", "2"),
                                                  ("device", "2"), ("dev-dec", "2")]
    assert float(rows[-1][5]) > 0  # the training process's decode and render
    assert all(float(row[-2]) > 0 for row in rows)  # cores for 212 clips/s


def test_footage_frames_move_and_carry_grain():
    from tools.synthetic_videos import footage_frames
    frames = footage_frames(6, 64, 48, seed=1)
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    assert (footage_frames(6, 64, 48, seed=1) == frames).all()  # seeded
    steps = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 2).all()  # the camera moves and the grain changes every frame


@pytest.mark.slow
def test_bench_pretrain_step_runs_a_tiny_step():
    code, out = run_script("bench/bench_pretrain_step.py", "--steps", "1", "--model",
                           "pretrain_videomae_tiny_patch16_224", "--teacher_model",
                           "clip_vit_tiny", "--num_frames", "4", "--input_size", "32",
                           "--batch_size", "2", "--device", "cpu")
    assert code == 0 and "GFLOPs per clip" in out, out
