"""Does a student's patch embedding see what changes inside a tubelet, or average it away?

    python tools/temporal_filters.py CHECKPOINT [CHECKPOINT ...] [--json OUT.json]

The patch embedding is a Conv3d whose filters span --tubelet_size frames. For two consecutive
frames a, b of a filter W, its difference share is

    |W_b - W_a|^2 / (|W_b - W_a|^2 + |W_b + W_a|^2)

the part of the filter's energy that responds to the change between the frames rather than to
their sum (averaged over consecutive pairs for longer tubelets). Filters unrelated across frames
(a random init) sit near 0.5; a filter that averages the frames is near 0 and cannot tell a
moving tubelet from a still one. Printed per checkpoint over all filters together, with the
spread over single filters. Pretraining, fine-tuning and the authors' checkpoints all read.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint  # noqa: E402
from errors import exit_usage  # noqa: E402


def difference_share(weight, per_filter=False):
    """weight [D, 3, tubelet, p, p] -> the difference share over all D filters (a float), or
    per filter ([D] tensor)."""
    if weight.dim() != 5 or weight.shape[2] < 2:
        raise ValueError(f"expected a [D, 3, tubelet >= 2, p, p] filter bank, got "
                         f"{tuple(weight.shape)}")
    dims = (1, 3, 4) if per_filter else (0, 1, 3, 4)
    weight = weight.double()
    change = (weight[:, :, 1:] - weight[:, :, :-1]).square().sum(dims)
    total = 2 * (weight[:, :, 1:].square() + weight[:, :, :-1].square()).sum(dims)
    share = (change / total).mean(-1)  # each consecutive pair weighs the same
    return share if per_filter else share.item()


def patch_embedding(path):
    """The [D, 3, tubelet, p, p] patch-embedding weight in a checkpoint file."""
    state = checkpoint.model_weights(checkpoint.load_checkpoint(path))
    found = {k: v for k, v in state.items() if k.endswith("patch_embed.proj.weight")
             and not k.startswith("decoder")}
    if len(found) != 1 or next(iter(found.values())).dim() != 5:
        shapes = {k: tuple(v.shape) for k, v in found.items()}
        raise checkpoint.CheckpointError(path, "expected one video patch embedding "
                                               f"(*patch_embed.proj.weight, 5-D), found {shapes}")
    return next(iter(found.values()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--json", help="also write {checkpoint: {share, per-filter quantiles}}")
    args = p.parse_args(argv)
    results = {}
    for path in args.checkpoints:
        try:
            weight = patch_embedding(path)
        except checkpoint.CheckpointError as err:
            exit_usage(err)
        per_filter = difference_share(weight, per_filter=True)
        q10, q50, q90 = torch.quantile(per_filter, torch.tensor([0.1, 0.5, 0.9],
                                                                dtype=per_filter.dtype)).tolist()
        results[path] = {"share": difference_share(weight), "filter_q10": q10,
                         "filter_median": q50, "filter_q90": q90}
        print(f"{path}: difference share {results[path]['share']:.3f} (single filters: median "
              f"{q50:.3f}, 10-90% {q10:.3f}-{q90:.3f}; {weight.shape[0]} filters over "
              f"{weight.shape[2]} frames)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
