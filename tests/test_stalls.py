"""What stalls a run from outside, through the real CLI: a read that never returns (an
LD_PRELOAD shim makes open() of one file block in the kernel, as a stale NFS mount does),
warned about, timed out or signalled, then resumed; a loader worker killed mid-epoch."""
import os
import re
import shutil
import signal
import subprocess

import psutil
import pytest
import torch

import bad_files
import checkpoint
from conftest import ROOT, signal_every_process, write_list
from test_run_pretraining import TINY, cli, wait_for

pytestmark = pytest.mark.slow


def state_path(tmp_path):
    return str(tmp_path / "run" / checkpoint.LATEST)


@pytest.fixture(scope="module")
def hang_shim(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the LD_PRELOAD shim")
    library = str(tmp_path_factory.mktemp("shim") / "hang_open.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", library,
                    os.path.join(ROOT, "tests", "hang_shim", "hang_open.c"), "-ldl"], check=True)
    return library


def hanging_run(video_dir, tmp_path, hang_shim, *flags, wait=True):
    """4 good clips and one whose open() never returns, batch 1: 5 steps an epoch."""
    stale = tmp_path / "stale_mount_clip.mp4"
    os.symlink(video_dir["clip0"], stale)
    clips = [(video_dir[f"clip{i}"], 0) for i in range(4)]
    listing = write_list(tmp_path / "train.csv", clips[:1] + [(str(stale), 0)] + clips[1:])
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    argv = [*TINY, "--background", "video", "--data_path", listing, "--batch_size", "1",
            "--epochs", "1", "--warmup_epochs", "0", "--max_bad_fraction", "0.5",
            "--output_dir", str(tmp_path / "run"),
            *flags]
    env = {"LD_PRELOAD": hang_shim, "HANG_OPEN_MARKER": "stale_mount"}
    return argv, env, str(stale), order.index(1)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_read_that_never_returns_is_warned_timed_out_and_skipped_at_the_resume(
        video_dir, tmp_path, hang_shim, workers):
    argv, env, stale, hang_at = hanging_run(video_dir, tmp_path, hang_shim, "--num_workers",
                                            workers, "--data_warn_s", "1", "--data_timeout_s",
                                            "4")
    code, out = cli(*argv, env=env, timeout=120)
    assert code == 5, out
    reader = "the main process" if workers == "0" else "worker"
    assert re.search(rf"WARNING: no batch for \d+ s: {reader}.* has been reading {stale} for", out)
    line = out.strip().splitlines()[-1]
    assert line.startswith("error: no batch for ") and f"reading {stale} for" in line, line
    assert "listed in bad_files.tsv" in line and "run the same command to resume" in line, line
    assert [p for p, _ in bad_files.read_tsv(str(tmp_path / "run" / "bad_files.tsv"))] == [stale]
    assert f"saved epoch 1 batch {hang_at} to" in line, line  # every step before the hung read
    state = checkpoint.load_checkpoint(state_path(tmp_path))
    assert (state["epoch"], state["next_batch"]) == (0, hang_at) and hang_at == 2
    assert not [p for p in psutil.process_iter(["cmdline"])  # the workers were ended too
                if str(tmp_path / "run") in " ".join(p.info["cmdline"] or [])]
    code, out = cli(*argv, env=env, timeout=120)  # still hanging: it must not be opened again
    assert code == 0, out
    assert "1 unreadable files listed in" in out and "finished 1 epochs" in out, out
    assert f"resumed from {state_path(tmp_path)}: epoch 1, batch 2 (step 2)" in out, out


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_stop_signal_while_a_read_hangs_saves_within_seconds(video_dir, tmp_path, hang_shim,
                                                               workers):
    """With no workers the main thread itself is stuck in open(): only its signal handler's
    C part runs, and the watch learns of the signal through the wakeup fd."""
    argv, env, stale, hang_at = hanging_run(video_dir, tmp_path, hang_shim, "--num_workers",
                                            workers, "--data_warn_s", "1")
    proc = cli(*argv, env=env, wait=False, new_session=True)
    wait_for(str(tmp_path / "run" / "train.log"), "WARNING: no batch for", proc)
    signal_every_process(proc, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    line = out.strip().splitlines()[-1]
    reader = "the main process" if workers == "0" else r"worker \d"
    assert re.match(rf"SIGTERM received \d+ s while waiting for data; {reader} has been "
                    rf"reading {stale} for \d+ s; saved epoch 1 batch {hang_at} to ", line), line
    assert not os.path.exists(tmp_path / "run" / "bad_files.tsv")  # a stop, not a bad file
