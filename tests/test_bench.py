"""The benchmarks still run (their figures are read by people, not asserted): a tiny run of
each prints its table."""
import pytest

from conftest import run_script


@pytest.mark.slow
def test_bench_data_prints_every_pipeline():
    code, out = run_script("bench/bench_data.py", "--videos", "1", "--samples", "2", "--rounds",
                           "1", "--repeats", "2", "--objects_count", "3", "--decoders", "pyav")
    assert code == 0, out
    assert "stride-baked: 1 videos, 456x256 at 7.5 fps" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(
        ("original ", "prepared ", "stride-baked "))]
    assert {(row[0], row[2]) for row in rows} == {
        (files, pipeline) for files in ("original", "prepared", "stride-baked")
        for pipeline in ("decode", "workers", "device")}
    assert all(float(row[-2]) > 0 for row in rows)  # cores for 212 clips/s


@pytest.mark.slow
def test_bench_pretrain_step_runs_a_tiny_step():
    code, out = run_script("bench/bench_pretrain_step.py", "--steps", "1", "--model",
                           "pretrain_videomae_tiny_patch16_224", "--teacher_model",
                           "clip_vit_tiny", "--num_frames", "4", "--input_size", "32",
                           "--batch_size", "2", "--device", "cpu")
    assert code == 0 and "GFLOPs per clip" in out, out
