"""A low-shot subset of an annotation list: exactly N rows, stratified by label, seeded (SEVERE's
sample efficiency: fine-tuning on 1,000 training videos of UCF-101 and of Gym-99).

    python tools/subset_list.py LIST OUT_LIST N [--seed 0] [--task classification]

Each label gets N x its share of the list, rounded down, and the rows still missing go to the
labels with the largest remainders (ties broken by the seed); within a label the rows are drawn
by the seed. The rows keep their text (segments, several labels) and their order in LIST, and
its '# frame_stride' line. A multi-label list is stratified by its label sets.
SEVERE drew its subsets with its own code and did not publish them: figures from this tool's
subsets are comparable to each other, and close to, not the same as, the paper's.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import exit_usage  # noqa: E402
from lists import TASKS, parse_line  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="the annotation list to draw from (e.g. train.csv)")
    parser.add_argument("out_list", help="where the subset is written")
    parser.add_argument("num", type=int, help="how many rows the subset has")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="classification", choices=TASKS,
                        help="how the rows' labels read (as the training flag)")
    return parser.parse_args(argv)


def quotas(sizes, num, rng):
    """Rows per label: num * share rounded down, then one more for the largest remainders."""
    sizes = np.asarray(sizes)
    exact = num * sizes / sizes.sum()
    counts = np.floor(exact).astype(int)
    tie_break = rng.permutation(len(sizes))
    order = sorted(range(len(sizes)), key=lambda k: (-(exact[k] - counts[k]), tie_break[k]))
    for k in order[:num - counts.sum()]:
        counts[k] += 1
    return counts


def subset(rows, labels, num, seed):
    """Indices into rows of the stratified subset, in the rows' order."""
    rng = np.random.default_rng(seed)
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = sorted(groups, key=str)
    chosen = []
    for key, count in zip(keys, quotas([len(groups[k]) for k in keys], num, rng)):
        chosen += rng.choice(groups[key], size=count, replace=False).tolist()
    return sorted(chosen)


def main(argv=None):
    args = get_args(argv)
    if not os.path.isfile(args.list):
        exit_usage(f"{args.list} is not a file")
    settings, rows, labels = [], [], []
    with open(args.list, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                entry = parse_line(line, task=args.task)
            except ValueError as err:
                exit_usage(f"{args.list}:{lineno}: {err}")
            if entry:
                rows.append(line.rstrip("\n"))
                labels.append(entry[1])
            elif line.split()[1:2] == ["frame_stride"]:
                settings.append(line.rstrip("\n"))
    if not 1 <= args.num <= len(rows):
        exit_usage(f"N = {args.num}: {args.list} has {len(rows)} rows; N must be in [1, "
                   f"{len(rows)}]")
    chosen = subset(rows, labels, args.num, args.seed)
    with open(args.out_list, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in settings + [rows[i] for i in chosen])
    print(f"{args.out_list}: {len(chosen)} of {len(rows)} rows, {len(set(labels))} labels, "
          f"seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
