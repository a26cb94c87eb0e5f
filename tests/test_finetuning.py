"""Fine-tuning, evaluation and the linear probe."""
import json
import os
import re

import numpy as np
import pytest
import torch
from timm.optim import create_optimizer_v2

import engine_for_finetuning as engine
import modeling_finetune
import modeling_pretrain
import tasks
from conftest import (assert_process_groups_closed, run_script, save_random_student,
                      tensorboard_images, write_list)
from media import write_video
from video_transforms import same_ops_per_frame


def tiny_classifier(num_classes=5, **kwargs):
    return modeling_finetune.vit_tiny_patch16_224(img_size=32, num_frames=4, tubelet_size=2,
                                                  num_classes=num_classes, **kwargs)


def released_finetune_keys(depth):
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
             "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
             "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    return ({"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight",
             "fc_norm.bias", "head.weight", "head.bias"}
            | {f"blocks.{i}.{k}" for i in range(depth) for k in block})


def test_finetuned_layout_loads_strictly_same_logits(tmp_path):
    torch.manual_seed(0)
    model = modeling_finetune.vit_base_patch16_224(img_size=32, num_frames=4, tubelet_size=2,
                                                   num_classes=7).eval()
    assert set(model.state_dict()) == released_finetune_keys(12)
    # the authors' fine-tuned files: weights under 'module' (DeepSpeed) or 'model'
    path = tmp_path / "finetuned.pth"
    torch.save({"module": model.state_dict(), "epoch": 99}, path)
    restored = modeling_finetune.vit_base_patch16_224(img_size=32, num_frames=4, tubelet_size=2,
                                                      num_classes=7).eval()
    report = modeling_finetune.load_pretrained(restored, str(path))
    assert report == dict(missing=[], unexpected=[], skipped=[])
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(video), restored(video))


@pytest.mark.parametrize("wrap", ["model", "module", "prefixed"])
def test_pretraining_to_finetuning_key_mapping(tmp_path, wrap):
    student = modeling_pretrain.build_student("pretrain_videomae_tiny_patch16_224", 32, 16, 4, 2,
                                              192)
    state = student.state_dict()
    if wrap == "prefixed":
        state = {"model": {f"module.{k}": v for k, v in state.items()}}
    else:
        state = {wrap: state}
    path = tmp_path / "pretrained.pth"
    torch.save(state, path)
    model = tiny_classifier()
    report = modeling_finetune.load_pretrained(model, str(path))
    assert report["missing"] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report["unexpected"] == ["norm.bias", "norm.weight"]
    assert {k.split(".")[0] for k in report["skipped"]} == {"decoder", "encoder_to_decoder",
                                                           "mask_token"}
    assert torch.equal(model.blocks[3].attn.q_bias, student.encoder.blocks[3].attn.q_bias)


def test_head_of_other_shape_dropped_and_nothing_matching_is_an_error(tmp_path):
    source = tiny_classifier(num_classes=400)
    path = tmp_path / "k400.pth"
    torch.save({"model": source.state_dict()}, path)
    model = tiny_classifier(num_classes=174)
    report = modeling_finetune.load_pretrained(model, str(path))
    assert report["skipped"] == ["head.bias", "head.weight"]
    assert report["missing"] == ["head.bias", "head.weight"]
    bad = tmp_path / "other.pth"
    torch.save({"model": {"something.else": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match="none of its keys"):
        modeling_finetune.load_pretrained(model, str(bad))


def test_layer_decay_scales():
    model = tiny_classifier()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05,
                                    layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    depth = 12
    assert scale["patch_embed.proj.weight"][0] == pytest.approx(0.75 ** (depth + 1))
    for i in range(depth):
        assert scale[f"blocks.{i}.mlp.fc1.weight"][0] == pytest.approx(0.75 ** (depth - i))
    assert scale["head.weight"][0] == pytest.approx(1.0)
    assert scale["fc_norm.weight"] == (pytest.approx(1.0), 0.0)  # and no decay on norms
    assert scale["blocks.0.attn.q_bias"][1] == 0.0


def test_merge_views_hand_made():
    # video 0: two views, class 1 wins on average; video 1: one good view; video 2: no view
    # decodes; the duplicate (video 0, view 0) row counts once
    logits = np.array([[0.0, 3.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0],
                       [0.0, 3.0, 0.0]])
    views = dict(video=np.array([0, 0, 1, 2, 0]), view=np.array([0, 1, 0, 0, 0]),
                 ok=np.array([True, True, True, False, True]), label=np.array([1, 1, 0, 2, 1]),
                 logits=logits)
    probs, labels, videos = tasks.merge_views(views, num_videos=3)
    soft = torch.softmax(torch.tensor(logits[:2]), 1).mean(0).numpy()
    assert np.allclose(probs[0], soft) and list(videos) == [0, 1] and list(labels) == [1, 0]
    metrics = tasks.classification_metrics(probs, labels)
    assert metrics == dict(top1=50.0, top5=100.0, class_mean_top1=50.0,
                           per_class_top1={0: 0.0, 1: 100.0})


def test_class_mean_top1():
    probs = np.eye(3)[[0, 0, 0, 1, 2]]  # predictions
    labels = np.array([0, 0, 0, 0, 2])  # class 0: 3 of 4 right, class 2: 1 of 1
    m = tasks.classification_metrics(probs, labels)
    assert m["top1"] == pytest.approx(80.0) and m["class_mean_top1"] == pytest.approx(87.5)
    assert m["per_class_top1"] == {0: 75.0, 2: 100.0}
    assert engine.pictures.confusion_matrix(probs, labels, 3).tolist() == [[3, 1, 0], [0, 0, 0],
                                                                           [0, 0, 1]]


def test_rand_augment_same_ops_every_frame():
    from timm.data.auto_augment import rand_augment_transform
    transform = rand_augment_transform("rand-m9-n4-mstd0.5-inc1", {})
    frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
    out = same_ops_per_frame(transform, np.stack([frame] * 4), seed=3)
    assert all((o == out[0]).all() for o in out)
    other = same_ops_per_frame(transform, np.stack([frame] * 2), seed=4)
    assert not (other[0] == out[0]).all()


def test_probe_learns_separable_features():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c * 3, 1, (30, 8)) for c in range(3)])
    labels = np.repeat(np.arange(3), 30)
    probe = engine.train_probe(features, labels, 3, epochs=30, lr=1e-2, weight_decay=0,
                               batch_size=16, seed=0)
    with torch.no_grad():
        pred = probe(torch.from_numpy(features).float()).argmax(1).numpy()
    assert (pred == labels).mean() == 1.0


# ---------------------------------------------------------------- through the CLI
def colour_videos(root, per_class=4, bad=False):
    """Trivially separable: class c is a flat colour (plus noise)."""
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    entries = []
    for label, colour in enumerate(colours):
        for i in range(per_class):
            rng = np.random.default_rng(label * 100 + i)
            frames = np.clip(np.array(colour) + rng.normal(0, 10, (12, 40, 48, 3)), 0,
                             255).astype(np.uint8)
            entries.append((write_video(str(root / f"c{label}" / f"{i}.mp4"), frames), label))
    for split in ("train", "val"):
        write_list(root / f"{split}.csv", entries)
    test = entries + ([(str(root / "missing.mp4"), 0)] if bad else [])
    write_list(root / "test.csv", test)
    return root


def cli(*argv, processes=1):
    return run_script("run_class_finetuning.py", *argv, processes=processes)


TINY = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
        "--short_side_size", "32", "--data_set", "UCF101", "--nb_classes", "3", "--device",
        "cpu", "--num_workers", "0", "--batch_size", "4", "--test_num_segment", "2",
        "--test_num_crop", "2", "--sampling_rate", "2", "--print_freq", "1",
        "--max_bad_fraction", "0.1"]  # 1 of the 13 test videos is missing


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    return colour_videos(tmp_path_factory.mktemp("colours"), bad=True)


@pytest.fixture(scope="module")
def finetuned(colour_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    code, log = cli(*TINY, "--data_path", str(colour_set), "--epochs", "2", "--warmup_epochs",
                    "1", "--update_freq", "2", "--model_ema", "--output_dir", str(out))
    assert code == 0, log
    return out, log


@pytest.mark.slow
def test_finetune_cli(finetuned):
    out, log = finetuned
    assert "  missing: " not in log  # no --finetune: trained from scratch
    assert "val top-1" in log and "eta epoch" in log
    results = json.load(open(out / "results.json"))
    assert results["mode"] == "finetune" and results["num_videos"] == 13
    assert results["num_failed"] == 1  # the missing test video is counted, not replaced
    assert [os.path.basename(p) for p in results["failed_videos"]] == ["missing.mp4"]
    assert "test video could not be read, left out of the score" in log
    assert {"top1", "top5", "class_mean_top1"} <= set(results)
    assert set(results["per_class_top1"]) == {"0", "1", "2"}
    assert os.path.isfile(out / "checkpoint-1.pth")
    # 3 classes of 85 px: after each validation, and the test's
    assert tensorboard_images(out / "tb") == {"val/confusion": [(1, 255, 255), (2, 255, 255)],
                                              "test/confusion": [(0, 255, 255)]}


@pytest.mark.slow
def test_eval_cli_and_two_processes_match(finetuned, colour_set, tmp_path):
    out, _ = finetuned
    common = [*TINY, "--data_path", str(colour_set), "--eval", "--finetune",
              str(out / "checkpoint-1.pth")]
    runs = {"one": cli(*common, "--output_dir", str(tmp_path / "one")),
            "two_sharded": cli(*common, "--output_dir", str(tmp_path / "two_sharded"),
                               processes=2),
            "two_full": cli(*common, "--no-dist_eval", "--output_dir", str(tmp_path / "two_full"),
                            processes=2)}
    results = {}
    for name, (code, log) in runs.items():
        assert code == 0, log
        assert "loaded its EMA weights, which the run scored" in log, log
        if name != "one":
            assert_process_groups_closed(log)
        results[name] = json.load(open(tmp_path / name / "results.json"))
    one = results["one"]
    assert one["mode"] == "test" and one["num_videos"] == 13 and one["num_failed"] == 1
    scored = json.load(open(out / "results.json"))  # --model_ema: the run scored its EMA
    assert one["top1"] == scored["top1"] and one["class_mean_top1"] == scored["class_mean_top1"]
    for name in ("two_sharded", "two_full"):
        for key in ("top1", "top5", "class_mean_top1", "num_videos", "num_failed"):
            assert results[name][key] == pytest.approx(one[key]), (name, key)


@pytest.mark.slow
def test_linear_probe_separable_set(colour_set, tmp_path):
    # a randomly initialised encoder saved and loaded like a real checkpoint
    path = save_random_student(tmp_path / "pretrained.pth")
    args = [*TINY, "--data_path", str(colour_set), "--linear_probe", "--finetune", path,
            "--probe_epochs", "50", "--probe_repeats", "2", "--output_dir", str(tmp_path / "probe")]
    code, log = cli(*args)
    assert code == 0, log
    results = json.load(open(tmp_path / "probe" / "results.json"))
    assert results["top1"] == 100.0 and results["num_failed"] == 1
    assert results["mode"] == "linear_probe" and results["top1_per_seed"] == [100.0, 100.0]
    cache = tmp_path / "probe" / "features_test.pt"
    cache.write_bytes(cache.read_bytes()[:1000])  # cut off, as a full disk or a copy leaves it
    code, log = cli(*args)  # the second time the train features come from the cache
    assert code == 0 and "cached train features" in log, log
    assert f"WARNING: {cache} is unreadable (" in log and "its test features are computed " \
        "again" in log
    assert json.load(open(tmp_path / "probe" / "results.json"))["top1"] == results["top1"]


@pytest.mark.slow
def test_a_stop_signal_during_the_test_keeps_the_views_done(finetuned, colour_set, tmp_path,
                                                            monkeypatch):
    """--eval stopped after a few of its 52 views: exit 0 with the views kept; the same
    command computes the rest only and scores as the uninterrupted test."""
    import datasets
    import outputs
    import run_class_finetuning as run
    import stop_signals
    import utils
    flag, real_item = stop_signals.stop_flag(), datasets.VideoClsDataset.__getitem__

    def item(self, index):
        item.calls += 1
        if item.calls == 10:  # in the third batch of 4 views
            flag.signal = "SIGUSR1"
        return real_item(self, index)

    item.calls = 0
    monkeypatch.setattr(datasets.VideoClsDataset, "__getitem__", item)
    out, _ = finetuned
    argv = [*TINY, "--data_path", str(colour_set), "--eval", "--finetune",
            str(out / "checkpoint-1.pth"), "--output_dir", str(tmp_path)]
    try:
        assert run.main(utils.parse_with_config(run.get_args_parser(), argv)) == 0
    finally:
        flag.signal = None
        outputs.release_output_dirs()
    kept = torch.load(tmp_path / "test_views.rank0.pt", weights_only=True)["views"]
    assert len(kept["video"]) == 12 and not (tmp_path / "results.json").exists()
    code, log = cli(*argv)
    assert code == 0 and "test: 12 views done before a stop" in log, log
    results = json.load(open(tmp_path / "results.json"))
    assert results["num_views"] == 52 and not (tmp_path / "test_views.rank0.pt").exists()
    assert results["top1"] == json.load(open(out / "results.json"))["top1"]


@pytest.mark.parametrize("argv,message", [
    (["--eval"], "need --finetune"),
    (["--finetune", "/nope.pth"], "--finetune /nope.pth does not exist"),
    (["--num_frames", "5"], "--num_frames 5 is not divisible"),
    (["--data_path", "/path/to/lists/ucf101"],  # a script's path left as it came
     "--data_path /path/to/lists/ucf101: not a folder of train/val/test.csv"),
])
def test_finetune_bad_arguments(colour_set, argv, message):
    """Found by check_args, before anything is built (guard.run_cli turns the ValueError into
    the one `error:` line, exit 2: tests/test_user_errors.py runs that through the CLI)."""
    import run_class_finetuning as run
    import utils
    with pytest.raises(ValueError, match=re.escape(message)):
        run.check_args(utils.parse_with_config(run.get_args_parser(),
                                               [*TINY, "--data_path", str(colour_set), *argv]))


@pytest.mark.slow
def test_finetune_deepspeed_two_processes(colour_set, tmp_path):
    pytest.importorskip("deepspeed")
    code, log = cli(*TINY, "--data_path", str(colour_set), "--epochs", "1", "--warmup_epochs",
                    "0", "--batch_size", "2", "--update_freq", "2", "--enable_deepspeed",
                    "--test_num_segment", "1", "--test_num_crop", "1",
                    "--output_dir", str(tmp_path), processes=2)
    assert code == 0, log
    assert_process_groups_closed(log)
    assert json.load(open(tmp_path / "results.json"))["mode"] == "finetune"
    state = torch.load(tmp_path / "checkpoint-0.pth", weights_only=True)
    assert state["kind"] == "fine-tuning" and state["model_kwargs"]["size"] == "tiny"
    assert modeling_finetune.build_encoder(**state["model_kwargs"]).load_state_dict(
        state["model"]) is not None  # the stored keywords rebuild the model it holds


def test_builders_take_videomae_keywords():
    """Code written against VideoMAE/SMILE builds our models unchanged."""
    model = modeling_finetune.vit_small_patch16_224(
        pretrained=False, num_classes=400, all_frames=8, tubelet_size=2, fc_drop_rate=0.0,
        drop_rate=0.0, drop_path_rate=0.1, attn_drop_rate=0.0, drop_block_rate=None,
        use_checkpoint=False, use_mean_pooling=True, init_scale=0.001)
    assert model.num_patches == 4 * 14 * 14 and model.head.out_features == 400
    assert modeling_finetune.vit_tiny_patch16_224().head.out_features == 1000  # VideoMAE's
    with pytest.raises(ValueError, match="attn_drop_rate"):
        modeling_finetune.vit_tiny_patch16_224(attn_drop_rate=0.1)


@pytest.mark.slow
def test_a_stopped_fine_tuning_resumes_to_the_uninterrupted_weights(finetuned, colour_set,
                                                                      tmp_path, monkeypatch):
    """Mixup's draws, drop path and RandomErasing's noise come out of a resume as they would
    have: stopped mid-epoch (inside an update of 2 batches), the same command ends with the
    uninterrupted run's weights and EMA weights."""
    import engine_for_finetuning
    import outputs
    import run_class_finetuning as run
    import stop_signals
    import utils
    flag, real_loss = stop_signals.stop_flag(), engine_for_finetuning.train_loss

    def loss(*a, **k):
        loss.calls += 1
        if loss.calls == 1:  # the first half of the first update (3 batches an epoch)
            flag.signal = "SIGTERM"
        return real_loss(*a, **k)

    loss.calls = 0
    monkeypatch.setattr(engine_for_finetuning, "train_loss", loss)
    argv = [*TINY, "--data_path", str(colour_set), "--epochs", "2", "--warmup_epochs", "1",
            "--update_freq", "2", "--model_ema", "--output_dir", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI's runs (OMP_NUM_THREADS=1): the same sums
    try:
        assert run.main(utils.parse_with_config(run.get_args_parser(), argv)) == 0
    finally:
        flag.signal = None
        outputs.release_output_dirs()
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "checkpoint-latest.pth", weights_only=True)
    assert (state["epoch"], state["next_batch"]) == (0, 2)
    monkeypatch.undo()
    code, log = cli(*argv)
    assert code == 0, log
    out, _ = finetuned
    ours = torch.load(tmp_path / "checkpoint-1.pth", weights_only=True)
    theirs = torch.load(out / "checkpoint-1.pth", weights_only=True)
    for part in ("model", "model_ema"):
        for key, value in theirs[part].items():
            assert torch.equal(ours[part][key], value), (part, key)  # bit for bit


@pytest.mark.slow
def test_a_stop_signal_during_validation_is_finished_by_the_rerun(colour_set, tmp_path,
                                                                  monkeypatch):
    """The signal comes in the second batch of epoch 1's validation: the run stops with epoch
    1 saved and the views done kept; the same command validates the rest of epoch 1 (its
    record in log.txt has the metrics of an uninterrupted run), then trains epoch 2."""
    import datasets
    import outputs
    import run_class_finetuning as run
    import stop_signals
    import utils
    flag, real_item = stop_signals.stop_flag(), datasets.VideoClsDataset.__getitem__

    def item(self, index):
        if self.mode == "validation" and index == 4:  # the second batch of 4 views
            flag.signal = "SIGUSR1"
        return real_item(self, index)

    monkeypatch.setattr(datasets.VideoClsDataset, "__getitem__", item)
    argv = [*TINY, "--data_path", str(colour_set), "--epochs", "2", "--warmup_epochs", "1"]
    try:
        assert run.main(utils.parse_with_config(run.get_args_parser(), [
            *argv, "--output_dir", str(tmp_path / "cut")])) == 0
    finally:
        flag.signal = None
        outputs.release_output_dirs()
    log = (tmp_path / "cut" / "train.log").read_text()
    assert "SIGUSR1 received: epoch 1 is saved, its validation is finished when the same " \
        "command runs again" in log and "val top-1" not in log, log
    state = torch.load(tmp_path / "cut" / "checkpoint-latest.pth", weights_only=True)
    assert (state["epoch"], state["next_batch"]) == (1, 0)
    kept = torch.load(tmp_path / "cut" / "validation_views.rank0.pt", weights_only=True)
    assert len(kept["views"]["video"]) == 8 and not (tmp_path / "cut" / "log.txt").exists()

    code, log = cli(*argv, "--output_dir", str(tmp_path / "cut"))
    assert code == 0 and "validation: 8 views done before a stop" in log, log
    code, _ = cli(*argv, "--output_dir", str(tmp_path / "whole"))
    assert code == 0
    records = [[json.loads(line) for line in open(tmp_path / folder / "log.txt")]
               for folder in ("cut", "whole")]
    assert [r["epoch"] for r in records[0]] == [0, 1]
    for cut, whole in zip(*records):
        assert cut["val_top1"] == whole["val_top1"] and cut["val_num_views"] == whole[
            "val_num_views"]
        assert cut["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    assert not list((tmp_path / "cut").glob("*_views.rank0.pt"))
    assert not (tmp_path / "cut" / "unfinished_epoch.pt").exists()
