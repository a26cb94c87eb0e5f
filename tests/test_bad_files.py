"""Bad input judged per run (bad_files.py): the decision rule on simulated counts, the ledger and
its TSV, restarts that never decode a known-bad file again, and real runs through the CLI."""
import os

import numpy as np
import pytest
import torch
from scipy.stats import binom

import bad_files
import batches
import datasets
import distributed
import errors
from conftest import run_script, write_list
from media import pretrain_args

ONE = distributed.Dist()


# ---------------------------------------------------------------- the rule, simulated
def simulate_run(num_files, bad_fraction, seed, epochs, ranks=2, workers=4, batch=32,
                 print_freq=20, max_fraction=0.05):
    """The run-wide rule over `epochs` of sampler draws. Returns the epoch (from 1) at which it
    aborts, or None. Every rank x worker yields whole batches of one shuffled epoch; the ranks
    merge at every print step (print_freq batches per rank) and at the epoch end; a file found
    bad is substituted by a uniform redraw from then on (as the dataset does)."""
    rng = np.random.default_rng(seed)
    is_bad = rng.random(num_files) < bad_fraction
    tried = np.zeros(num_files, bool)
    known = np.zeros(num_files, bool)
    per_check = ranks * batch * print_freq  # samples between two merges
    for epoch in range(1, epochs + 1):
        order = rng.permutation(num_files)
        # the workers of all ranks interleave batch by batch: order[i] is the i-th sample drawn
        for start in range(0, num_files, per_check):
            drawn = order[start:start + per_check]
            drawn = np.where(known[drawn], rng.integers(num_files, size=len(drawn)), drawn)
            tried[drawn] = True
            known |= tried & is_bad
            epoch_end = start + per_check >= num_files
            if bad_files.should_abort(int(known.sum()), int(tried.sum()), max_fraction,
                                      epoch_end):
                return epoch
        if epoch > 1 and tried.all():  # nothing can change any more: the estimate is exact
            return None
    return None


def old_per_worker_rule(num_files, bad_fraction, seed, epochs, workers=80):
    """The rule this replaces: each worker of each epoch judged its own ~num_files/workers
    draws (stop past 5 % after 20 attempts). Returns how many worker-epochs would abort."""
    rng = np.random.default_rng(seed)
    draws = num_files // workers
    aborts = 0
    for _ in range(epochs):
        failures = rng.random((workers, draws)) < bad_fraction
        counts = failures.cumsum(axis=1)
        attempts = np.arange(1, draws + 1)
        aborts += int(((counts > 0.05 * attempts) & (attempts >= 20)).any(axis=1).sum())
    return aborts


def test_rule_never_aborts_at_0_3_percent():
    # 2 ranks x 4 workers x 300 epochs over a K400-sized list; the first epoch, where the
    # estimate is young, over several seeds
    assert simulate_run(240_000, 0.003, seed=0, epochs=300) is None
    for seed in range(1, 6):
        assert simulate_run(20_000, 0.003, seed=seed, epochs=2) is None
    # the per-worker rule it replaces stops such a run many times over (the reason for this)
    assert old_per_worker_rule(240_000, 0.003, seed=0, epochs=30) > 0


def test_rule_aborts_in_the_first_epoch_at_30_percent():
    for seed in range(3):
        assert simulate_run(240_000, 0.30, seed=seed, epochs=300) == 1
        assert simulate_run(40, 0.30, seed=seed, epochs=300) == 1  # judged at the epoch end


def test_chance_of_a_false_abort_is_negligible():
    """Union bound over every count of distinct files the rule may look at (>= MIN_TRIED): the
    chance that some prefix of a 0.3 %-bad list holds more than 5 % bad files."""
    n = np.arange(bad_files.MIN_TRIED, 50_000)
    assert binom.sf(np.floor(0.05 * n), n, 0.003).sum() < 1e-8
    assert binom.sf(np.floor(0.05 * n), n, 0.01).sum() < 1e-3


def test_decision_needs_enough_files_unless_the_epoch_ended():
    assert not bad_files.should_abort(3, 10, 0.05)  # 30 %, but only 10 files tried so far
    assert bad_files.should_abort(3, 10, 0.05, epoch_end=True)
    assert bad_files.should_abort(11, 200, 0.05) and not bad_files.should_abort(10, 200, 0.05)
    assert not bad_files.should_abort(0, 0, 0.05, epoch_end=True)


# ---------------------------------------------------------------- the ledger
def test_ledger_lists_each_file_once_and_a_restart_knows_them(tmp_path):
    paths = [f"/data/v{i}.mp4" for i in range(10)] + ["/data/v3.mp4"]  # v3 listed twice
    ledger = bad_files.BadFileLedger(paths, 0.9, str(tmp_path), ONE)
    ledger.record([(0, "", ""), (3, "/data/v3.mp4", "truncated\tat frame 9\n")], epoch=0)
    ledger.record([(3, "/data/v3.mp4", "truncated"), (-1, "/objects/a.png", "no alpha")], 0)
    ledger.check()
    ledger.record([(5, "", ""), (7, "/data/v7.mp4", "file not found")], epoch=1)
    ledger.check(epoch_end=True)
    rows = open(tmp_path / "bad_files.tsv").read().splitlines()
    assert rows == ["path\treason\tepoch\trank", "/data/v3.mp4\ttruncated at frame 9\t0\t0",
                    "/objects/a.png\tno alpha\t0\t0", "/data/v7.mp4\tfile not found\t1\t0"]
    assert ledger.counts() == (3, 5)  # v3 twice in the list, v7; tried 0, 3, 5, 7, 10
    assert ledger.known_bad() == {3, 7, 10}

    restarted = bad_files.BadFileLedger(paths, 0.9, str(tmp_path), ONE)
    restarted.load_state_dict(ledger.state_dict())
    assert restarted.known_bad() == {3, 7, 10} and restarted.counts() == (3, 5)
    restarted.record([(3, "/data/v3.mp4", "truncated")], epoch=2)  # would not be listed again
    restarted.check()
    assert len(open(tmp_path / "bad_files.tsv").read().splitlines()) == 4


def test_a_file_whose_read_hung_is_read_again_once_and_left_out_after_a_second_hang(tmp_path):
    paths = [f"/mnt/stale/v{i}.mp4" for i in range(4)]
    hang = (paths[1], f"{bad_files.HUNG} in 600 s (--data_timeout_s)")
    bad_files.BadFileLedger(paths, 0.9, str(tmp_path), ONE).write_now([hang], epoch=0)
    resumed = bad_files.BadFileLedger(paths, 0.9, str(tmp_path), ONE)
    assert resumed.known_bad() == set() and resumed.counts() == (0, 0)  # the mount's, maybe
    resumed.write_now([hang], epoch=0)  # it hung again
    assert bad_files.BadFileLedger(paths, 0.9, str(tmp_path), ONE).known_bad() == {1}


def test_ledger_aborts_with_one_line(tmp_path):
    paths = [f"v{i}.mp4" for i in range(10)]
    ledger = bad_files.BadFileLedger(paths, 0.05, str(tmp_path), ONE)
    ledger.record([(i, f"v{i}.mp4", "broken" if i < 3 else "") for i in range(10)], 0)
    ledger.check()  # 10 files: too few to judge mid-epoch
    with pytest.raises(errors.DataAbort) as info:
        ledger.check(epoch_end=True)
    line = str(info.value)
    assert "3 of 10" in line and "--max_bad_fraction 0.05" in line and "bad_files.tsv" in line
    assert "\n" not in line
    wrapped = ("Caught DataAbort in DataLoader worker process 0.\nOriginal Traceback (most "
               f"recent call last):\n  File \"x.py\", line 1\nerrors.DataAbort: {line}\n")
    assert bad_files.data_abort_line(errors.DataAbort(wrapped)) == line


def test_restart_never_decodes_a_known_bad_file(video_dir, tmp_path):
    """Two workers, three epochs, then a restart from the TSV: the missing and the truncated
    file are each tried once in the whole run."""
    good = [(video_dir[f"clip{i}"], 0) for i in range(4)] * 5
    entries = good + [(video_dir["missing"], 0), (video_dir["truncated"], 0)]
    args = pretrain_args(background="video", data_path=write_list(tmp_path / "l.csv", entries),
                         input_size=32, num_frames=4)
    out = tmp_path / "out"
    out.mkdir()
    failures = []

    def run_epochs(epochs):
        dataset = datasets.build_pretraining_dataset(args)
        ledger = bad_files.BadFileLedger(dataset.file_paths, 0.2, str(out), ONE)
        sampler = distributed.ResumableSampler(len(dataset), 4, 0, 1, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler,
                                             num_workers=2, worker_init_fn=distributed.seed_worker,
                                             collate_fn=batches.collate_pretraining)
        for epoch in epochs:
            dataset.set_epoch(epoch)
            dataset.known_bad = ledger.known_bad()
            sampler.set_epoch(epoch)
            for *_, attempts in distributed.start_workers(loader):
                ledger.record(attempts, epoch)
                failures.extend(path for _, path, reason in attempts if reason)
            ledger.check(epoch_end=True)

    run_epochs(range(3))
    run_epochs(range(3, 5))  # the restart
    assert sorted(failures) == sorted([video_dir["missing"], video_dir["truncated"]])
    rows = bad_files.read_tsv(str(out / "bad_files.tsv"))
    assert sorted(p for p, _ in rows) == sorted([video_dir["missing"], video_dir["truncated"]])


# ---------------------------------------------------------------- through the CLI
CLI = ["--model", "pretrain_videomae_tiny_patch16_224", "--teacher_model", "clip_vit_tiny",
       "--teacher_weights", "random", "--num_frames", "4", "--input_size", "32",
       "--sampling_rate", "2", "--device", "cpu", "--warmup_epochs", "1", "--print_freq", "5",
       "--batch_size", "4"]


@pytest.mark.slow
def test_run_with_a_few_bad_files_finishes_and_lists_each_once(video_dir, tmp_path):
    good = [(video_dir[f"clip{i}"], 0) for i in range(4)] * 15  # 60 good + 2 bad: 3.2 %
    listing = write_list(tmp_path / "train.csv",
                         good + [(video_dir["missing"], 0), (video_dir["truncated"], 0)])
    out = str(tmp_path / "out")
    args = [*CLI, "--data_path", listing, "--num_workers", "2", "--output_dir", out]
    code, log = run_script("run_smile_pretraining.py", *args, "--epochs", "3")
    assert code == 0, log
    rows = bad_files.read_tsv(os.path.join(out, "bad_files.tsv"))
    assert sorted(p for p, _ in rows) == sorted([video_dir["missing"], video_dir["truncated"]])
    assert log.count(video_dir["missing"]) == 1  # named once in the whole log
    code, log = run_script("run_smile_pretraining.py", *args, "--epochs", "4")  # a restart
    assert code == 0, log
    assert "2 unreadable files listed in" in log and video_dir["missing"] not in log.replace(
        "listed in", "")
    assert len(bad_files.read_tsv(os.path.join(out, "bad_files.tsv"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case", ["30_percent", "nothing_decodes"])
def test_mostly_bad_list_stops_with_the_data_exit_code(video_dir, tmp_path, case):
    if case == "30_percent":  # 14 good, 6 bad: judged at the end of epoch 1
        broken = [tmp_path / f"broken{i}.mp4" for i in range(6)]
        for i, path in enumerate(broken):
            path.write_bytes(b"" if i % 2 else b"not a video")
        entries = [(video_dir[f"clip{i % 4}"], 0) for i in range(14)] + [(p, 0) for p in broken]
    else:
        entries = [(video_dir["missing"], 0)] * 12
    listing = write_list(tmp_path / "train.csv", entries)
    out = str(tmp_path / "out")
    code, log = run_script("run_smile_pretraining.py", *CLI, "--data_path", listing,
                           "--num_workers", "2", "--epochs", "5", "--output_dir", out)
    assert code == errors.EXIT_DATA, log
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in log
    if case == "30_percent":
        assert "6 of 20 distinct files" in last and "--max_bad_fraction 0.05" in last
        assert os.path.join(out, "bad_files.tsv") in last
        assert "epoch 2/5" not in log
    else:
        assert "10 samples in a row could not be read" in last


def test_a_single_frame_file_trains_as_a_still_clip_and_is_said_once(tmp_path, caplog):
    import cv2
    jpeg = str(tmp_path / "photo.mp4")  # a JPEG with a video's name
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.full((64, 80, 3), 90, np.uint8))
    os.rename(tmp_path / "photo.jpg", jpeg)
    args = pretrain_args(background="video", input_size=32, num_frames=4,
                         data_path=write_list(tmp_path / "l.csv", [(jpeg, 0)] * 3))
    dataset = datasets.build_pretraining_dataset(args)
    ledger = bad_files.BadFileLedger(dataset.file_paths, 0.05, str(tmp_path), ONE)
    for i in range(3):
        (clip,), _, _, attempts = dataset[i]
        assert clip.shape == (4, 32, 32, 3)
        ledger.record(attempts, epoch=0)
    with caplog.at_level("WARNING", logger="smile"):
        ledger.check(epoch_end=True)
    said = [r.getMessage() for r in caplog.records if jpeg in r.getMessage()]
    assert said == [f"{jpeg}: a single frame: it trains as a still clip"]
    assert ledger.counts() == (0, 3) and not os.path.exists(ledger.tsv)  # not a bad file
