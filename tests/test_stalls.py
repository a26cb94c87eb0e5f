"""What stalls or breaks a run from outside, through the real CLI: a read that never returns (an
LD_PRELOAD shim makes open() of one file block in the kernel, as a stale NFS mount does),
warned about, timed out or signalled, then resumed; a loader worker killed mid-epoch, shared
memory too small; a TensorBoard folder that fills up, the output folder removed."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

import bad_files
import checkpoint
import distributed
import guard
import run_smile_pretraining as run
import stop_signals
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
def test_a_read_that_never_returns_is_warned_timed_out_and_skipped_once_it_hung_twice(
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
    assert "listed in bad_files.tsv (the resume reads it once more; one that hangs twice is " \
        "left out)" in line and "run the same command to resume" in line, line
    assert [p for p, _ in bad_files.read_tsv(str(tmp_path / "run" / "bad_files.tsv"))] == [stale]
    assert f"saved epoch 1 batch {hang_at} to" in line, line  # every step before the hung read
    state = checkpoint.load_checkpoint(state_path(tmp_path))
    assert (state["epoch"], state["next_batch"]) == (0, hang_at) and hang_at == 2
    assert not [p for p in psutil.process_iter(["cmdline"])  # the workers were ended too
                if str(tmp_path / "run") in " ".join(p.info["cmdline"] or [])]
    if workers != "0":
        return  # the resume is the same with workers
    # the mount may have recovered: the resume reads the file once more, and it hangs again
    code, out = cli(*argv, env=env, timeout=120)
    assert code == 5 and "1 files whose read hung once are read again" in out, out
    assert [p for p, _ in bad_files.read_tsv(str(tmp_path / "run" / "bad_files.tsv"))] == [
        stale, stale]
    code, out = cli(*argv, env=env, timeout=120)  # hung twice: it must not be opened again
    assert code == 0, out
    assert "1 unreadable files listed in" in out and "finished 1 epochs" in out, out
    assert f"resumed from {state_path(tmp_path)}: epoch 1, batch 2 (step 2)" in out, out


@pytest.mark.parametrize("workers", ["0"])
def test_a_stop_signal_while_a_read_hangs_saves_within_seconds(video_dir, tmp_path, hang_shim,
                                                               workers):
    """With no workers the main thread itself is stuck in open(): only its signal handler's
    C part runs, and the watch learns of the signal through the wakeup fd (with workers the
    main thread waits on their queue and its handler runs: the easier case)."""
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


def test_the_torch_internals_the_run_relies_on_are_there():
    """distributed.unwatch_workers and stop_workers use a DataLoader iterator's private
    members; launch.py replaces torchrun's signal handler and shortens its exit barrier. A
    torch upgrade that renames them fails here, not in a week-long run."""
    import inspect

    from torch.distributed.elastic.agent.server import local_elastic_agent
    from torch.distributed.elastic.multiprocessing import api as elastic_api
    from torch.utils.data._utils import signal_handling

    loader = torch.utils.data.DataLoader(list(range(4)), num_workers=1)
    batches = iter(loader)
    try:
        assert batches._worker_pids_set is True and callable(batches._shutdown_workers)
        assert all(worker.is_alive() for worker in batches._workers)  # worker_death
        assert callable(signal_handling._remove_worker_pids)
    finally:
        batches._shutdown_workers()
    assert callable(elastic_api._terminate_process_handler)
    assert "exit_barrier_timeout" in inspect.signature(
        local_elastic_agent.LocalElasticAgent.__init__).parameters


def test_a_loader_worker_killed_mid_epoch_saves_and_exits_for_a_requeue(tmp_path):
    argv = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "1",
            "--warmup_epochs", "0", "--num_workers", "2", "--output_dir", str(tmp_path / "run")]
    proc = cli(*argv, wait=False)
    wait_for(str(tmp_path / "run" / "train.log"), "epoch 1/1 step 3/12", proc)
    psutil.Process(proc.pid).children()[0].kill()  # as the out-of-memory killer does
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 5, out
    line = out.strip().splitlines()[-1]
    assert re.match(r"error: a data loader worker died \(DataLoader worker \(pid\(s\) \d+\) "
                    r"exited unexpectedly\); when the kernel log .* saved epoch 1 batch \d+ to ",
                    line), line
    assert "Traceback" not in out
    saved = checkpoint.load_checkpoint(state_path(tmp_path))["next_batch"]
    assert 3 <= saved < 12  # every update until the worker died (resumes: as any checkpoint)


class _WorkerKilledAfterFirstBatch(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 1:
            time.sleep(0.5)  # batch 0 is in the queue; its memory is handed over on reading
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(256)


def test_a_worker_killed_while_its_batch_is_handed_over_reads_as_its_death():
    """The main process takes a batch's shared memory over from its worker when it reads it.
    A worker whose sockets are closed but which is not yet reaped (torch looks at that moment)
    gives a reset or refused connection, which torch raises as it is: CI saw the run exit 1
    with that traceback. The watch turns it into the worker death failure_line knows."""
    loader = torch.utils.data.DataLoader(_WorkerKilledAfterFirstBatch(), num_workers=1)
    batches = distributed.start_workers(loader)
    worker, looks = batches._workers[0], []
    real_is_alive = worker.is_alive
    worker.is_alive = lambda: looks.append(1) or len(looks) == 1 or real_is_alive()
    try:
        time.sleep(1.5)
        watch = guard.DataWatch(guard.ReadBoard(1), str, 60, 600, stop_signals.stop_flag(), None)
        with pytest.raises(RuntimeError, match=r"^DataLoader worker \(pid\(s\) \d+\) exited "
                           r"unexpectedly$") as raised:
            next(watch.batches(batches))
        assert isinstance(raised.value.__context__, (ConnectionError, EOFError, FileNotFoundError))
    finally:
        distributed.stop_workers(batches)


def test_shared_memory_too_small_for_the_workers_is_one_line(tmp_path):
    """A /dev/shm of 256 kB (a container's default is 64 MB, a batch here about 200 kB)."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (a mount namespace) to shrink /dev/shm")
    argv = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--input_size", "64",
            "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "2",
            "--output_dir", str(tmp_path)]
    launcher = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs /dev/shm && '
                'exec "$@"', "sh", sys.executable]
    code, out = cli(*argv, launcher=launcher, timeout=120)
    assert code == 1, out
    line = out.strip().splitlines()[-1]
    assert line.startswith("error: shared memory ran out") and "lower --num_workers" in line, line
    assert "Traceback" not in out


def test_a_tensorboard_folder_that_fills_up_is_left_and_training_finishes(tmp_path):
    """--log_dir on its own file system of 8 kB (a quota): one warning, no traceback, every
    epoch trained and saved."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (a mount namespace) for a tiny file system")
    log_dir = tmp_path / "tb"
    log_dir.mkdir()
    argv = [*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "2",
            "--log_dir", str(log_dir), "--output_dir", str(tmp_path / "run")]
    launcher = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=8k tmpfs {log_dir} && '
                'exec "$@"', "sh", sys.executable]
    code, out = cli(*argv, launcher=launcher, timeout=120)
    assert code == 0, out
    assert out.count(f"WARNING: TensorBoard cannot write to {log_dir} (No space left on device") \
        == 1, out
    assert "Traceback" not in out and "finished 2 epochs" in out
    assert checkpoint.load_checkpoint(str(tmp_path / "run" / "checkpoint-1.pth"))["epoch"] == 2


def test_the_output_folder_removed_mid_run_is_one_line(tmp_path):
    argv = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "2",
            "--output_dir", str(tmp_path / "run")]
    proc = cli(*argv, wait=False)
    wait_for(str(tmp_path / "run" / "train.log"), "epoch 1/2 step 2/12", proc)
    shutil.rmtree(tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 4, out
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"error: could not write {tmp_path / 'run'}") and (
        f"{tmp_path / 'run'} no longer exists (removed while the run was going?)") in line, line
    assert "Traceback" not in out


def test_write_failures_name_their_own_cause(tmp_path):
    def failure(errno_code):
        err = OSError(errno_code, os.strerror(errno_code))
        return str(checkpoint.write_error(str(tmp_path / checkpoint.LATEST), err, lambda: 2**30))

    denied = failure(13)
    assert "Permission denied (errno EACCES); make" in denied and "writable again" in denied
    assert "free" not in denied and "intact" not in denied  # nothing was saved there yet
    (tmp_path / checkpoint.LATEST).write_bytes(b"")
    full = failure(28)
    assert "No space left on device" in full and "it needs 1.00 GiB" in full
    assert "The last checkpoint there is intact: free space (or raise the quota)" in full


def test_a_run_refused_before_its_first_step_leaves_nothing(tmp_path):
    not_a_checkpoint = tmp_path / "stage1.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    code, out = cli(*TINY, "--first_stage_path", str(not_a_checkpoint), "--output_dir",
                    str(tmp_path / "run"))
    assert code == 2 and "error:" in out, out
    assert not os.path.exists(tmp_path / "run")
    log_file = tmp_path / "tb_file"
    log_file.write_text("")
    with pytest.raises(ValueError, match=f"--log_dir {log_file} is a file, not a folder"):
        run.check_args(run.parse_args([*TINY, "--log_dir", str(log_file)]))  # before any work


def test_a_requeued_command_that_still_names_resume_goes_on_from_its_own_checkpoint(tmp_path):
    """`--resume A/checkpoint-0.pth` stays in the job script: the second start of the job
    resumes from what it wrote itself in --output_dir, not from A again."""
    common = [*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--warmup_epochs", "0"]
    code, out = cli(*common, "--epochs", "1", "--output_dir", str(tmp_path / "a"))
    assert code == 0, out
    requeued = [*common, "--resume", str(tmp_path / "a" / "checkpoint-0.pth"), "--output_dir",
                str(tmp_path / "b")]
    code, out = cli(*requeued, "--epochs", "2")
    assert code == 0 and "epoch 2, batch 0 (step 4)" in out, out
    code, out = cli(*requeued, "--epochs", "3")  # the job's next start, a longer schedule
    assert code == 0, out
    assert f"WARNING: resuming from {tmp_path / 'b' / checkpoint.LATEST} (step 8), which this " \
           f"run wrote after it started from --resume {tmp_path / 'a' / 'checkpoint-0.pth'} " \
           "(step 4)" in out, out
    assert "epoch 3, batch 0 (step 8)" in out and "finished 3 epochs" in out
