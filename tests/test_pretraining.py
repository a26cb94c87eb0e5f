import argparse
import functools
import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import checkpoint
import batches
import datasets
import distributed
import outputs
import engine_for_pretraining as engine
import errors
import masking_generator
import modeling_pretrain
import stop_signals
import teachers
import training
import utils


def teacher_args(**overrides):
    """build_teacher's keywords: the flags' defaults, a random teacher, tubelets of 2."""
    defaults = vars(teachers.add_args(argparse.ArgumentParser()).parse_args([]))
    keys = ("teacher_model", "teacher_input_norm", "teacher_frames")
    return {**{key: defaults[key] for key in keys}, "teacher_weights": "random",
            "tubelet_size": 2, **overrides}


def tiny_student(heads, frames=4, size=32):
    """heads: {target: width}, or the feature target's width alone."""
    return modeling_pretrain.build_student("pretrain_videomae_tiny_patch16_224", img_size=size,
                                           patch_size=16, num_frames=frames, tubelet_size=2,
                                           heads=heads)


def loader_batch(video, mask):
    """(video uint8 [B, 3, T, H, W], mask) as the loader hands them to the step
    (batches.collate_pretraining: channels last, masks as token indices)."""
    visible, masked = (torch.from_numpy(i) for i in masking_generator.mask_indices(mask.numpy()))
    channels_last = None if video is None else video.permute(0, 2, 3, 4, 1).contiguous()
    return batches.PretrainingBatch(channels_last, visible, masked, [])


def indices(mask):
    return loader_batch(None, mask)[1:3]


def train_step(student, targets, batch, optimizer, precision="fp32"):
    """One step as the runs take it: the engine's loss, then training's update (lr 1e-3).
    targets: teachers.Target list, or a teacher alone (the feature target, clip_channel)."""
    if isinstance(targets, torch.nn.Module):
        targets = [teachers.Target("feature", targets, 0, 1.0, "clip_channel",
                                   getattr(targets, "frames_per_token", 1))]
    loss_fn = functools.partial(engine.train_loss, targets=targets, device=torch.device("cpu"),
                                precision=precision)
    return training.train_step(training.Step(student, optimizer, loss_fn), batch, 1e-3,
                               update=True)


def random_mask(batch, n, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, n, generator=g).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :masked], True)
    return mask


@pytest.mark.parametrize("target", ["clip_vit_tiny", "clip_vit_b16", "dino_vit_s16",
                                    "dinov2_vit_s14", "pixel"])
def test_forward_backward_shapes(target):
    torch.manual_seed(0)
    [target] = teachers.build_targets(
        (2, 2, 2), target_type="pixel" if target == "pixel" else "feature", patch_size=16,
        target_norm="clip_channel", motion_loss_weight=0.0,
        **teacher_args(teacher_model=target if target != "pixel" else "clip_vit_tiny"))
    teacher, dim = target.module, target.dim
    video = torch.randn(2, 3, 4, 32, 32)
    target_tokens = teacher(video)
    assert target_tokens.shape == (2, 8, dim) and not target_tokens.requires_grad
    student = tiny_student(dim)
    visible, masked = indices(random_mask(2, 8, 6))
    pred = student(video, visible, masked)["feature"]
    assert pred.shape == (2, 6, dim)
    loss = engine.feature_loss(pred, engine.normalize_target(target_tokens, "clip_channel"),
                               masked)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_frozen_and_in_eval():
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    teacher.train()
    assert not teacher.training and not teacher.backbone.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_runs_a_swapped_backbone():
    """torch.compile(teacher.backbone) or any wrapper put in its place must be what runs."""
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            calls.append(images.shape[0])
            return self.inner(images)

    teacher.backbone = Counting(teacher.backbone)
    assert teacher(torch.randn(3, 3, 4, 32, 32)).shape == (3, 8, 192) and calls == [6]


def hand_clip_tokens(visual, images):
    """open_clip's own modules, step by step: the 196 (here 4) patch tokens after ln_post."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.transformer(visual.ln_pre(x))
    return visual.ln_post(x)[:, 1:]


@pytest.mark.parametrize("layout", ["open_clip", "visual_tower", "wrapped"])
def test_clip_teacher_matches_hand_computation(tmp_path, layout):
    torch.manual_seed(1)
    source = teachers.build_CLIP_image_tower(teachers.TEACHERS["clip_vit_tiny"][1], 32)
    state = source.state_dict()
    if layout == "open_clip":  # a whole CLIP model's state dict
        state = {f"visual.{k}": v for k, v in state.items()}
        state["logit_scale"] = torch.tensor(4.6)
    elif layout == "wrapped":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny",
                                                  teacher_weights=str(path)))
    video = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)  # as the loader's
    out = teacher(video)
    with torch.no_grad():  # the teacher normalises the raw frames 0 and 2 itself
        frames = utils.normalize_video(video)[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32)
        expected = hand_clip_tokens(source.eval(), frames).reshape(2, 2 * 4, -1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_clip_teacher_input_norm_and_resized_positions(tmp_path):
    torch.manual_seed(2)
    source = teachers.build_CLIP_image_tower(teachers.TEACHERS["clip_vit_tiny"][1], 64)
    path = tmp_path / "clip.pt"
    torch.save(source.state_dict(), path)
    # weights made for 64 px (4x4 grid) load into a 32 px teacher: positions are resized
    args = teacher_args(teacher_model="clip_vit_tiny", teacher_weights=str(path))
    video = torch.randn(1, 3, 2, 32, 32)
    imagenet = teachers.build_teacher((1, 2, 2), **args)(video)
    own = teachers.build_teacher((1, 2, 2), **{**args, "teacher_input_norm": "teacher"})(video)
    assert imagenet.shape == own.shape == (1, 4, 192)
    assert not torch.allclose(imagenet, own)
    older = teachers.add_args(argparse.ArgumentParser()).parse_args(["--teacher_input_norm",
                                                                     "clip"])
    assert older.teacher_input_norm == "teacher"  # the option's older name still reads


def test_wrong_teacher_weights_rejected(tmp_path):
    path = tmp_path / "not_clip.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a CLIP ViT image tower"):
        teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny",
                                            teacher_weights=str(path)))


def test_random_teacher_warns_loudly(caplog):
    teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    assert "RANDOM WEIGHTS" in caplog.text


def test_target_normalisations():
    target = torch.randn(2, 10, 4) * 3 + 5
    out = engine.normalize_target(target, "clip_channel")
    assert torch.allclose(out.mean(dim=1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(out.std(dim=1, unbiased=True), torch.ones(2, 4), atol=1e-4)
    manual = (target[0, :, 1] - target[0, :, 1].mean()) / (target[0, :, 1].std() + 1e-6)
    assert torch.allclose(out[0, :, 1], manual, atol=1e-6)
    per_token = engine.normalize_target(target, "token_layernorm")
    assert torch.allclose(per_token.mean(dim=-1), torch.zeros(2, 10), atol=1e-5)
    assert engine.normalize_target(target, "none") is target


def test_pixel_target_is_videomae():
    video = torch.randint(0, 256, (1, 3, 2, 32, 32), dtype=torch.uint8)  # as the loader's
    target = teachers.PixelTarget(16, 2)(video)
    assert target.shape == (1, 4, 2 * 16 * 16 * 3)
    pixels = video.float() / 255
    patch = pixels[0, :, 0:2, 16:32, 0:16].permute(1, 2, 3, 0).reshape(-1, 3)  # token 2
    manual = (patch - patch.mean(0)) / (patch.var(0, unbiased=True).sqrt() + 1e-6)
    assert torch.allclose(target[0, 2].view(-1, 3), manual, atol=1e-5)


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    student = tiny_student(192)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    batch = loader_batch(torch.randint(0, 255, (4, 3, 4, 32, 32), dtype=torch.uint8),
                         random_mask(4, 8, 6))
    losses = [train_step(student, teacher, batch, optimizer)["loss"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_multiple_masks_share_one_teacher_pass():
    torch.manual_seed(0)
    calls = []
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    student = tiny_student(192)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    mask = torch.stack([random_mask(3, 8, 6, seed=s) for s in (0, 1)], dim=1)  # [B, K, N]
    video = torch.randint(0, 255, (3, 3, 4, 32, 32), dtype=torch.uint8)
    out = train_step(student, teacher, loader_batch(video, mask), optimizer)
    assert calls == [3] and torch.isfinite(out["loss"])


class OpsSeen(TorchDispatchMode):
    """Records the aten operations that really run."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item",
           "aten.is_nonzero"}


def test_mask_indices_match_boolean_masking():
    mask = random_mask(3, 16, 12, seed=4)
    visible, masked = indices(mask)
    tokens = torch.arange(16).expand(3, -1)
    assert torch.equal(visible, tokens[~mask].reshape(3, 4))  # token order kept
    assert torch.equal(masked, tokens[mask].reshape(3, 12))


def test_student_and_loss_never_read_the_device_back():
    """The student and the loss select tokens by index, so nothing in them synchronises with
    the host (boolean indexing would, to size its output), and the step keeps its loss and
    gradient norm on the device."""
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    student = tiny_student(192)
    video = torch.randn(2, 3, 4, 32, 32)
    visible, masked = indices(random_mask(2, 8, 6))
    with OpsSeen() as seen:
        pred = student(video, visible, masked)["feature"]
        engine.feature_loss(pred, teacher(video), masked).backward()
    assert not seen.ops & SYNCING and "aten.index" not in seen.ops, seen.ops & SYNCING


def test_teacher_student_and_loss_compile_to_one_graph():
    """What --compile sees: token indices keep every shape static, so dynamo captures the
    teacher, the student and the loss whole (boolean masks would break the graph)."""
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    student = tiny_student(192)

    def forward(video, visible, masked):
        target = engine.normalize_target(teacher(video), "clip_channel")
        return engine.feature_loss(student(video, visible, masked)["feature"], target, masked)

    report = torch._dynamo.explain(forward)(torch.randn(2, 3, 4, 32, 32),
                                            *indices(random_mask(2, 8, 6)))
    assert (report.graph_count, report.graph_break_count) == (1, 0), report.break_reasons


class SyncsPerStep(TorchDispatchMode):
    """Counts the host-reading operations, filed under the training step that was running."""

    def __init__(self):
        super().__init__()
        self.step, self.syncs = -1, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if self.step < 0:  # before the first step: the DataLoader draws its base seed
            pass
        elif name in SYNCING or name == "aten.index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 else ())):
            self.syncs.setdefault(self.step, []).append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_training_steps_wait_on_the_host_only_to_print(tmp_path, augment_on):
    """Six steps of the real epoch loop (dataset, loader, collate, engine, fused AdamW,
    progress) with --print_freq 3: the steps in between read nothing back from the device;
    each print step reads the loss and gradient norm it prints (the mean over ranks is one
    more read with several processes; the non-finite check's copy does not show on a CPU).
    With --augment_on device the step renders the clips and their objects first."""
    from bad_files import BadFileLedger
    from media import pretrain_args
    import guard
    args = pretrain_args(background="black", num_frames=4, input_size=32,
                         num_synthetic_clips=12, augment_on=augment_on)
    dataset = datasets.build_pretraining_dataset(args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2,
                                         collate_fn=batches.collate_pretraining)
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    student = tiny_student(192)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)  # as the runs
    counter = SyncsPerStep()

    def loss_fn(model, batch):
        counter.step += 1
        return engine.train_loss(model, batch, [teachers.Target("feature", teacher, 192, 1.0,
                                                                "clip_channel")],
                                 torch.device("cpu"), "fp32")

    dist_info = distributed.Dist(0, 1, 0, torch.device("cpu"))
    ledger, flag = BadFileLedger([], 0.05, str(tmp_path), dist_info), stop_signals.stop_flag()
    watch = guard.DataWatch(guard.ReadBoard(0), ledger.describe, 60, 600, flag, None)
    run = training.Run(dist_info, 6, 1, 3, 2, lambda epoch, i: 1e-3,
                       outputs.MetricLogger(str(tmp_path), None, False), ledger, flag, watch)
    job = training.Job("stage-1 pretraining", training.Step(student, optimizer, loss_fn), loader,
                       sampler=None, dataset=dataset)
    with watch, counter:  # the run's watch thread reads nothing from the device either
        stats, _ = training.train_one_epoch(job, run, 0, 0)
    assert stats["steps"] == 6
    reads = ["aten._local_scalar_dense"] * 2  # the printed loss and gradient norm
    assert counter.syncs == {2: reads, 5: reads + reads}, counter.syncs  # 5: + epoch means


class OpsCounted(TorchDispatchMode, dict):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self[str(func.overloadpacket)] = self.get(str(func.overloadpacket), 0) + 1
        return func(*args, **(kwargs or {}))


def test_half_precision_clip_teacher_keeps_fused_attention():
    """As run with --precision bf16: ViT-B/16 weights in bf16, normalisation in fp32, and
    train_step calling the teacher outside the student's autocast, so nn.MultiheadAttention
    runs its fused inference kernel (the student has no MultiheadAttention)."""
    torch.manual_seed(0)
    teacher = teachers.build_teacher((1, 2, 2), **teacher_args(teacher_model="clip_vit_b16"))
    teacher = teachers.set_precision(teacher, "bf16")
    assert {p.dtype for p in teacher.backbone.parameters()} == {torch.bfloat16}
    assert teacher.scale.dtype == teacher.shift.dtype == torch.float32
    student = tiny_student(768, frames=2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    video = torch.randint(0, 255, (2, 3, 2, 32, 32), dtype=torch.uint8)
    with OpsSeen() as seen:
        out = train_step(student, teacher, loader_batch(video, random_mask(2, 4, 3)), optimizer,
                         "bf16")
    assert "aten._native_multi_head_attention" in seen.ops
    assert torch.isfinite(out["loss"])
    teacher.backbone.float()  # the control: fp32 weights called under autocast
    with OpsSeen() as seen, utils.autocast(torch.device("cpu"), "bf16"):
        teacher(video)
    assert "aten._native_multi_head_attention" not in seen.ops


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_loss_never_reaches_the_weights(fused):
    """Fused AdamW (what the runs use) skips the update on the device and the step returns the
    non-finite loss for the print step to stop on; any other optimiser stops at once."""
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    student = tiny_student(192)
    with torch.no_grad():
        student.decoder.head.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=fused)
    batch = loader_batch(torch.randint(0, 255, (2, 3, 4, 32, 32), dtype=torch.uint8),
                         random_mask(2, 8, 6))
    step = functools.partial(train_step, student, teacher, batch, optimizer)
    if fused:
        assert torch.isnan(step()["loss"])
    else:
        with pytest.raises(errors.NonFiniteLossError, match="loss is nan"):
            step()
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).all() for k in before)
    assert all(s["step"] == 0 for s in optimizer.state.values())  # no update counted


def test_checkpoint_keys_match_released_layout():
    student = modeling_pretrain.build_student("pretrain_videomae_base_patch16_224", 224, 16, 16,
                                              2, 768)
    keys = set(student.state_dict())
    expected = {"mask_token", "encoder_to_decoder.weight", "encoder.patch_embed.proj.weight",
                "encoder.patch_embed.proj.bias", "encoder.norm.weight", "encoder.norm.bias",
                "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight",
                "decoder.head.bias"}
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
             "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
             "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected |= {f"encoder.blocks.{i}.{k}" for i in range(12) for k in block}
    expected |= {f"decoder.blocks.{i}.{k}" for i in range(4) for k in block}
    assert keys == expected
    assert student.state_dict()["encoder_to_decoder.weight"].shape == (384, 768)
    assert student.state_dict()["mask_token"].shape == (1, 1, 384)
    assert student.state_dict()["decoder.head.weight"].shape == (768, 384)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    student = tiny_student(192)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    path = str(tmp_path / "checkpoint-latest.pth")
    checkpoint.save_checkpoint(path, dict(model=student.state_dict(), optimizer=optimizer.state_dict(),
                                     epoch=3, next_batch=0, step=30, args={"lr": 1e-3}))
    state = checkpoint.load_checkpoint(path)  # weights_only=True
    restored = tiny_student(192)
    restored.load_state_dict(state["model"])
    video, mask = torch.randn(2, 3, 4, 32, 32), random_mask(2, 8, 6)
    student.eval(), restored.eval()
    assert torch.equal(student(video, *indices(mask))["feature"],
                       restored(video, *indices(mask))["feature"])
    assert checkpoint.find_resume_checkpoint(str(tmp_path))[1]["epoch"] == 3


def test_atomic_save_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint-latest.pth")
    checkpoint.save_checkpoint(path, {"step": 1, "epoch": 1})

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"step": 2, "epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["step"] == 1


def test_find_resume_skips_torn_file_newest_first(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(str(tmp_path / "checkpoint-4.pth"), TRAINING_STATE(50, 5))
    checkpoint.save_checkpoint(str(tmp_path / "checkpoint-9.pth"), TRAINING_STATE(100, 10))
    whole = (tmp_path / "checkpoint-9.pth").read_bytes()
    (tmp_path / "checkpoint-latest.pth").write_bytes(whole[:len(whole) // 2])  # cut off copy
    (tmp_path / "checkpoint-latest.pth.tmp.123").write_bytes(b"left by a kill")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    path, state = checkpoint.find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint-9.pth") and state["step"] == 100
    # newest first, stopping at the first that loads: checkpoint-4 is never read
    assert [os.path.basename(p) for p in loads] == ["checkpoint-latest.pth", "checkpoint-9.pth"]
    assert checkpoint.find_resume_checkpoint(str(tmp_path / "empty")) is None


real_load = torch.load


def TRAINING_STATE(step, epoch):  # noqa: N802  (a table of what a checkpoint must hold)
    return {"model": {}, "optimizer": {}, "step": step, "epoch": epoch, "next_batch": 0}


@pytest.mark.parametrize("content,reason", [
    (b"hello, not a checkpoint", "not a checkpoint this framework can read"),
    ("namespace", "not a checkpoint this framework can read"),
    ("weights", r"not a training checkpoint of this framework \(no optimizer, epoch, step\)"),
])
def test_find_resume_stops_on_a_wrong_file(tmp_path, content, reason):
    """Never a silent fallback to an older file, or to epoch 0, for anything but a torn one."""
    checkpoint.save_checkpoint(str(tmp_path / "checkpoint-4.pth"), TRAINING_STATE(50, 5))
    latest = str(tmp_path / "checkpoint-latest.pth")
    if content == "namespace":
        torch.save({"args": argparse.Namespace(lr=1)}, latest)  # VideoMAE's pickled args
    elif content == "weights":
        torch.save({"model": {}}, latest)
    else:
        open(latest, "wb").write(content)
    with pytest.raises(checkpoint.CheckpointError, match=reason) as info:
        checkpoint.find_resume_checkpoint(str(tmp_path))
    assert info.value.path == latest and not info.value.torn


def test_keep_last_prunes_numbered_checkpoints(tmp_path):
    checkpoint.save_checkpoint(str(tmp_path / "checkpoint-latest.pth"), TRAINING_STATE(1, 1))
    for epoch in range(10):
        checkpoint.keep_epoch_checkpoint(str(tmp_path), epoch, 10, every=2, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-7.pth", "checkpoint-9.pth",
                                            "checkpoint-latest.pth"]
    for epoch in range(10):  # 0: keep all, every 4th and the last
        checkpoint.keep_epoch_checkpoint(str(tmp_path), epoch, 10, every=4)
    assert sorted(checkpoint.numbered_checkpoints(str(tmp_path))) == [3, 7, 9]


def test_cosine_schedule():
    lrs = [utils.cosine_lr(s, 1.0, 0.1, 10, 110, 0.0) for s in range(111)]
    assert lrs[0] == 0.0 and abs(lrs[5] - 0.5) < 1e-9 and lrs[10] == 1.0
    assert abs(lrs[60] - 0.55) < 1e-9 and abs(lrs[110] - 0.1) < 1e-9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_schedule_counts_an_epochs_last_short_group_as_an_update():
    """5 batches per epoch, --update_freq 2: updates after batches 2, 4 and 5 (the epoch's
    end), 3 per epoch; each has its own LR, none is shared across an epoch boundary, and the
    run's last update is the schedule's last."""
    settings = utils.Settings(scaled_lr=1.0, scaled_min_lr=0.0, scaled_warmup_lr=0.0,
                              warmup_epochs=0, epochs=2)
    lr_at = training.lr_schedule(settings, steps_per_epoch=5, accumulation=2)
    per_update = [lr_at(epoch, i) for epoch in range(2) for i in (0, 2, 4)]
    assert per_update == [utils.cosine_lr(u, 1.0, 0.0, 0, 6) for u in range(6)]
    assert [lr_at(0, i) for i in range(5)] == [per_update[0]] * 2 + [per_update[1]] * 2 + [
        per_update[2]]
    assert lr_at(1, 0) < lr_at(0, 4)


def test_resumable_sampler_splits_one_order():
    one = distributed.ResumableSampler(20, 4, 0, 1, seed=3)
    ranks = [distributed.ResumableSampler(20, 2, r, 2, seed=3) for r in range(2)]
    for s in [one, *ranks]:
        s.set_epoch(1)
    full = list(one)
    a, b = list(ranks[0]), list(ranks[1])
    assert sorted(a[:2] + b[:2]) == sorted(full[:4])  # global batch 0 is the same clips
    one.set_epoch(1, skip_batches=2)
    assert list(one) == full[8:] and len(one) == 12
    one.set_epoch(2)
    assert list(one) != full


def test_repeated_sampling_epochs_share_out_one_order():
    """With 2 clips per video an epoch draws half the videos: epochs 2k and 2k+1 split one
    shuffled order, so each video is decoded once per two epochs, on every rank count."""
    one = distributed.ResumableSampler(20, 2, 0, 1, seed=3, repeats=2)
    ranks = [distributed.ResumableSampler(20, 1, r, 2, seed=3, repeats=2) for r in range(2)]
    seen = []
    for epoch in range(4):
        for s in [one, *ranks]:
            s.set_epoch(epoch)
        assert len(one) == 10 and sorted(list(ranks[0]) + list(ranks[1])) == sorted(one)
        seen.append(list(one))
    assert sorted(seen[0] + seen[1]) == sorted(seen[2] + seen[3]) == list(range(20))
    assert seen[0] + seen[1] != seen[2] + seen[3]
    plain = distributed.ResumableSampler(20, 2, 0, 1, seed=3)
    plain.set_epoch(0)
    assert seen[0] + seen[1] == list(plain)  # same order as without repeats, split in two


def test_one_reader_for_every_checkpoint_layout():
    """Ours ('model'), DeepSpeed's ('module'), timm's ('state_dict'), bare tensors, a DDP
    'module.' prefix; and a checkpoint says what it is, older ones (format 1) by their args."""
    w = {"a": torch.zeros(1)}
    for state in ({"model": w}, {"module": w}, {"state_dict": w}, w,
                  {"model": {"module.a": torch.zeros(1)}}):
        assert checkpoint.model_weights(state).keys() == {"a"}
    old = {"model": w, "args": {"stage": 1, "model": "m", "num_frames": 4, "input_size": 32}}
    assert checkpoint.describe(old) == "a stage-1 pretraining checkpoint of m (4 frames, 32 px)"
    assert checkpoint.kind_of({**old, "kind": "fine-tuning", "format": 2}) == "fine-tuning"
    assert checkpoint.kind_of({"model": w}) is None  # someone else's file
    assert checkpoint.misfit({"a": torch.zeros(2), "b": torch.zeros(1)}, {"a": torch.zeros(1)}) \
        == "1 keys missing (e.g. b); 1 weights have another shape (e.g. a): (1,) in the file, " \
           "(2,) here"


def test_prediction_picture_shows_target_prediction_and_similarity():
    import pictures
    target = np.random.default_rng(0).normal(size=(8, 5))  # grid 2x2x2, 5 channels
    masked = np.array([0, 3, 5])
    picture = pictures.prediction_picture(target, target[masked], masked, (2, 2, 2), 16)
    assert picture.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3) and picture.dtype == np.uint8
    cosine = 2 * (32 + pictures.SEPARATOR)  # where the third panel starts
    assert (picture[0, cosine] == 255).all()  # token 0: masked, predicted exactly
    assert (picture[0, cosine + 16] == pictures.GREY).all()  # token 1: visible
    assert (picture[0, 34] == picture[0, 0]).all()  # a perfect prediction, the target's colour


class Brightness(torch.nn.Module):
    """A toy target written here alone: each token's mean intensity."""

    def forward(self, video):
        grey = video.float().mean(1, keepdim=True) / 255  # the raw video, as every target gets
        return torch.nn.functional.avg_pool3d(grey, (2, 16, 16)).flatten(1)[..., None]  # [B, N, 1]


def test_a_new_target_is_one_entry_in_the_table():
    """teachers.Target: the student grows a head for it, the loss weighs it in, and it trains."""
    torch.manual_seed(0)
    teacher = teachers.build_teacher((2, 2, 2), **teacher_args(teacher_model="clip_vit_tiny"))
    targets = [teachers.Target("feature", teacher, 192, 1.0, "clip_channel"),
               teachers.Target("brightness", Brightness(), 1, weight=0.5)]
    student = tiny_student({t.name: t.dim for t in targets})
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
    head = student.decoder.brightness_head.weight.detach().clone()
    batch = loader_batch(torch.randint(0, 255, (2, 3, 4, 32, 32), dtype=torch.uint8),
                         random_mask(2, 8, 6))
    out = train_step(student, targets, batch, optimizer)
    assert torch.allclose(out["loss"], out["feature_loss"] + 0.5 * out["brightness_loss"])
    assert not torch.equal(head, student.decoder.brightness_head.weight)  # its head learned
    assert "decoder.brightness_head.weight" in student.state_dict()
    assert "decoder.head.weight" in student.state_dict()  # the main target keeps its key
