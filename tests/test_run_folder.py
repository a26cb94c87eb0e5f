"""What a cluster does to a run, in process: repeated stop signals, workers that outlive them,
one writer per folder, a full disk, a resume with changed arguments, a list with a BOM."""
import argparse
import errno
import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

import checkpoint
import distributed
import lists
import outputs
import stop_signals
from errors import UsageError, WriteError


# ---------------------------------------------------------------- stop signals
def test_repeated_stop_signals_keep_the_first_and_kill_nothing():
    flag = stop_signals.stop_flag()
    saved = flag.signal
    try:
        flag.signal = None
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), sig)
            time.sleep(0.01)
        assert flag.signal == "SIGUSR1"
        flag.signal = None
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        flag.time -= stop_signals.INTERRUPT_AGAIN_AFTER_S  # a second Ctrl-C, later, not at a
        os.kill(os.getpid(), signal.SIGINT)  # terminal (pytest's stdin): still only recorded
        time.sleep(0.01)
        assert flag.signal == "SIGINT"
    finally:
        flag.signal = saved


class SlowSamples(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, index):
        time.sleep(0.05)
        return torch.tensor(index)


def test_workers_outlive_any_number_of_stop_signals_and_still_end_on_request():
    """Every worker gets SIGTERM three times mid-epoch: the epoch completes; the loader's own
    shutdown then ends them, also one that is busy past torch's grace period."""
    stop_signals.stop_flag()
    loader = torch.utils.data.DataLoader(SlowSamples(), batch_size=2, num_workers=2,
                                         worker_init_fn=distributed.seed_worker)
    batches = distributed.start_workers(loader)
    seen = [next(batches)]
    workers = [w.pid for w in batches._workers]
    for _ in range(3):
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.05)
    seen += list(batches)
    assert torch.cat(seen).tolist() == list(range(40))
    batches = distributed.start_workers(loader)
    next(batches)
    workers = batches._workers
    distributed.stop_workers(batches)
    assert not any(w.is_alive() for w in workers)


# ---------------------------------------------------------------- one writer per folder
def _hold(folder, ready, release):
    outputs.claim_output_dir(folder)
    ready.set()
    release.wait(30)


def test_a_folder_has_one_writer_and_a_killed_holder_blocks_nothing(tmp_path):
    folder = str(tmp_path)
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(folder, ready, release))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(UsageError) as info:
        outputs.claim_output_dir(folder)
    assert f"PID {holder.pid}, started" in str(info.value) and "another --output_dir" in str(
        info.value) and "\n" not in str(info.value)
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the kernel drops the lock
    holder.join()
    outputs.claim_output_dir(folder)
    assert f"PID {os.getpid()}," in open(os.path.join(folder, ".lock")).read()


# ---------------------------------------------------------------- a full disk
def test_a_failed_save_removes_its_file_keeps_the_last_and_says_one_line(tmp_path, monkeypatch):
    path = str(tmp_path / checkpoint.LATEST)
    checkpoint.save_checkpoint(path, {"w": torch.zeros(1000)})

    def full_disk(state, f):
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # as torch's writer reports it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError) as info:
        checkpoint.save_checkpoint(path, {"w": torch.ones(2**20)})
    line = str(info.value)
    assert "\n" not in line and "No space left on device (errno ENOSPC)" in line
    assert f"it needs 4.0 MiB and {tmp_path} has" in line and "run the same command" in line
    assert os.listdir(tmp_path) == [checkpoint.LATEST]  # no temporary file left
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["w"].shape == (1000,)


def test_free_space_is_checked_against_the_measured_checkpoint(tmp_path, monkeypatch, caplog):
    model = torch.nn.Linear(100, 10)  # 1010 weights
    optimizer = torch.optim.AdamW(model.parameters())
    assert checkpoint.training_state_bytes(model, optimizer) == 3 * 1010 * 4  # + 2 moments
    model(torch.ones(1, 100)).sum().backward()
    optimizer.step()  # now the moments exist and are counted as they are
    assert checkpoint.training_state_bytes(model, optimizer) == 3 * 1010 * 4 + 2 * 4  # steps
    mib = 2**20
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda folder: type(
        "Usage", (), {"free": 300 * mib}))
    with caplog.at_level("INFO", logger="smile"):
        outputs.check_free_space(str(tmp_path), 100 * mib, 2)
    assert "fewer than two checkpoints" not in caplog.text  # but not 2 + 2 numbered ones:
    assert "has 0.29 GiB free, the numbered checkpoints to come need 0.39 GiB" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="smile"):
        outputs.check_free_space(str(tmp_path), 160 * mib, 0)
    assert "room for fewer than two checkpoints of 160.0 MiB (0.29 GiB free)" in caplog.text


# ---------------------------------------------------------------- a resume is the same run
def _args(**changes):
    values = dict(stage=1, model="m", mask_ratio=0.8, lr=1.5e-4, epochs=10, batch_size=8,
                  total_batch_size=16, num_workers=2, print_freq=20, data_path="a.csv",
                  new_data_list=False, vis_freq=None)
    return argparse.Namespace(**{**values, **changes})


LIST = {"digest": "aaaa", "entries": 100}


@pytest.mark.parametrize("changes,refused", [
    (dict(mask_ratio=0.5), "--mask_ratio 0.8 (now 0.5)"),  # what it learns from
    (dict(model="n", seed=1), "--model m (now n)"),  # a flag the old run lacks is not compared
    (dict(stage=2), "out holds a stage-1 run and this is stage 2"),
])
def test_a_change_in_what_the_run_learns_from_is_refused(changes, refused):
    saved = {"args": vars(_args()), "data_list": LIST}
    with pytest.raises(checkpoint.CheckpointError) as info:
        outputs.check_same_run("out/checkpoint-latest.pth", saved, _args(**changes), LIST)
    assert refused in str(info.value) and "\n" not in str(info.value)


def test_a_renamed_value_is_the_same_run():
    """Checkpoints written before --teacher_input_norm clip was renamed 'teacher' resume."""
    saved = {"args": vars(_args(teacher_input_norm="clip")), "data_list": LIST}
    changes = outputs.check_same_run("out/c.pth", saved, _args(teacher_input_norm="teacher"),
                                     LIST)
    assert changes == dict(schedule={}, machinery={}, data_list=None)


def test_schedule_changes_warn_and_machinery_is_silent(caplog):
    saved = {"args": vars(_args()), "data_list": LIST}
    new = _args(lr=3e-3, epochs=20, num_workers=8, print_freq=1, data_path="/moved/a.csv",
                vis_freq=5)
    with caplog.at_level("INFO", logger="smile"):
        changes = outputs.check_same_run("out/checkpoint-latest.pth", saved, new, LIST)
    assert changes["schedule"] == {"epochs": [10, 20], "lr": [1.5e-4, 3e-3]}
    assert set(changes["machinery"]) == {"data_path", "num_workers", "print_freq", "vis_freq"}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["WARNING: resuming with --epochs 20 (the run had 10)",
                        "WARNING: resuming with --lr 0.003 (the run had 0.00015)"]


def test_another_list_is_refused_unless_asked_for_and_then_starts_at_an_epoch():
    saved = {"args": vars(_args()), "data_list": LIST, "epoch": 3, "next_batch": 5}
    other = {"digest": "bbbb", "entries": 97}
    with pytest.raises(checkpoint.CheckpointError) as info:
        outputs.check_same_run("out/c.pth", saved, _args(), other)
    assert "--data_path a.csv is not the list this run trained on (97 entries now, 100 then" in (
        str(info.value)) and "--new_data_list" in str(info.value)
    changes = outputs.check_same_run("out/c.pth", saved, _args(new_data_list=True), other)
    assert changes["data_list"] == [LIST, other]
    assert outputs.resume_position(saved, _args(), 12, new_list=True) == (4, 0)
    assert outputs.resume_position(saved, _args(), 12) == (3, 5)  # same list: same place
    assert outputs.resume_position(saved, _args(batch_size=4, total_batch_size=8), 12) == (
        4, 0)  # mid-epoch with another batch size: the next epoch
    assert outputs.resume_position(dict(saved, next_batch=12), _args(), 12) == (4, 0)


def test_a_list_with_a_byte_order_mark_reads_its_first_path(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")
    (tmp_path / "train.csv").write_bytes("\ufeffa.mp4 0\nb.mp4 1\n".encode("utf-8"))
    (tmp_path / "plain.csv").write_text("a.mp4 0\nb.mp4 1\n")
    entries = lists.read_list(str(tmp_path / "train.csv"))
    assert entries[0] == (str(video), 0)
    assert entries.digest == lists.read_list(str(tmp_path / "plain.csv")).digest


def test_history_keeps_every_start(tmp_path):
    outputs.append_history(str(tmp_path), {"event": "start", "step": 0})
    outputs.append_history(str(tmp_path), {"event": "resume", "step": 7})
    lines = [json.loads(x) for x in open(tmp_path / outputs.HISTORY)]
    assert [x["event"] for x in lines] == ["start", "resume"] and lines[1]["pid"] == os.getpid()


def _fake_checkpoint(path, step, history=()):
    import torch
    torch.save(dict(model={}, optimizer={}, epoch=step // 10, next_batch=step % 10, step=step,
                    history=list(history)), str(path))
    return str(path)


def test_the_stored_step_decides_not_the_name(tmp_path, caplog):
    _fake_checkpoint(tmp_path / checkpoint.LATEST, 20)
    _fake_checkpoint(tmp_path / "checkpoint-2.pth", 30)  # e.g. restored from a backup
    path, state = checkpoint.find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint-2.pth") and state["step"] == 30
    assert "holds step 20" in caplog.text and "resuming from the later one" in caplog.text


def test_a_requeued_resume_goes_on_from_the_runs_own_newer_checkpoint(tmp_path, caplog):
    other = _fake_checkpoint(tmp_path / "other.pth", 10)
    out = tmp_path / "run"
    out.mkdir()
    own = _fake_checkpoint(out / checkpoint.LATEST, 25, [dict(event="resume", checkpoint=other)])
    args = _args(resume=other, output_dir=str(out), auto_resume=True)
    assert checkpoint.resume_checkpoint(args)[0] == own
    assert f"which this run wrote after it started from --resume {other}" in caplog.text
    stranger = _fake_checkpoint(out / checkpoint.LATEST, 25)  # not started from `other`
    assert checkpoint.resume_checkpoint(args)[0] == other != stranger


def test_auto_resume_off_into_a_folder_holding_a_run_is_refused(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-4.pth", 50)
    args = _args(output_dir=str(tmp_path), auto_resume=False, resume=None)
    with pytest.raises(UsageError, match="holds another run's checkpoints, and with "
                                                "auto_resume off this run would start over"):
        outputs.start_or_resume(args, distributed.Dist(), (None, None, None, None), object(),
                                10, None)
