"""Multi-label recognition and repetition counting: the metrics against scikit-learn and hand
computations, and both tasks through the real CLI (fine-tuning and the linear probe) on
generated videos whose labels are known."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import tasks
from conftest import save_random_student, write_list
from media import write_video
from test_finetuning import cli

MOVERS = [((1, 0), (230, 40, 40)), ((0, 1), (40, 230, 40)), ((-1, -1), (40, 40, 230))]


def motion_label_videos(root, frames=12, side=32):
    """Each of the 7 non-empty subsets of 3 motion labels, twice: label k is a square of its
    own colour moving its own way (right, down, up-left) over noise."""
    entries = []
    for subset in range(1, 8):
        for copy in range(2):
            rng = np.random.default_rng(subset * 10 + copy)
            video = rng.integers(0, 60, (frames, side, side, 3)).astype(np.uint8)
            labels = [k for k in range(3) if subset >> k & 1]
            for k in labels:
                (dx, dy), colour = MOVERS[k]
                x, y = rng.integers(4, side - 12, 2)
                for t in range(frames):
                    px, py = (x + dx * 2 * t) % (side - 8), (y + dy * 2 * t) % (side - 8)
                    video[t, py:py + 8, px:px + 8] = colour
            path = write_video(str(root / f"s{subset}_{copy}.mp4"), video)
            entries.append(f"{path} {','.join(map(str, labels))}\n")
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("".join(entries))
    return root


def bouncing_videos(root, per_count=4, frames=24, side=32):
    """A ball that drops to the floor and bounces back `count` times (1 to 3) over the video,
    its start height and colour drawn per video."""
    entries = []
    for count in (1, 2, 3):
        for i in range(per_count):
            rng = np.random.default_rng(count * 100 + i)
            video = np.full((frames, side, side, 3), rng.integers(0, 50), np.uint8)
            x = rng.integers(0, side - 8)
            phase = np.linspace(0, count * np.pi, frames)
            for t in range(frames):
                y = int((side - 9) * (1 - abs(np.cos(phase[t]))))
                video[t, y:y + 8, x:x + 8] = rng.integers(150, 256, 3)
            entries.append((write_video(str(root / f"b{count}_{i}.mp4"), video), count))
    for split in ("train", "test"):
        write_list(root / f"{split}.csv", entries)
    write_list(root / "val.csv", entries[::per_count])  # one of each count: epochs stay cheap
    return root, entries


TINY = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
        "--short_side_size", "32", "--device", "cpu", "--num_workers", "0", "--batch_size", "4",
        "--test_num_segment", "2", "--test_num_crop", "1", "--sampling_rate", "2",
        "--print_freq", "5", "--aa", "", "--reprob", "0"]


def test_average_precision_is_scikit_learns_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (40, 5))
    scores = np.round(rng.uniform(size=(40, 5)), 1)  # many ties
    ours = tasks.multi_label_metrics(scores, labels)
    assert ours["mAP"] == pytest.approx(100 * average_precision_score(labels, scores,
                                                                      average="macro"))
    assert ours["per_class_ap"][3] == pytest.approx(100 * average_precision_score(
        labels[:, 3], scores[:, 3]))


def test_a_class_without_positives_is_left_out_of_the_map():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
    assert tasks.multi_label_metrics(scores, labels) == dict(mAP=100.0, per_class_ap={0: 100.0})


def test_counting_metrics_by_hand():
    counts = np.array([[2.4], [5.0], [0.6], [9.0]])
    true = np.array([2, 4, 0, 6])
    m = tasks.counting_metrics(counts, true)
    # |2.4-2|/2 = 0.2, |5-4|/4 = 0.25, the count of 0 left out, |9-6|/6 = 0.5
    assert m["mae_normalised"] == pytest.approx((0.2 + 0.25 + 0.5) / 3)
    # rounded 2, 5, 1, 9: within one of 2, 4, 0, but not of 6
    assert m["off_by_one_accuracy"] == pytest.approx(75.0)
    assert m["mae"] == pytest.approx((0.4 + 1.0 + 0.6 + 3.0) / 4)


@pytest.mark.slow
def test_multi_label_fine_tuning_and_probe_report_scikit_learns_map(tmp_path):
    data = motion_label_videos(tmp_path / "data")
    common = [*TINY, "--data_path", str(data), "--task", "multi_label", "--nb_classes", "3",
              "--data_set", "UCF101"]
    code, log = cli(*common, "--epochs", "2", "--warmup_epochs", "1", "--mixup", "0.8",
                    "--output_dir", str(tmp_path / "ft"))
    assert code == 0, log
    assert "epoch 2: val mAP " in log and "--task multi_label: mixup, cutmix and label " \
        "smoothing are off" in log, log
    path = save_random_student(tmp_path / "pretrained.pth")
    code, log = cli(*common, "--linear_probe", "--finetune", path, "--probe_epochs", "20",
                    "--output_dir", str(tmp_path / "probe"))
    assert code == 0, log
    for run in ("ft", "probe"):
        results = json.load(open(tmp_path / run / "results.json"))
        saved = np.load(tmp_path / run / "predictions.npz")
        assert saved["label"].shape == saved["prediction"].shape == (14, 3)
        assert results["task"] == "multi_label" and results["num_videos"] == 14
        assert results["mAP"] == pytest.approx(100 * average_precision_score(
            saved["label"], saved["prediction"], average="macro"))
        assert set(results["per_class_ap"]) == {"0", "1", "2"}
    # --task forgotten: a multi-label list read as single labels, or a multi-label model
    # tested as a classifier, is one line, not a silent misreading
    plain = [*TINY, "--data_path", str(data), "--nb_classes", "3", "--data_set", "UCF101"]
    code, log = cli(*plain, "--linear_probe", "--finetune", path, "--output_dir",
                    str(tmp_path / "wrong"))
    assert code == 2 and log.strip().splitlines()[-1].endswith(
        "train.csv:5: expected 'PATH LABEL' (or PATH,LABEL) with an integer label, got "
        f"'{data}/s3_0.mp4 0,1' (several labels: --task multi_label)"), log
    code, log = cli(*plain, "--eval", "--finetune", str(tmp_path / "ft" / "checkpoint-1.pth"),
                    "--output_dir", str(tmp_path / "wrong"))
    assert code == 2 and log.strip().splitlines()[-1].endswith(
        "checkpoint-1.pth: it was fine-tuned with --task multi_label; this run has --task "
        "classification"), log


@pytest.mark.slow
def test_counting_beats_the_training_mean_and_its_metrics_are_the_hand_computed(tmp_path):
    data, entries = bouncing_videos(tmp_path / "data")
    larger = [*TINY, "--input_size", "64", "--short_side_size", "64"]  # 16 px patches
    common = [*larger, "--data_path", str(data), "--task", "counting", "--data_set", "SSV2",
              "--num_frames", "8"]  # SSV2: segment sampling spans the whole video
    code, log = cli(*common, "--epochs", "60", "--warmup_epochs", "2", "--lr", "0.05",
                    "--drop_path", "0", "--output_dir", str(tmp_path / "ft"))
    assert code == 0, log
    assert "epoch 60: val normalised MAE " in log, log
    results = json.load(open(tmp_path / "ft" / "results.json"))
    saved = np.load(tmp_path / "ft" / "predictions.npz")
    predicted, true = saved["prediction"][:, 0], saved["label"]
    assert list(true) == [count for _, count in entries]
    assert results["mae_normalised"] == pytest.approx(np.mean(np.abs(predicted - true) / true))
    assert results["off_by_one_accuracy"] == pytest.approx(
        100 * np.mean(np.abs(np.round(predicted) - true) <= 1))
    mean = np.mean(true)  # the training list is the test list
    assert results["mae"] < 0.8 * np.mean(np.abs(mean - true)), (results, predicted)
    code, log = cli(*common, "--linear_probe", "--finetune", save_random_student(
        tmp_path / "pretrained.pth"), "--output_dir", str(tmp_path / "probe"))
    assert code == 0, log
    results = json.load(open(tmp_path / "probe" / "results.json"))
    saved = np.load(tmp_path / "probe" / "predictions.npz")
    assert results["mae"] == pytest.approx(np.mean(np.abs(saved["prediction"][:, 0] - true)))
