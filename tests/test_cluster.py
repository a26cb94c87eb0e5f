"""What a cluster does to a run, through the real CLI: every process signalled again and again
(torchrun, two torchrun nodes), a disk that fills up, two runs in one folder, a resume with
changed arguments, a stop at an epoch's last step."""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest

import checkpoint
import outputs
import run_smile_pretraining as run
import stop_signals
import guard
import training
from conftest import ROOT, signal_every_process, write_list
from test_run_pretraining import TINY, assert_same_weights, cli, final_weights, wait_for

pytestmark = pytest.mark.slow  # every test here runs the CLI
TWO_RANKS = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "2"]


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory):
    """An uninterrupted 2-rank run: 48 clips, 2 x 4 per step -> 6 steps per epoch."""
    out = str(tmp_path_factory.mktemp("two_ranks"))
    code, log = cli(*TWO_RANKS, "--output_dir", out, processes=2)
    assert code == 0, log
    return out


def test_repeated_sigterm_to_every_process_of_a_torchrun_job(two_rank_reference, tmp_path):
    """SLURM's scancel signals launcher, ranks and workers; torchrun adds its own copy. Three
    rounds of that, mid-epoch: every rank saves, and the same command resumes to the weights
    of the uninterrupted run."""
    args = [*TWO_RANKS, "--num_workers", "2", "--output_dir", str(tmp_path)]
    proc = cli(*args, processes=2, wait=False)
    wait_for(str(tmp_path / "train.log"), "epoch 1/2 step 2/6", proc)
    signal_every_process(proc, signal.SIGTERM, times=3)
    out, _ = proc.communicate(timeout=300)
    assert "SIGTERM received: saved epoch 1 batch" in out, out
    assert "killed by signal" not in out and "exited unexpectedly" not in out
    # plain torchrun ends with its own SignalException after the ranks saved (README)
    assert proc.returncode == 1 and "SignalException" in out
    state = checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))
    assert state["epoch"] == 0 and 0 < state["next_batch"] < 6
    code, out = cli(*args, processes=2)
    assert code == 0, out
    assert f"epoch 1, batch {state['next_batch']} (step {state['next_batch']})" in out
    assert_same_weights(final_weights(str(tmp_path), 2), final_weights(two_rank_reference, 2))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_stopped_one_lost_and_resumed(two_rank_reference, tmp_path):
    """Two launch.py agents (--nnodes 2, c10d rendezvous on localhost), one rank each: every
    process of both signalled twice, both exit 0 after the save; resumed, the second node
    dies (agent, rank and worker SIGKILLed, as a node that loses power) and the first ends
    with one line and exit 5 after saving alone; resumed again, the weights are those of the
    uninterrupted run."""
    args = [*TWO_RANKS, "--num_workers", "1", "--output_dir", str(tmp_path)]

    def nodes():
        port = _free_port()
        launcher = [sys.executable, "launch.py", "--nnodes", "2", "--nproc_per_node", "1",
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
                    "--rdzv_id", "two-nodes"]
        return [cli(*args, wait=False, launcher=launcher) for _ in range(2)]

    first = nodes()
    wait_for(str(tmp_path / "train.log"), "epoch 1/2 step 2/6", first[0])
    for _ in range(2):
        for proc in first:
            signal_every_process(proc, signal.SIGTERM, interval=0.1)
    logs = [proc.communicate(timeout=300)[0] for proc in first]
    assert [proc.returncode for proc in first] == [0, 0], logs
    assert any("SIGTERM received: saved epoch 1 batch" in log for log in logs), logs
    state = checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))
    assert state["epoch"] == 0 and 0 < state["next_batch"] < 6

    second = nodes()  # the first agent hosts the rendezvous store: the second node dies
    wait_for(str(tmp_path / "train.log"), "epoch 2/2 step 2/6", second[0])
    signal_every_process(second[1], signal.SIGKILL, interval=0)
    out = second[0].communicate(timeout=120)[0]
    assert second[0].returncode == 5, out
    # the rank sees its peer go first (error: ...), or its agent's SIGTERM (the agent lost the
    # rendezvous store its node hosted), then the peer: one line either way, after a save
    lost = [line for line in out.splitlines() if "lost contact with another process" in line]
    assert len(lost) == 1 and re.search(r"\(rank [01] on host", lost[0]), out
    assert "saved epoch 2 batch" in lost[0] and "run the same command to resume" in lost[0], out
    # the agent that hosts the rendezvous may die with its node: either way one line, exit 5
    assert re.search(r"launch.py: (rank [01] ended with exit code 5|lost the other nodes' "
                     r"rendezvous)", out), out
    assert "Traceback" not in out and "ChildFailedError" not in out
    assert checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))["epoch"] == 1
    second[1].communicate()

    third = nodes()
    logs = [proc.communicate(timeout=300)[0] for proc in third]
    assert [proc.returncode for proc in third] == [0, 0], logs
    assert_same_weights(final_weights(str(tmp_path), 2), final_weights(two_rank_reference, 2))


def test_a_frozen_rank_ends_the_others_after_the_collective_timeout(two_rank_reference,
                                                                     tmp_path):
    """SIGSTOP of one of 2 ranks (as a rank stuck in a driver call): the other gives up after
    --dist_timeout_s with one line and exit 5, saving alone; the same command then ends with
    the uninterrupted run's weights."""
    args = [*TWO_RANKS, "--dist_timeout_s", "4", "--output_dir", str(tmp_path)]
    launcher = [sys.executable, "launch.py", "--standalone", "--nproc_per_node", "2"]
    proc = cli(*args, wait=False, launcher=launcher)
    wait_for(str(tmp_path / "train.log"), "epoch 1/2 step 2/6", proc)
    ranks = sorted(psutil.Process(proc.pid).children(), key=lambda p: p.pid)
    frozen = next(p for p in ranks if p.environ().get("RANK") == "1")
    frozen.suspend()
    try:
        wait_for(str(tmp_path / "train.log"), "lost contact with another process", proc)
    finally:
        frozen.resume()  # torchrun's agent then ends it with SIGTERM
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 5, out
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert error and "froze past --dist_timeout_s 4" in error[0], out
    assert "saved epoch 1" in error[0], out
    code, out = cli(*args, launcher=launcher)
    assert code == 0, out
    assert_same_weights(final_weights(str(tmp_path), 2), final_weights(two_rank_reference, 2))


def test_launcher_passes_on_a_rank_exit_code(tmp_path):
    code, out = cli(*TINY, "--num_frames", "15", "--output_dir", str(tmp_path),
                    launcher=[sys.executable, "launch.py", "--standalone", "--nproc_per_node",
                              "2"])
    assert code == 2, out
    assert "error: --num_frames 15 is not divisible" in out
    # both ranks fail by themselves: the launcher names the first to end
    assert re.match(r"launch.py: rank [01] ended with exit code 2 \(its own lines above say "
                    r"why\); 2 of the ranks failed$", out.strip().splitlines()[-1]), out
    assert "Traceback" not in out and "ChildFailedError" not in out


def test_a_full_disk_costs_only_the_failed_save(tmp_path):
    """Epoch 2's save meets a file size limit (as a full disk or quota would stop it): one
    line, exit 4, no temporary file, epoch 1's checkpoint intact; with room again the same
    command resumes from it."""
    args = [*TINY, "--num_synthetic_clips", "8", "--batch_size", "4", "--warmup_epochs", "0",
            "--output_dir", str(tmp_path)]
    code, out = cli(*args, "--epochs", "1")
    assert code == 0, out
    size = os.path.getsize(tmp_path / checkpoint.LATEST)
    code, out = cli(*args, "--epochs", "2", file_size_limit=size // 2)
    assert code == 4, out
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"error: could not write {tmp_path / checkpoint.LATEST}: File too "
                           "large") and f"it needs {checkpoint.gib(size)}" in line, line
    assert "The last checkpoint there is intact" in line and "Traceback" not in out
    assert not [name for name in os.listdir(tmp_path) if ".tmp." in name]
    assert checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))["epoch"] == 1
    assert "WriteError" in open(tmp_path / "train.log").read()  # the traceback, for who asks
    code, out = cli(*args, "--epochs", "2")
    assert code == 0 and "epoch 2, batch 0 (step 2)" in out, out


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    args = [*TINY, "--num_synthetic_clips", "400", "--batch_size", "4", "--epochs", "2",
            "--output_dir", str(tmp_path)]  # 200 steps: long enough to meet the second run
    first = cli(*args, wait=False)
    wait_for(str(tmp_path / "train.log"), "epoch 1/2 step 1/100", first)
    code, out = cli(*args)
    assert code == 2, out
    line = out.strip().splitlines()[-1]
    assert f"is in use by another run (host {socket.gethostname()}, PID {first.pid}, started" in (
        line) and "give this run another --output_dir" in line, line
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "log.txt")] == [0, 1]
    assert open(tmp_path / "train.log").read().count("steps/epoch") == 1


def test_a_resume_keeps_what_the_run_learns_from(video_dir, tmp_path):
    """The three kinds of argument (README): what the run learns from is refused, the list by
    content; the schedule warns and is kept in the history; the machinery passes. A changed
    list goes on on purpose with --new_data_list, from the next epoch."""
    clips = [(video_dir[f"clip{i}"], 0) for i in range(4)]
    listing = write_list(tmp_path / "train.csv", clips)
    out = tmp_path / "out"
    args = [*TINY, "--background", "video", "--data_path", listing, "--batch_size", "2",
            "--warmup_epochs", "0", "--output_dir", str(out)]
    code, log = cli(*args, "--epochs", "1")
    assert code == 0, log

    code, log = cli(*args, "--epochs", "2", "--mask_ratio", "0.5")
    assert code == 2 and "--mask_ratio 0.8 (now 0.5)" in log.strip().splitlines()[-1], log
    write_list(tmp_path / "train.csv", clips[::-1])  # same files, another order
    code, log = cli(*args, "--epochs", "2")
    assert code == 2 and "is not the list this run trained on (4 entries now, 4 then" in log, log

    write_list(tmp_path / "train.csv", clips)
    code, log = cli(*args, "--epochs", "2", "--lr", "2e-2", "--num_workers", "1")
    assert code == 0, log
    assert "WARNING: resuming with --epochs 2 (the run had 1)" in log
    assert "WARNING: resuming with --lr 0.02 (the run had 0.01)" in log
    assert "num_workers" not in log
    assert json.load(open(out / "args.json"))["lr"] == 1e-2  # what the run started with
    history = [json.loads(x) for x in open(out / outputs.HISTORY)]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["schedule"] == {"epochs": [1, 2], "lr": [0.01, 0.02]}

    write_list(tmp_path / "train.csv", clips[:2] + clips[:2])  # cleaned and refilled
    code, log = cli(*args, "--epochs", "3", "--lr", "2e-2", "--new_data_list")
    assert code == 0, log
    assert "--new_data_list: 4 videos now (4 before), 2 steps per epoch; training goes on at " \
           "epoch 3, step 4 of 6" in log
    assert checkpoint.load_checkpoint(str(out / "checkpoint-2.pth"))["history"][-1][
        "data_list"][1]["entries"] == 4


def test_a_stop_at_an_epochs_last_step_saves_the_epoch(tmp_path, monkeypatch):
    """The signal comes during the last step of epoch 1: the epoch is saved whole (and logged
    once); the resumed run starts at epoch 2 and its epoch 2 has a loss."""
    flag, real_loss = stop_signals.stop_flag(), run.train_loss

    def loss(*a, **k):
        loss.calls += 1
        if loss.calls == 4:  # 16 clips, batch 4: the last step of epoch 1
            flag.signal = "SIGTERM"
        return real_loss(*a, **k)

    loss.calls = 0
    monkeypatch.setattr(run, "train_loss", loss)
    argv = [*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "2",
            "--output_dir", str(tmp_path)]
    try:
        assert run.main(run.parse_args(argv)) == 0
    finally:
        flag.signal = None
        outputs.release_output_dirs()  # as the process's exit would
    state = checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))
    assert (state["epoch"], state["next_batch"]) == (1, 0)
    code, log = cli(*argv)
    assert code == 0 and "epoch 2, batch 0 (step 4)" in log and "loss nan" not in log, log
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "log.txt")] == [0, 1]


def test_every_uncaught_error_reaches_train_log(tmp_path):
    args = run.parse_args([*TINY, "--output_dir", str(tmp_path)])

    def main(args):
        outputs.open_output_dir(args, training.distributed.Dist())
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        guard.run_cli(main, args, lambda a: None)
    assert "ZeroDivisionError: a bug" in open(tmp_path / "train.log").read()



def test_a_stop_mid_accumulation_saves_at_the_next_update(tmp_path, monkeypatch):
    """--update_freq 2: a signal during the first batch of an update is honoured after the
    second, so the checkpoint never holds half an accumulated gradient; the resumed run ends
    with the weights of an uninterrupted one."""
    flag, real_loss = stop_signals.stop_flag(), run.train_loss

    def loss(*a, **k):
        loss.calls += 1
        if loss.calls == 3:  # batch 3 of 8: the first half of the second update
            flag.signal = "SIGTERM"
        return real_loss(*a, **k)

    loss.calls = 0
    monkeypatch.setattr(run, "train_loss", loss)
    argv = [*TINY, "--num_synthetic_clips", "32", "--batch_size", "4", "--update_freq", "2",
            "--epochs", "2", "--output_dir", str(tmp_path / "stopped")]
    try:
        assert run.main(run.parse_args(argv)) == 0
    finally:
        flag.signal = None
        outputs.release_output_dirs()
    state = checkpoint.load_checkpoint(str(tmp_path / "stopped" / checkpoint.LATEST))
    assert (state["epoch"], state["next_batch"]) == (0, 4)
    code, log = cli(*argv)
    assert code == 0, log
    code, log = cli(*argv[:-1], str(tmp_path / "whole"))
    assert code == 0, log
    assert_same_weights(final_weights(str(tmp_path / "stopped"), 2),
                        final_weights(str(tmp_path / "whole"), 2))


def test_a_worker_dies_only_of_the_sigterm_that_ends_it():
    """A DataLoader worker's handler can run late (after a long C call), inside the window in
    which the loader ends its workers: a late Ctrl-C or SLURM signal must not kill it there
    (torch would raise 'worker killed by signal' instead of the run saving); SIGTERM, what
    torch and multiprocessing end a worker with, does."""
    script = """
import os, signal, sys, time
import stop_signals
flag = stop_signals.stop_flag()
pid = os.fork()
if pid == 0:
    while True:
        time.sleep(0.01)
with flag.shutting_down():
    for sig in (signal.SIGINT, signal.SIGUSR1):
        os.kill(pid, sig)
        time.sleep(0.3)
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            sys.exit(f"the worker died of {signal.Signals(sig).name}")
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
print(signal.Signals(os.WTERMSIG(status)).name)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "SIGTERM"), result.stderr


def test_a_worker_that_dies_while_the_loader_ends_it_is_no_error():
    """SLURM's SIGTERM reaches a worker's handler only once the loader is ending it (after a
    long C call): the worker dies, and that must not raise in the main process."""
    script = """
import os, signal, time
import torch
from stop_signals import installed
import distributed
loader = torch.utils.data.DataLoader(range(64), batch_size=1, num_workers=2,
                                     worker_init_fn=distributed.seed_worker)
batches = distributed.start_workers(loader)
next(batches)
shutdown = batches._shutdown_workers

def late_sigterm_then_shutdown():
    os.kill(batches._workers[0].pid, signal.SIGTERM)
    time.sleep(1)  # the worker dies of it; its SIGCHLD reaches this process
    shutdown()

batches._shutdown_workers = late_sigterm_then_shutdown
distributed.stop_workers(batches)
print("ended", batches._workers[0].exitcode)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"ended {-signal.SIGTERM}"), (
        result.stderr)


def test_a_stop_signal_while_a_collective_waits_for_a_frozen_peer(tmp_path):
    """SLURM's SIGTERM comes while rank 1 is frozen and rank 0 waits for it inside a step:
    rank 0 saves its last completed update after 20 s in the step and exits 0; the frozen
    rank, let go, meets its gone peer after its own signal and exits 0 too."""
    args = [*TWO_RANKS, "--output_dir", str(tmp_path)]
    proc = cli(*args, wait=False, launcher=[sys.executable, "launch.py", "--standalone",
                                            "--nproc_per_node", "2"])
    wait_for(str(tmp_path / "train.log"), "epoch 1/2 step 2/6", proc)
    ranks = psutil.Process(proc.pid).children()
    frozen = next(p for p in ranks if p.environ().get("RANK") == "1")
    frozen.suspend()
    try:
        proc.send_signal(signal.SIGTERM)  # launch.py passes it on to both ranks
        wait_for(str(tmp_path / "train.log"), "in a step (a collective waiting for a peer?)",
                 proc, timeout=60)
    finally:
        frozen.resume()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    line = next(x for x in out.splitlines() if "in a step (a collective" in x)
    assert re.match(r"SIGTERM received 2\d s in a step \(a collective waiting for a peer\?\); "
                    r"saved epoch 1 batch \d to ", line), line
    state = checkpoint.load_checkpoint(str(tmp_path / checkpoint.LATEST))
    assert state["epoch"] == 0 and 2 <= state["next_batch"] < 6
