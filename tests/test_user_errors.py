"""A hurried user's mistakes, through the real CLIs: each ends with one `error:` line that names
the file or flag, with the documented exit code, before any training step."""
import os

import pytest
import torch

import errors
import modeling_finetune
import run_smile_pretraining as run
from conftest import run_script, save_random_student, write_list

pytestmark = pytest.mark.slow  # every case runs a CLI

PRETRAIN = ["--model", "pretrain_videomae_tiny_patch16_224", "--teacher_model", "clip_vit_tiny",
            "--teacher_weights", "random", "--num_frames", "4", "--input_size", "32",
            "--background", "noise", "--device", "cpu", "--num_workers", "0",
            "--warmup_epochs", "1", "--num_synthetic_clips", "8", "--batch_size", "4",
            "--epochs", "2"]
FINETUNE = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
            "--short_side_size", "32", "--data_set", "UCF101", "--nb_classes", "2", "--device",
            "cpu", "--num_workers", "0", "--batch_size", "2", "--test_num_segment", "1",
            "--test_num_crop", "1", "--sampling_rate", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, video_dir):
    """Checkpoints and folders of the kinds users mix up, written as the framework writes them."""
    root = tmp_path_factory.mktemp("mistakes")
    stage1_args = vars(run.parse_args(PRETRAIN))
    stage1_args.update(stage=1, training_mode="progressive")
    student = torch.load(save_random_student(root / "student.pth"), weights_only=True)["model"]
    stage1 = dict(model=student, optimizer={}, epoch=2, step=4, next_batch=0, args=stage1_args)
    os.makedirs(root / "stage1_run")
    torch.save(stage1, root / "stage1_run" / "checkpoint-latest.pth")
    torch.save(stage1, root / "stage1_run" / "checkpoint-1.pth")
    whole = open(root / "stage1_run" / "checkpoint-1.pth", "rb").read()
    open(root / "truncated.pth", "wb").write(whole[:len(whole) // 3])
    classifier = modeling_finetune.vit_tiny_patch16_224(img_size=32, all_frames=4, num_classes=2)
    finetuned = dict(model=classifier.state_dict(), args=dict(
        model="vit_tiny_patch16_224", num_frames=4, input_size=32, linear_probe=False))
    torch.save(finetuned, root / "finetuned.pth")
    small = modeling_finetune.vit_small_patch16_224(img_size=32, all_frames=4, num_classes=2)
    torch.save({"model": small.state_dict()}, root / "small.pth")
    os.makedirs(root / "not_a_list")
    unreadable = root / "unreadable"
    os.makedirs(unreadable)
    write_list(unreadable / "test.csv", [(video_dir["missing"], 0), (video_dir["text"], 1)])
    return root


CASES = {  # name: (CLI, arguments (files: {root}), exit code, what the error line must name)
    "stage 2 in stage 1's folder": (
        "run_smile_pretraining.py", ["--first_stage_path", "{root}/stage1_run/checkpoint-1.pth",
                                     "--output_dir", "{root}/stage1_run"],
        2, "holds a stage-1 run and this is stage 2; give each stage its own --output_dir"),
    "resume with another grid": (
        "run_smile_pretraining.py", ["--num_frames", "8", "--output_dir", "{root}/stage1_run"],
        2, "--num_frames 4 (now 8)"),
    "truncated first stage": (
        "run_smile_pretraining.py", ["--first_stage_path", "{root}/truncated.pth"],
        2, "truncated.pth: the file is truncated or incomplete"),
    "fine-tuned model as first stage": (
        "run_smile_pretraining.py", ["--first_stage_path", "{root}/finetuned.pth"],
        2, "is a fine-tuning checkpoint of vit_tiny_patch16_224 (4 frames, 32 px); stage 2 "
           "needs a stage-1"),
    "first stage of another size": (
        "run_smile_pretraining.py", ["--model", "pretrain_videomae_small_patch16_224",
                                     "--first_stage_path", "{root}/stage1_run/checkpoint-1.pth"],
        2, "its weights do not fit the model these arguments build: 216 weights have another "
           "shape (e.g. mask_token): (1, 1, 96) in the file, (1, 1, 192) here"),
    "folder as the pretraining list": (
        "run_smile_pretraining.py", ["--background", "video", "--data_path", "{root}/not_a_list"],
        2, "--data_path {root}/not_a_list is a folder without train.csv"),
    "zero_stage 1 is gone": (
        "run_smile_pretraining.py", ["--zero_stage", "1"], 2, "unrecognized arguments"),
    "pretraining checkpoint to --eval": (
        "run_class_finetuning.py", ["--eval", "--finetune", "{root}/student.pth",
                                    "--data_path", "{root}/unreadable"],
        2, "without a classifier head; --eval needs a fine-tuned checkpoint"),
    "--finetune of another size": (
        "run_class_finetuning.py", ["--eval", "--finetune", "{root}/small.pth",
                                    "--data_path", "{root}/unreadable"],
        2, "weights have another shape (e.g. "),
    "every test video unreadable": (
        "run_class_finetuning.py", ["--eval", "--finetune", "{root}/finetuned.pth",
                                    "--data_path", "{root}/unreadable"],
        errors.EXIT_DATA, "2 of 2 test videos could not be read"),
}


@pytest.mark.parametrize("case", CASES)
def test_one_clear_line(files, tmp_path, case):
    script, argv, code, named = CASES[case]
    base = PRETRAIN if script.startswith("run_smile") else FINETUNE
    argv = [a.format(root=files) for a in argv]
    before = {p: os.path.getmtime(files / "stage1_run" / p) for p in os.listdir(
        files / "stage1_run") if p.endswith(".pth")}
    exit_code, out = run_script(script, *base, "--output_dir", str(tmp_path / "out"), *argv)
    last = out.strip().splitlines()[-1]
    assert exit_code == code, out
    assert last.startswith(("error: ", "usage: ")) or "error:" in last, out
    assert named.format(root=files) in last, out
    assert "Traceback" not in out and "epoch 1/2 step" not in out  # no step was taken
    assert before == {p: os.path.getmtime(files / "stage1_run" / p) for p in before}
