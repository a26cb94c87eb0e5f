"""Picture of one pretraining sample: original frames, motion-infused frames, and the token mask.

    python tools/visualize_infusion.py --output_dir runs/vis [pretraining data flags...]

Writes infusion_<index>.png (rows: original, infused, mask overlay; masked tokens dimmed,
object tokens outlined in red) and infusion_<index>.gif (infused | mask overlay), and prints the
mask statistics. Takes the same data flags as run_smile_pretraining.py.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import masking_generator  # noqa: E402
import motion_infusion  # noqa: E402
import object_banks  # noqa: E402
from errors import exit_usage  # noqa: E402
from pictures import mask_overlay  # noqa: E402
from utils import settled  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for module in (datasets, motion_infusion, object_banks, masking_generator):
        module.add_args(parser)
    datasets.add_pretraining_args(parser)
    parser.add_argument("--output_dir", default="runs/visualize")
    parser.add_argument("--index", type=int, default=0, help="which sample of the dataset")
    parser.add_argument("--num_samples", type=int, default=1)
    return parser.parse_args(argv)


def render(dataset, index, output_dir, args):
    s = dataset.stages(index, dataset.rng(index))
    grid = dataset.grid
    overlay = mask_overlay(s["infused"], s["mask"], s["object_tokens"], grid, args.patch_size,
                           args.tubelet_size)
    rows = [np.concatenate(list(frames), axis=1) for frames in (s["original"], s["infused"],
                                                                overlay)]
    png = os.path.join(output_dir, f"infusion_{index}.png")
    Image.fromarray(np.concatenate(rows, axis=0)).save(png)
    gif = os.path.join(output_dir, f"infusion_{index}.gif")
    frames = [Image.fromarray(np.concatenate([a, b], axis=1)) for a, b in zip(s["infused"],
                                                                             overlay)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=125, loop=0)
    n_obj = int(s["object_tokens"].sum())
    visible_obj = int((s["object_tokens"] & ~s["mask"]).sum())
    print(f"sample {index}: {s['mask'].sum()} of {s['mask'].size} tokens masked; "
          f"{n_obj} object tokens ({visible_obj} visible) -> {png}, {gif}")
    return png, gif


def main(argv=None):
    args = get_args(argv)  # stage 1 unless --mask_type tube --infusion_prob 0 say stage 2
    args = settled(args, **datasets.implied_by_stage(args, 1))
    try:
        datasets.check_args(args)
    except ValueError as err:
        exit_usage(err)
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = datasets.build_pretraining_dataset(args)
    for index in range(args.index, args.index + args.num_samples):
        render(dataset, index % len(dataset), args.output_dir, args)


if __name__ == "__main__":
    main()
