"""Every evaluation recipe (scripts/eval/*.yaml) parses and runs through the fine-tuning entry
point's own path (flags, checks, run) on generated videos: the sizes shrunk by the test (model,
frames, pixels, epochs, batch), every other value the recipe's."""
import json
import os

import numpy as np
import pytest
import yaml

import guard
import run_class_finetuning as run
import utils
from conftest import ROOT, save_random_student
from media import write_video

RECIPES = sorted(f for f in os.listdir(os.path.join(ROOT, "scripts", "eval"))
                 if f.endswith(".yaml"))
SHRUNK = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
          "--short_side_size", "32", "--epochs", "1", "--warmup_epochs", "0", "--batch_size",
          "2", "--num_workers", "0", "--device", "cpu", "--probe_epochs", "1", "--print_freq",
          "1", "--vis_freq", "0"]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """Six 40-frame videos and, for each kind of recipe, lists of them as that dataset's
    converted lists look: one class, a class and a segment (EPIC), several classes
    (Charades), a segment and its count (UCFRep)."""
    root = tmp_path_factory.mktemp("recipes")
    videos = []
    for i in range(6):
        frames = np.random.default_rng(i).integers(0, 255, (40, 32, 40, 3)).astype(np.uint8)
        frames[:, :, :, i % 3] = 200  # a colour per class
        videos.append(write_video(str(root / "videos" / f"v{i}.mp4"), frames))
    rows = {"classes": [f"{v} {i % 3}" for i, v in enumerate(videos)],
            "segments": [f"{v} {4 * i} {4 * i + 20} {i % 3}" for i, v in enumerate(videos)],
            "multi_label": [f"{v} {i % 3},{(i + 1) % 3}" for i, v in enumerate(videos)],
            "counting": [f"{v} 2 37 {i % 3 + 2}" for i, v in enumerate(videos)]}
    for kind, lines in rows.items():
        (root / kind).mkdir()
        for split in ("train", "val", "test"):
            (root / kind / f"{split}.csv").write_text("".join(line + "\n" for line in lines))
    save_random_student(root / "pretrained.pth")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_a_tiny_step(lists, tmp_path, recipe):
    path = os.path.join(ROOT, "scripts", "eval", recipe)
    settings = yaml.safe_load(open(path))
    kind = {"multi_label": "multi_label", "counting": "counting"}.get(
        settings.get("task"), "segments" if "EPIC" in settings["data_set"] else "classes")
    args = utils.parse_with_config(run.get_args_parser(), [
        "--config", path, "--data_path", str(lists / kind), "--finetune",
        str(lists / "pretrained.pth"), "--output_dir", str(tmp_path), *SHRUNK])
    kept = {k: v for k, v in settings.items() if f"--{k}" not in SHRUNK}
    assert {k: getattr(args, k) for k in kept} == kept  # nothing else changed
    assert guard.run_cli(run.main, args, run.check_args) == 0
    results = json.load(open(tmp_path / "results.json"))
    assert results["task"] == settings.get("task", "classification")
    assert results["mode"] == ("linear_probe" if settings.get("linear_probe") else "finetune")
    assert results["num_videos"] == 6 and results["num_failed"] == 0
