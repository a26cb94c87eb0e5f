"""The pretraining CLI end to end on generated data: stages, resume, signals, processes."""
import argparse
import json
import os
import signal
import subprocess
import time

import pytest
import torch

import checkpoint
import run_smile_pretraining as run
import utils
from conftest import (ROOT, assert_process_groups_closed, run_script, tensorboard_images,
                      write_list)

TINY = ["--model", "pretrain_videomae_tiny_patch16_224", "--teacher_model", "clip_vit_tiny",
        "--teacher_weights", "random", "--num_frames", "4", "--input_size", "32",
        "--background", "noise", "--device", "cpu", "--num_workers", "0", "--warmup_epochs",
        "1", "--print_freq", "1", "--lr", "1e-2"]


def cli(*argv, **kwargs):
    return run_script("run_smile_pretraining.py", *argv, **kwargs)


def final_weights(output_dir, epochs):
    return checkpoint.load_checkpoint(os.path.join(output_dir, f"checkpoint-{epochs - 1}.pth"))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def wait_for(path, text, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(path) and text in open(path).read():
            return
        assert proc.poll() is None, "the run ended before the expected log line"
        time.sleep(0.02)
    raise TimeoutError(text)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch stage-1 run: 48 clips, batch 4 -> 12 steps per epoch."""
    out = str(tmp_path_factory.mktemp("reference"))
    code, log = cli(*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "2",
                    "--output_dir", out)
    assert code == 0, log
    return out, log


@pytest.mark.slow
def test_stage1_outputs(reference):
    out, log = reference
    assert "RANDOM WEIGHTS" in log and "stage 1: mask trajectory, infusion p=1.00" in log
    assert "eta epoch" in log and "clips/s" in log
    for name in ("checkpoint-1.pth", "checkpoint-latest.pth", "args.json", "log.txt"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tb")))
    epochs = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    assert [e["epoch"] for e in epochs] == [0, 1]
    state = checkpoint.load_checkpoint(os.path.join(out, "checkpoint-1.pth"))
    assert state["epoch"] == 2 and state["step"] == 24 and state["next_batch"] == 0
    assert state["kind"] == "stage-1 pretraining" and state["format"] == checkpoint.FORMAT
    assert state["args"]["mask_type"] == "trajectory"
    assert state["model_kwargs"]["heads"] == {"feature": 192}
    assert {"encoder_to_decoder.weight", "mask_token"} <= set(state["model"])
    # pictures after each of the 2 epochs (--vis_freq default: about 4 per run): the sample,
    # 2 rows of 4 frames of 32 px; per token slice (2) target | prediction | cosine, 2x2 cells
    # of 16 px, 2-px lines between
    assert tensorboard_images(os.path.join(out, "tb")) == {
        "pretrain/sample": [(1, 64, 128), (2, 64, 128)],
        "pretrain/prediction": [(1, 66, 100), (2, 66, 100)]}


@pytest.mark.slow
def test_repeated_sampling_through_both_stages(tmp_path):
    """--repeated_sampling 2: an epoch runs as many clips (and steps) as without it, from
    half the videos (stage 2 from it: the stride-baked test below)."""
    for out in [str(tmp_path / "s1")]:
        code, log = cli(*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs",
                        "2", "--repeated_sampling", "2", "--output_dir", out)
        assert code == 0, log
        assert "16 videos, 4 steps/epoch x 2 epochs, batch 4 clips (2 per video)" in log
        state = checkpoint.load_checkpoint(os.path.join(out, "checkpoint-1.pth"))
        assert state["step"] == 8 and state["args"]["repeated_sampling"] == 2
        scale = 4 / 256  # the last of 8 steps sits where the 8-step schedule puts it
        last_lr = utils.cosine_lr(7, 1e-2 * scale, 1e-5 * scale, 4, 8, 1e-6 * scale)
        assert "epoch 2/2 step 4/4  loss" in log and f"lr {last_lr:.3e}" in log, log
    with pytest.raises(ValueError, match="--batch_size 3 must be a multiple of "
                                         "--repeated_sampling 2"):
        run.check_args(run.parse_args([*TINY, "--batch_size", "3", "--repeated_sampling", "2"]))


@pytest.mark.slow
def test_motion_targets_through_both_stages_and_into_fine_tuning(tmp_path):
    """--teacher_frames all and --motion_loss_weight, added for stage 2 only: the encoder and
    decoder blocks come from stage 1, the wider head and the motion head start fresh; then the
    fine-tuning loader, which leaves both heads behind with the decoder."""
    import modeling_finetune
    stage1, stage2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    common = ["--num_synthetic_clips", "8", "--batch_size", "4", "--epochs", "2"]
    flags = ["--teacher_frames", "all", "--motion_loss_weight", "0.5", *common]
    code, log = cli(*TINY, *common, "--output_dir", stage1)
    assert code == 0, log
    code, log = cli(*TINY, *flags, "--output_dir", stage2, "--first_stage_path",
                    os.path.join(stage1, "checkpoint-1.pth"))
    assert code == 0, log
    assert "teacher clip_vit_tiny on every frame of each tubelet, motion loss x0.5" in log
    assert "new heads start fresh: decoder.head, decoder.motion_head" in log, log
    state = checkpoint.load_checkpoint(os.path.join(stage2, "checkpoint-1.pth"))
    assert state["args"]["teacher_frames"] == "all" and state["args"]["motion_loss_weight"] == 0.5
    assert state["model"]["decoder.head.weight"].shape[0] == 2 * 192
    assert state["model"]["decoder.motion_head.weight"].shape[0] == 16 * 16 * 3
    model = modeling_finetune.vit_tiny_patch16_224(img_size=32, all_frames=4, num_classes=3)
    report = modeling_finetune.load_pretrained(model, state)
    assert {"decoder.head.weight", "decoder.motion_head.weight"} <= set(report["skipped"])
    assert not [k for k in report["unexpected"] + report["missing"] if "head" in k and
                not k.startswith("head.")]  # only the classifier is new, as from any run


@pytest.mark.slow
def test_stage2_from_stage1(reference, tmp_path):
    stage1, _ = reference
    code, log = cli(*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "1",
                    "--warmup_epochs", "0",
                    "--first_stage_path", os.path.join(stage1, "checkpoint-1.pth"),
                    "--output_dir", str(tmp_path))
    assert code == 0, log
    assert "stage 2: whole student from" in log and "mask tube, infusion p=0.00" in log
    state = checkpoint.load_checkpoint(str(tmp_path / "checkpoint-0.pth"))
    assert state["step"] == 4  # a fresh schedule: steps count from 0 again


@pytest.mark.slow
@pytest.mark.parametrize("sig,when,whole_group", [
    (signal.SIGHUP, "epoch 1/2 step 2/12", False),  # a dropped ssh session: the main process
    (signal.SIGTERM, "start-up", True),  # as SLURM's scancel, pre-emption and time limit do
    (signal.SIGINT, "epoch 1/2 step 5/12", True)])  # Ctrl-C in a terminal
def test_stop_signal_saves_and_resume_matches(reference, tmp_path, sig, when, whole_group):
    """The run saves, exits 0 and resumes to the same weights as an uninterrupted one, also
    when every process of the job, DataLoader workers included, gets the signal."""
    ref_out, _ = reference
    args = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "2",
            "--num_workers", "2" if whole_group else "0", "--output_dir", str(tmp_path)]
    proc = cli(*args, wait=False, new_session=True)
    wait_for(str(tmp_path / "train.log"), "steps/epoch" if when == "start-up" else when, proc)
    os.killpg(proc.pid, sig) if whole_group else proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"{sig.name} received: saved epoch 1 batch" in out
    state = checkpoint.load_checkpoint(str(tmp_path / "checkpoint-latest.pth"))
    assert state["epoch"] == 0 and 0 < state["next_batch"] < 12
    code, out = cli(*args)
    assert code == 0, out
    assert (f"resumed from {tmp_path / 'checkpoint-latest.pth'}: epoch 1, batch "
            f"{state['next_batch']} (step {state['next_batch']})") in out
    assert_same_weights(final_weights(str(tmp_path), 2), final_weights(ref_out, 2))


@pytest.mark.slow
def test_sigkill_then_resume_matches(reference, tmp_path):
    ref_out, _ = reference
    args = [*TINY, "--num_synthetic_clips", "48", "--batch_size", "4", "--epochs", "2",
            "--output_dir", str(tmp_path)]
    proc = cli(*args, wait=False)
    wait_for(str(tmp_path / "train.log"), "epoch 2/2 step 1/12", proc)
    proc.kill()
    proc.communicate()
    for name in os.listdir(tmp_path):  # whatever is on disk loads
        if name.endswith(".pth"):
            checkpoint.load_checkpoint(str(tmp_path / name))
    code, out = cli(*args)
    assert code == 0, out
    assert "epoch 2, batch 0 (step 12)" in out
    assert_same_weights(final_weights(str(tmp_path), 2), final_weights(ref_out, 2))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """2 processes x batch 4 = 1 process x batch 8 = 1 process x batch 4 x --update_freq 2
    (the paper's batch on fewer GPUs): the same losses and weights."""
    common = [*TINY, "--num_synthetic_clips", "32", "--epochs", "2"]
    code, log = cli(*common, "--batch_size", "8", "--output_dir", str(tmp_path / "one"))
    assert code == 0, log
    code, log = cli(*common, "--batch_size", "4", "--update_freq", "2", "--output_dir",
                    str(tmp_path / "accumulated"))
    assert code == 0, log
    assert "x 1 masks, 8 clips per update (--update_freq 2); lr 3.125e-04" in log
    code, log = cli(*common, "--batch_size", "4", "--output_dir", str(tmp_path / "two"),
                    processes=2)
    assert code == 0, log
    assert_process_groups_closed(log)
    assert "x 2 |" in open(tmp_path / "two" / "train.log").read()  # world size in the header
    one, two, accumulated = ([json.loads(x)["train_loss"] for x in open(tmp_path / name /
                                                                         "log.txt")]
                             for name in ("one", "two", "accumulated"))
    assert one == pytest.approx(two, rel=1e-4) and accumulated == pytest.approx(two, rel=1e-4)
    for name in ("two", "accumulated"):
        assert_same_weights(final_weights(str(tmp_path / "one"), 2),
                            final_weights(str(tmp_path / name), 2))


@pytest.mark.slow
def test_pixels_on_the_device_from_stride_baked_files_through_both_stages(video_dir, tmp_path):
    """--augment_on device on a list prepared with --stride 2 (sampled at --sampling_rate 2):
    stage 1 decoded by the training process (--decode_on device), stopped by a signal
    mid-epoch and resumed, ends with the weights of an uninterrupted run that decoded in its
    workers; stage 2 starts from it, decoding in the training process too."""
    from tools import prepare_videos
    listing = write_list(tmp_path / "src.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)] * 6)
    assert prepare_videos.main([listing, str(tmp_path / "baked"), "--stride", "2", "--workers",
                                "1"]) == 0
    data = [*TINY, "--background", "video", "--data_path", str(tmp_path / "baked" / "src.csv"),
            "--sampling_rate", "2", "--augment_on", "device", "--repeated_sampling", "2",
            "--batch_size", "4", "--epochs", "2"]
    reference, stopped = str(tmp_path / "reference"), str(tmp_path / "stopped")
    code, log = cli(*data, "--output_dir", reference)
    assert code == 0, log
    assert "24 videos, 6 steps/epoch x 2 epochs, batch 4 clips (2 per video)" in log
    data += ["--decode_on", "device", "--decode_threads", "2"]
    proc = cli(*data, "--output_dir", stopped, wait=False)
    wait_for(os.path.join(stopped, "train.log"), "epoch 1/2 step 2/6", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM received: saved epoch 1 batch" in out, out
    code, log = cli(*data, "--output_dir", stopped)
    assert code == 0 and "resumed from" in log, log
    assert_same_weights(final_weights(stopped, 2), final_weights(reference, 2))
    code, log = cli(*data, "--epochs", "1", "--warmup_epochs", "0", "--first_stage_path",
                    os.path.join(reference, "checkpoint-1.pth"), "--output_dir",
                    str(tmp_path / "stage2"))
    assert code == 0 and "stage 2: whole student from" in log and "mask tube" in log, log


@pytest.mark.slow
def test_deepspeed_two_process_cpu_step(tmp_path):
    pytest.importorskip("deepspeed")
    code, log = cli(*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "1",
                    "--warmup_epochs", "0",
                    "--enable_deepspeed", "--output_dir", str(tmp_path), processes=2,
                    timeout=600)
    assert code == 0, log
    assert_process_groups_closed(log)
    state = checkpoint.load_checkpoint(str(tmp_path / "checkpoint-0.pth"))
    assert state["step"] == 2 and "mask_token" in state["model"]


@pytest.mark.slow
def test_multiple_masks_schedule_counts_real_steps(tmp_path):
    code, log = cli(*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "1",
                    "--warmup_epochs", "0",
                    "--num_masks_per_clip", "2", "--output_dir", str(tmp_path))
    assert code == 0, log
    assert "4 steps/epoch x 1 epochs, batch 4 clips (1 per video) x 1 processes x 2 masks" in log
    assert checkpoint.load_checkpoint(str(tmp_path / "checkpoint-0.pth"))["step"] == 4


@pytest.mark.slow
def test_non_finite_loss_stops_cleanly(tmp_path):
    code, log = cli(*TINY, "--num_synthetic_clips", "16", "--batch_size", "4", "--epochs", "3",
                    "--lr", "1e14", "--warmup_epochs", "0", "--output_dir", str(tmp_path))
    assert code == 1
    assert "loss is nan" in log or "loss is inf" in log
    for name in os.listdir(tmp_path):
        if name.endswith(".pth"):
            state = checkpoint.load_checkpoint(str(tmp_path / name))
            assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("argv,message", [
    (["--num_frames", "15"], "--num_frames 15 is not divisible by the tubelet size 2"),
    (["--input_size", "40"], "--input_size 40 is not divisible by the patch size 16"),
    (["--mask_ratio", "1.2"], "--mask_ratio must be in (0, 1)"),
    (["--mask_ratio", "0"], "--mask_ratio must be in (0, 1)"),
    (["--first_stage_path", "/nope/checkpoint-299.pth"], "does not exist; stage 2 starts"),
    (["--teacher_weights", "/nope.pt"], "--teacher_weights /nope.pt is not a file"),
    ([], "--teacher_weights is required"),
    (["--background", "video"], "--background video needs --data_path"),
    (["--resume", "/nope.pth"], "--resume /nope.pth does not exist"),
    (["--output_dir", __file__], "test_run_pretraining.py is a file, not a folder"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--precision", "bf16"], "--precision bf16 needs --device cuda"),
    (["--warmup_epochs", "5", "--epochs", "5"], "--warmup_epochs must be in [0, --epochs 5)"),
    (["--warmup_epochs", "-1"], "--warmup_epochs must be in [0, --epochs"),
    (["--sampling_rate", "0"], "--sampling_rate must be >= 1"),
    (["--sampling_rate", "-2"], "--sampling_rate must be >= 1"),
    (["--mask_ratio", "0.1"], "masks 0 of the 4 cells of a 2x2 slice"),
    (["--training_mode", "mixed", "--first_stage_path", __file__], "is for --training_mode"),
])
def test_bad_arguments_one_clear_line(argv, message):
    args = run.parse_args([*TINY, *argv])
    if not argv:  # a real run that forgot the teacher
        args.teacher_weights = None
    with pytest.raises(ValueError) as info:
        run.check_args(args)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("argv,message", [
    (["--num_frames", "15"], "error: --num_frames 15 is not divisible by the tubelet size 2"),
    (["--teacher_model", "clip_vit_huge"], "invalid choice: 'clip_vit_huge'"),
])
def test_bad_arguments_cli_exit(argv, message, tmp_path):
    code, out = cli(*TINY, *argv, "--output_dir", str(tmp_path))
    assert code != 0
    assert message in out.strip().splitlines()[-1]
    assert not os.listdir(tmp_path)  # nothing built or written


def test_local_rank_spellings():
    assert run.parse_args(["--local-rank", "3"]).local_rank == 3
    assert run.parse_args(["--local_rank", "2"]).local_rank == 2


def test_config_file_defaults_and_cli_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("mask_ratio: 0.9\nepochs: 7\n")
    args = run.parse_args(["--config", str(config), "--epochs", "3"])
    assert args.mask_ratio == 0.9 and args.epochs == 3


@pytest.mark.parametrize("script", sorted(
    os.path.relpath(os.path.join(d, f), ROOT) for d, _, files in os.walk(os.path.join(ROOT, "scripts"))
    for f in files if f.endswith((".sh", ".slurm"))))
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    text = open(os.path.join(ROOT, script)).read()
    # a line ending in a flag value but no backslash would silently drop the next flags
    in_array = False  # words of a bash array need no continuation
    lines = text.split("\n")
    for prev, line in zip(lines, lines[1:]):
        in_array = ("=(" in prev or in_array) and ")" not in prev
        if line.lstrip().startswith("--") and not in_array:
            assert prev.rstrip().endswith("\\"), f"missing line continuation before: {line}"


READ = set()


class RecordingNamespace(argparse.Namespace):
    """Arguments that note every attribute read of them."""

    def __getattribute__(self, name):
        READ.add(name)
        return super().__getattribute__(name)


class RecordingSettings(utils.Settings):
    """The run's settings (made from the arguments by settle), noting every read too."""

    def __getattribute__(self, name):
        READ.add(name)
        return super().__getattribute__(name)


# read only in another mode of the same CLI, or before the arguments exist
OTHER_MODES = {"config": "parse_with_config, before parsing",
               "background_path": "--background image", "object_list": "--objects_path",
               "num_synthetic_clips": "--background black or noise",
               "new_data_list": "a resume on a list whose content changed"}


def test_help_lists_only_flags_pretraining_reads(video_dir, tmp_path, monkeypatch):
    """Every flag in the pretraining --help is read by a real (tiny) pretraining run."""
    monkeypatch.setattr(utils, "Settings", RecordingSettings)
    parser = run.get_args_parser()
    listing = write_list(tmp_path / "train.csv", [(video_dir[f"clip{i}"], 0) for i in range(4)])
    args = parser.parse_args([*TINY, "--background", "video", "--data_path", listing,
                              "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0",
                              "--output_dir", str(tmp_path / "out")],
                             namespace=RecordingNamespace())
    READ.clear()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT,
                                                       signal.SIGUSR1)}
    try:
        run.check_args(args)
        assert run.main(args) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    unread = flags - READ - set(OTHER_MODES)
    assert not unread, f"pretraining --help shows flags it never reads: {sorted(unread)}"
    assert not {"data_set", "nb_classes", "test_num_segment", "short_side_size"} & flags
