"""A checkpoint as a Hugging Face `transformers` VideoMAE folder, for colleagues' tools.

    python tools/export_hf.py CHECKPOINT OUT_DIR [--num_frames N] [--input_size S]

A pretraining checkpoint (stage 1 or 2, ours or the authors') becomes the encoder,
`VideoMAEModel.from_pretrained(OUT_DIR)`; a fine-tuned one the classifier,
`VideoMAEForVideoClassification.from_pretrained(OUT_DIR)`, with its head and label count.
config.json comes from the checkpoint's own record (frames, size and pooling from its build
keywords or arguments; width, depth, patch and tubelet from the weights' shapes); the weights
go to model.safetensors. The folder is written only after transformers' model took every
weight strictly: nothing missing, nothing left over. Mapping: hf_videomae.py.
Feed the model `pixel_values` [B, T, 3, H, W], ImageNet-normalised (ours: [B, 3, T, H, W]).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint  # noqa: E402
import hf_videomae  # noqa: E402
from errors import exit_usage  # noqa: E402


def export(path, out_dir, num_frames=None, input_size=None, raw_weights=False):
    """-> (transformers class name, its config, which weights). Raises CheckpointError /
    ValueError. Of a run fine-tuned with --model_ema, the EMA weights it scored."""
    from transformers import VideoMAEForVideoClassification, VideoMAEModel
    state, which = checkpoint.scored(checkpoint.load_checkpoint(path), raw_weights)
    weights = checkpoint.model_weights(state)
    if any(k.startswith("encoder.") for k in weights):  # pretraining: the encoder alone
        weights = {k[len("encoder."):]: v for k, v in weights.items()
                   if k.startswith("encoder.")}
    record, saved = state.get("model_kwargs") or {}, state.get("args") or {}
    frames = num_frames or record.get("num_frames") or saved.get("num_frames")
    size = input_size or record.get("img_size") or saved.get("input_size")
    if not frames or not size:
        raise ValueError(f"{path} does not record its frames and input size: give "
                         "--num_frames and --input_size")
    if "patch_embed.proj.weight" not in weights:
        raise ValueError(f"{path} holds no video ViT encoder (no patch_embed.proj.weight)")
    classes = weights["head.weight"].shape[0] if "head.weight" in weights else 0
    config = hf_videomae.config(weights, frames, size, classes)
    config.smile = dict(checkpoint=os.path.abspath(path), kind=checkpoint.kind_of(state),
                        weights=which)
    model = (VideoMAEForVideoClassification if classes else VideoMAEModel)(config)
    model.load_state_dict(hf_videomae.to_transformers(weights, classifier=bool(classes)),
                          strict=True)
    model.save_pretrained(out_dir)
    return type(model).__name__, config, which


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("output_dir")
    p.add_argument("--num_frames", type=int, help="for a checkpoint that does not record it")
    p.add_argument("--input_size", type=int, help="for a checkpoint that does not record it")
    p.add_argument("--raw_weights", action="store_true",
                   help="of a run fine-tuned with --model_ema: the raw weights, not the EMA "
                        "ones it scored")
    args = p.parse_args(argv)
    try:
        name, config, which = export(args.checkpoint, args.output_dir, args.num_frames,
                                     args.input_size, args.raw_weights)
    except (checkpoint.CheckpointError, ValueError, RuntimeError) as err:
        exit_usage(str(err).splitlines()[0])
    print(f"wrote {which} of {args.checkpoint} to {args.output_dir}: transformers.{name}.from_pretrained({args.output_dir!r}) "
          f"loads it ({config.num_hidden_layers} blocks of {config.hidden_size}, "
          f"{config.num_frames} frames x {config.image_size} px, tubelet {config.tubelet_size}"
          + (f", {config.num_labels} classes" if name != "VideoMAEModel" else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
