"""Cosine similarity of frame-level features across a clip (paper Fig. 4).

    python tools/feature_similarity.py --video clip.mp4 --checkpoints a.pth b.pth \\
        [--model vit_base_patch16_224 --num_frames 16 --input_size 224] --output_dir runs/sim

For each checkpoint (pretraining or fine-tuned; 'random' for an untrained encoder), the clip's
tokens after the encoder are averaged over space per temporal slice, giving T' frame-level
features; their T' x T' cosine similarities are printed, written to similarity.json and drawn
as one heatmap per checkpoint, side by side, on one colour scale, in similarity.png. Features
that barely change from frame to frame (similarity near 1 everywhere) carry little motion.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import modeling_finetune  # noqa: E402
from utils import normalize_video  # noqa: E402
from video_io import DECODERS, dense_indices, read_clip  # noqa: E402
from video_transforms import resize_short_side, to_tensor, view_crop  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--model", default="vit_base_patch16_224",
                   choices=[f"vit_{size}_patch16_224" for size in modeling_finetune.SIZES])
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--video_backend", default="pyav", choices=tuple(DECODERS))
    p.add_argument("--output_dir", default="runs/feature_similarity")
    return p.parse_args(argv)


def frame_similarity(encoder, clip, grid):
    """clip float [1, 3, T, H, W] -> cosine similarity [T', T'] of per-slice mean features."""
    with torch.no_grad():
        tokens = encoder.forward_features(clip)[0]          # [N, D]
    frames = tokens.reshape(grid[0], grid[1] * grid[2], -1).mean(dim=1)
    frames = F.normalize(frames, dim=-1)
    return (frames @ frames.T).numpy()


def heatmap(matrix, low, cell=24, label=""):
    """Colours span [low, 1], the same for every checkpoint so the panels compare."""
    scaled = np.clip((matrix - low) / max(1 - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    image = cv2.applyColorMap(cv2.resize(scaled, None, fx=cell, fy=cell,
                                         interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_VIRIDIS)
    image = cv2.copyMakeBorder(image, 22, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(image, label[:28], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return image


def main(argv=None):
    args = get_args(argv)
    size = args.model.split("_")[1]
    frames = read_clip(args.video, args.video_backend,
                       lambda n: dense_indices(n, args.num_frames, args.sampling_rate))
    frames = view_crop(resize_short_side(frames, args.input_size), args.input_size, 0, 1)
    clip = normalize_video(to_tensor(frames))[None]
    grid = (args.num_frames // args.tubelet_size, args.input_size // 16, args.input_size // 16)
    os.makedirs(args.output_dir, exist_ok=True)
    results = {}
    for path in args.checkpoints:
        torch.manual_seed(0)
        encoder = modeling_finetune.build_encoder(
            size, img_size=args.input_size, patch_size=16, num_frames=args.num_frames,
            tubelet_size=args.tubelet_size, num_classes=0, use_mean_pooling=False).eval()
        if path != "random":
            modeling_finetune.load_pretrained(encoder, path)
        matrix = frame_similarity(encoder, clip, grid)
        off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
        results[path] = dict(matrix=matrix.round(4).tolist(),
                             mean_off_diagonal=float(off_diagonal.mean()))
        print(f"{path}: mean similarity between different frames "
              f"{off_diagonal.mean():.3f}\n{np.array2string(matrix, precision=2)}")
    low = min(np.min(r["matrix"]) for r in results.values())
    images = [heatmap(np.array(r["matrix"]), low, label=os.path.basename(p))
              for p, r in results.items()]
    print(f"colour scale: {low:.3f} (dark) .. 1 (bright)")
    with open(os.path.join(args.output_dir, "similarity.json"), "w") as f:
        json.dump(results, f, indent=1)
    png = os.path.join(args.output_dir, "similarity.png")
    cv2.imwrite(png, np.concatenate(images, axis=1))
    print(f"-> {png}")


if __name__ == "__main__":
    main()
