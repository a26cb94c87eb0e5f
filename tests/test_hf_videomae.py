"""Hugging Face transformers VideoMAE both ways: our checkpoints exported and loaded by
transformers give our features and logits; transformers' folders load into --finetune."""
import pytest
import torch

import checkpoint
import hf_videomae
import modeling_finetune
import run_class_finetuning as finetuning
from conftest import run_script, save_random_student

transformers = pytest.importorskip("transformers")
VIDEO = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_classifier(classes=3, pooling=True):
    torch.manual_seed(1)  # init_scale 1: a head whose logits are not all near 0
    return modeling_finetune.build_encoder("tiny", img_size=32, patch_size=16, num_frames=4,
                                           tubelet_size=2, num_classes=classes, init_scale=1.0,
                                           use_mean_pooling=pooling).eval()


def export(path, out):
    code, log = run_script("tools/export_hf.py", str(path), str(out))
    assert code == 0, log
    assert "loads it (12 blocks of 192, 4 frames x 32 px, tubelet 2" in log
    return log


@pytest.mark.slow
def test_a_pretraining_checkpoint_exports_to_the_same_features(tmp_path):
    """A stage-1-layout checkpoint recording only its weights: frames and size as flags."""
    path = save_random_student(tmp_path / "pretrained.pth")
    code, log = run_script("tools/export_hf.py", str(path), str(tmp_path / "hf"))
    assert code == 2 and "give --num_frames and --input_size" in log, log
    code, log = run_script("tools/export_hf.py", str(path), str(tmp_path / "hf"),
                           "--num_frames", "4", "--input_size", "32")
    assert code == 0 and "VideoMAEModel.from_pretrained" in log, log
    theirs, info = transformers.VideoMAEModel.from_pretrained(tmp_path / "hf",
                                                              output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    ours = modeling_finetune.build_encoder("tiny", img_size=32, patch_size=16, num_frames=4,
                                           tubelet_size=2, num_classes=0,
                                           use_mean_pooling=False).eval()
    weights = checkpoint.model_weights(checkpoint.load_checkpoint(str(path)))
    ours.load_state_dict({k[len("encoder."):]: v for k, v in weights.items()
                          if k.startswith("encoder.")})
    with torch.no_grad():
        expected = ours.forward_features(VIDEO)
        got = theirs.eval()(pixel_values=VIDEO.transpose(1, 2)).last_hidden_state
    assert torch.allclose(expected, got, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("pooling,ema", [(True, False), (False, True)])
def test_a_fine_tuned_checkpoint_exports_to_the_same_logits(tmp_path, pooling, ema):
    """With ema, a run fine-tuned with --model_ema: its EMA weights are the ones it scored,
    and the ones exported; its raw weights are other ones."""
    ours = tiny_classifier(pooling=pooling)
    state = {"model": ours.state_dict(), "kind": "fine-tuning",
             "model_kwargs": dict(num_frames=4, img_size=32)}
    if ema:  # timm's ModelEmaV3 keys ('module.'), and raw weights of another model
        state.update(scored="model_ema", model={k: v + 1 for k, v in ours.state_dict().items()},
                     model_ema={f"module.{k}": v for k, v in ours.state_dict().items()})
    torch.save(state, tmp_path / "ft.pth")
    log = export(tmp_path / "ft.pth", tmp_path / "hf")
    assert ("wrote its EMA weights, which the run scored" in log) == ema, log
    theirs, info = transformers.VideoMAEForVideoClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    assert theirs.config.num_labels == 3 and theirs.config.use_mean_pooling == pooling
    with torch.no_grad():
        got = theirs.eval()(pixel_values=VIDEO.transpose(1, 2)).logits
        expected = ours(VIDEO)
    assert expected.abs().max() > 0.05  # a head that says something
    assert torch.allclose(expected, got, atol=1e-4)  # fc_norm's eps: 1e-5 there, 1e-6 here


@pytest.mark.parametrize("where", ["folder", "safetensors"])
def test_finetune_starts_from_a_transformers_folder(tmp_path, where):
    """Public VideoMAE weights a user fetched: --finetune takes the folder or its
    model.safetensors, and our model then computes transformers' logits."""
    config = hf_videomae.config(tiny_classifier().state_dict(), 4, 32, num_classes=3)
    torch.manual_seed(2)
    theirs = transformers.VideoMAEForVideoClassification(config).eval()
    theirs.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / ("model.safetensors" if where == "safetensors" else "")
    args = finetuning.get_args_parser().parse_args([
        "--model", "vit_tiny_patch16_224", "--num_frames", "4", "--input_size", "32",
        "--nb_classes", "3", "--finetune", str(path), "--eval", "--device", "cpu"])
    ours = finetuning.build_model(args, 3).eval()
    report = finetuning.load_weights(ours, args)
    assert not report["missing"] and not report["unexpected"], report
    with torch.no_grad():
        assert torch.allclose(ours(VIDEO), theirs(pixel_values=VIDEO.transpose(1, 2)).logits,
                              atol=1e-4)


def test_names_map_both_ways():
    weights = tiny_classifier().state_dict()
    there = hf_videomae.to_transformers(weights, classifier=True)
    assert "videomae.encoder.layer.11.attention.attention.key.weight" in there
    back = hf_videomae.from_transformers(there)
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)
