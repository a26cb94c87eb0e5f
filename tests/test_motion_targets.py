"""Issue 12's targets that keep the motion inside a tubelet: --teacher_frames all and
--motion_loss_weight (shapes, hand-computed targets), and the measure of a patch embedding's
temporal filters (tools/temporal_filters.py)."""
import itertools
import json

import pytest
import torch

import engine_for_pretraining as engine
import modeling_pretrain
import teachers
from utils import normalize_video
from test_pretraining import loader_batch, random_mask, teacher_args, train_step


def build(teacher_model="clip_vit_tiny", frames="first", motion=0.0, frames_in=4):
    """-> (targets, the teacher, a student with a head per target)."""
    targets = teachers.build_targets(
        (frames_in // 2, 2, 2), target_type="feature", patch_size=16, target_norm="clip_channel",
        motion_loss_weight=motion, **teacher_args(teacher_model=teacher_model,
                                                  teacher_frames=frames))
    student = modeling_pretrain.build_student(
        "pretrain_videomae_tiny_patch16_224", img_size=32, patch_size=16, num_frames=frames_in,
        tubelet_size=2, heads={t.name: t.dim for t in targets})
    return targets, targets[0].module, student


@pytest.mark.parametrize("teacher_model", ["clip_vit_tiny", "dino_vit_s16", "dinov2_vit_s14"])
def test_all_frames_target_shape(teacher_model):
    targets, teacher, _ = build(teacher_model, "all")
    width = teachers.TEACHERS[teacher_model][3]
    assert targets[0].dim == 2 * width
    assert teacher(torch.randn(2, 3, 4, 32, 32)).shape == (2, 8, 2 * width)


@pytest.mark.parametrize("frames,motion,masks_per_clip",
                         list(itertools.product(["first", "all"], [0.0, 0.5], [1, 2])))
def test_every_combination_trains(frames, motion, masks_per_clip):
    torch.manual_seed(0)
    targets, teacher, student = build(frames=frames, motion=motion)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
    mask = torch.stack([random_mask(3, 8, 6, seed=s) for s in range(masks_per_clip)], 1)
    video = torch.randint(0, 255, (3, 3, 4, 32, 32), dtype=torch.uint8)
    batch = loader_batch(video, mask if masks_per_clip > 1 else mask[:, 0])
    out = train_step(student, targets, batch, optimizer)
    assert torch.isfinite(out["loss"])
    assert ("motion_loss" in out) == bool(motion)
    if motion:
        assert torch.allclose(out["loss"], out["feature_loss"] + motion * out["motion_loss"])
    pred = student(torch.randn(3, 3, 4, 32, 32), *(batch.visible, batch.masked)
                   if masks_per_clip == 1 else (batch.visible[:, 0], batch.masked[:, 0]))
    assert pred["feature"].shape == (3, 6, targets[0].dim)
    assert set(pred) == {t.name for t in targets}
    if motion:
        assert pred["motion"].shape == (3, 6, 16 * 16 * 3)


def test_all_frames_target_is_the_teacher_on_each_frame():
    torch.manual_seed(0)
    _, teacher, _ = build(frames="all", frames_in=4)
    video = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)  # as the loader's
    target = teacher(video)  # [2, T'=2 x 2 x 2, 2 x 192]
    normalised = normalize_video(video)  # what the backbone sees
    for b, frame in itertools.product(range(2), range(4)):
        tokens = teacher.backbone(normalised[b:b + 1, :, frame])[1][0]  # [4 patches, 192]
        t, k = divmod(frame, 2)
        assert torch.allclose(target[b, t * 4:(t + 1) * 4, k * 192:(k + 1) * 192], tokens,
                              atol=1e-5)
    first = build(frames="first", frames_in=4)[1]
    first.backbone.load_state_dict(teacher.backbone.state_dict())
    assert torch.allclose(first(video), target[..., :192], atol=1e-5)  # 'first' is its half
    # normalisation treats each frame's features as a token of their own
    per_frame = engine.normalize_target(target.reshape(2, 16, 192), "clip_channel")
    assert torch.allclose(engine.normalize_target(target, "clip_channel", 2),
                          per_frame.reshape(2, 8, 384), atol=1e-6)


def test_motion_target_by_hand():
    raw = torch.randint(0, 255, (1, 3, 4, 32, 32), dtype=torch.uint8)
    target = teachers.PixelTarget(16, 2, motion=True)(raw)
    assert target.shape == (1, 8, 16 * 16 * 3)
    pixels = raw.double() / 255
    t, h, w = 1, 0, 1  # token 1 * 4 + 0 * 2 + 1 = 5: frames 2 and 3, rows 0-15, columns 16-31
    tubelet = pixels[0, :, 2 * t:2 * t + 2, h * 16:(h + 1) * 16, w * 16:(w + 1) * 16]
    tubelet = tubelet.reshape(3, 2 * 256)  # VideoMAE's normalisation, per channel
    tubelet = (tubelet - tubelet.mean(1, keepdim=True)) / (tubelet.std(1, keepdim=True) + 1e-6)
    expected = tubelet[:, 256:] - tubelet[:, :256]  # then frame 3 - frame 2
    assert torch.allclose(target[0, 5].reshape(256, 3).T.double(), expected, atol=1e-4)


def test_motion_target_of_a_still_patch_is_small_whatever_its_noise():
    torch.manual_seed(0)
    still = torch.randint(40, 200, (1, 3, 1, 32, 32)).repeat(1, 1, 4, 1, 1)
    noisy = (still + torch.randint(-2, 3, still.shape)).to(torch.uint8)  # codec-like noise
    moving = still.clone().to(torch.uint8)
    moving[:, :, 3] = torch.roll(still[:, :, 3], 4, dims=-1)  # a 4 px shift inside tubelet 1
    motion = teachers.PixelTarget(16, 2, motion=True)
    noise_energy = motion(noisy).square().mean()
    move_energy = motion(moving)[:, 4:].square().mean()
    assert noise_energy < 0.05 < 1 < move_energy  # a unit-variance target would be ~1 for both


def test_difference_share_separates_averaging_from_change():
    from tools.temporal_filters import difference_share
    torch.manual_seed(0)
    frame = torch.randn(64, 3, 1, 16, 16)
    averaging, change = torch.cat([frame, frame], 2), torch.cat([frame, -frame], 2)
    first_only = torch.cat([frame, torch.zeros_like(frame)], 2)
    assert difference_share(averaging) == pytest.approx(0, abs=1e-12)
    assert difference_share(change) == pytest.approx(1)
    assert difference_share(first_only) == pytest.approx(0.5)  # sees the change, and the sum
    assert difference_share(torch.randn(64, 3, 2, 16, 16)) == pytest.approx(0.5, abs=0.01)
    mixed = torch.cat([averaging[:48], change[48:]])
    assert difference_share(mixed) == pytest.approx(0.25, abs=0.01)  # energy-weighted
    assert difference_share(mixed, per_filter=True).tolist() == pytest.approx([0] * 48 + [1] * 16)
    longer = torch.cat([frame, frame, -frame], 2)  # pairs (0, 1) averaging, (1, 2) change
    assert difference_share(longer) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tubelet >= 2"):
        difference_share(frame)


def test_temporal_filters_reads_pretraining_and_fine_tuning_checkpoints(tmp_path, capsys):
    from conftest import save_random_student
    from tools import temporal_filters
    pretrained = save_random_student(tmp_path / "pretrain.pth")
    weights = torch.load(pretrained, weights_only=True)["model"]
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("enc")}
    encoder["patch_embed.proj.weight"] = encoder["patch_embed.proj.weight"][:, :, :1].repeat(
        1, 1, 2, 1, 1)  # a fine-tuned encoder that averages its tubelets, under DeepSpeed's key
    torch.save({"module": encoder}, tmp_path / "finetuned.pth")
    temporal_filters.main([pretrained, str(tmp_path / "finetuned.pth"),
                           "--json", str(tmp_path / "shares.json")])
    lines = capsys.readouterr().out.splitlines()
    assert "pretrain.pth: difference share" in lines[0]
    assert float(lines[0].split("share ")[1].split()[0]) == pytest.approx(0.5, abs=0.02)  # init
    assert "finetuned.pth: difference share 0.000" in lines[1] and "192 filters" in lines[1]
    shares = json.loads((tmp_path / "shares.json").read_text())
    assert shares[str(tmp_path / "finetuned.pth")]["filter_q90"] == pytest.approx(0)
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(SystemExit) as stopped:
        temporal_filters.main([str(tmp_path / "other.pth")])
    assert stopped.value.code == 2  # a usage error, in one line
    assert "expected one video patch embedding" in capsys.readouterr().err
