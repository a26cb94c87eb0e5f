"""The paper's evaluation tables from a set of runs: rows are checkpoints, columns experiments.

    python tools/results_table.py RUNS_ROOT [--markdown TABLE.md] [--csv TABLE.csv]

RUNS_ROOT/CHECKPOINT/EXPERIMENT/results.json, as scripts/eval/evaluate.sh writes them. Table 1
(linear probes, top-1 %) and Table 6 (SEVERE: top-1 %, UCF-RC's normalised mean absolute error,
lower is better, Charades' mAP %), with SEVERE's mean, which counts UCF-RC as 100 x (1 - error)
as the paper's means do. The paper's rows come first, quoted from the SMILE paper (CVPR 2025),
Tables 1 and 6 (ViT-B pretrained on K400). An experiment not run (or not finished) is '-'.
"""
import argparse
import csv
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tasks import HEADLINE  # noqa: E402  (the figure each task reports)

TABLE1 = {"probe_k400": "K400", "probe_ucf101": "UCF", "probe_hmdb51": "HMDB",
          "probe_ssv2": "SSv2", "probe_gym99": "GYM", "probe_epic_verbs": "EPIC"}
SEVERE = {"severe_ssv2": "SSv2", "severe_gym99": "Gym99", "severe_ucf101_1000": "UCF (10^3)",
          "severe_gym99_1000": "GYM (10^3)", "severe_fx_s1": "FX-S1", "severe_ub_s1": "UB-S1",
          "severe_ucfrep": "UCF-RC", "severe_charades": "Charades"}
PAPER = {  # (Table 1 in TABLE1's order, Table 6 in SEVERE's order)
    "VideoMAE (paper)": ((20.7, 58.6, 37.7, 17.5, 23.9, 33.2),
                         (68.6, 86.6, 74.6, 25.9, 42.8, 65.3, 0.172, 14.4)),
    "MME (paper)": ((19.1, 56.0, 37.1, 16.6, 29.0, 32.2),
                    (70.1, 89.7, 79.2, 29.8, 55.5, 87.2, 0.155, 23.6)),
    "SMILE w/o motion (paper)": ((54.6, 82.6, 51.7, 21.6, 27.9, 32.3),
                                 (71.6, 90.0, 85.2, 32.0, 53.4, 74.3, 0.175, 30.5)),
    "SMILE (paper)": ((56.2, 83.8, 53.4, 23.7, 30.2, 34.4),
                      (72.1, 90.8, 86.4, 35.1, 55.1, 88.3, 0.170, 32.5)),
}


def severe_mean(values):
    """The mean of SEVERE's eight figures, UCF-RC's error e counted as 100 (1 - e); None when
    one is missing."""
    if any(v is None for v in values.values()):
        return None
    scores = [100 * (1 - v) if name == "severe_ucfrep" else v for name, v in values.items()]
    return sum(scores) / len(scores)


def headline(path):
    """The figure a results.json gives for its task, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            results = json.load(f)
        return float(results[HEADLINE[results.get("task", "classification")]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect(root):
    """{checkpoint: {experiment: figure}} of RUNS_ROOT, the paper's rows first."""
    rows = {name: {**dict(zip(TABLE1, table1)), **dict(zip(SEVERE, table6))}
            for name, (table1, table6) in PAPER.items()}
    for checkpoint in sorted(os.listdir(root)):  # a folder holding one experiment's at least
        if any(os.path.isdir(os.path.join(root, checkpoint, e)) for e in (*TABLE1, *SEVERE)):
            rows[checkpoint] = {experiment: headline(os.path.join(
                root, checkpoint, experiment, "results.json")) for experiment in (*TABLE1, *SEVERE)}
    for values in rows.values():
        values["severe_mean"] = severe_mean({k: values.get(k) for k in SEVERE})
    return rows


def cell(value, experiment):
    if value is None:
        return "-"
    return f"{value:.3f}" if experiment == "severe_ucfrep" else f"{value:.1f}"


def markdown(rows):
    out = io.StringIO()
    for title, columns in (("Table 1: linear probing, top-1 %", TABLE1),
                           ("Table 6: SEVERE (UCF-RC: normalised MAE, lower is better; Charades: "
                            "mAP %)", {**SEVERE, "severe_mean": "Mean"})):
        out.write(f"{title}\n\n| checkpoint | {' | '.join(columns.values())} |\n")
        out.write(f"|---|{'---|' * len(columns)}\n")
        for name, values in rows.items():
            out.write(f"| {name} | {' | '.join(cell(values.get(c), c) for c in columns)} |\n")
        out.write("\n")
    return out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_root", help="RUNS_ROOT/CHECKPOINT/EXPERIMENT/results.json")
    parser.add_argument("--markdown", default=None, help="write the tables here (else stdout)")
    parser.add_argument("--csv", default=None, help="one row per checkpoint, one column each")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs_root):
        print(f"error: {args.runs_root} is not a folder", file=sys.stderr)
        return 2
    rows = collect(args.runs_root)
    text = markdown(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    if args.csv:
        columns = [*TABLE1, *SEVERE, "severe_mean"]
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["checkpoint", *columns])
            writer.writerows([name, *("" if values.get(c) is None else f"{values[c]:.4g}"
                                      for c in columns)] for name, values in rows.items())
    return 0


if __name__ == "__main__":
    sys.exit(main())
