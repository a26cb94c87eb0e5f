"""The evaluation datasets' published annotation files -> this framework's lists (train.csv,
val.csv, test.csv in OUT_DIR; val.csv repeats test.csv where a dataset has no validation split
of its own, as the papers evaluate).

    python tools/convert_annotations.py DATASET ANNOTATIONS OUT_DIR [--fold 1] [--subset S]

    k400      Kinetics-400's train.csv, validate.csv (label, youtube_id, time_start, time_end;
              classes numbered in sorted order)      -> 'LABEL_NAME/ID_000010_000020.mp4 LABEL'
    ssv2      something-something-v2-labels.json, -train.json, -validation.json
                                                              -> 'ID.webm LABEL'
    ucf101    UCF101TrainTestSplits-RecognitionTask: classInd.txt, trainlist0F.txt,
              testlist0F.txt (--fold F)                       -> 'CLASS/v_X.avi LABEL'
    hmdb51    testTrainMulti_7030_splits: CLASS_test_splitF.txt (1 train, 2 test)
                                                              -> 'CLASS/X.avi LABEL'
    epic100   epic-kitchens-100-annotations: EPIC_100_train.csv, EPIC_100_validation.csv
              (verb_class; the test labels are not public: validation is the test)
                                                   -> 'P01/videos/P01_01.MP4 START END VERB'
    gym99     FineGym v1.1: gym99_train_element_v1.1.txt, gym99_val_element.txt; --subset
              FX-S1 (Gym-99 classes 6-16) or UB-S1 (74-88), relabelled from 0, as SEVERE's
              datasets/gym_set_*.py                           -> 'ID.mp4 LABEL' (trimmed clips)
    charades  Charades_v1_train.csv, Charades_v1_test.csv ('actions': cNNN START END;...)
                                                   -> 'ID.mp4 L,L,...' (--task multi_label)
    ucfrep    UCFRep (Zhang et al., CVPR 2020, as SEVERE uses it): annotations/{train,val}/
              v_X.mat (start_frame, end_frame, temporal_bound) -> 'CLASS/v_X.avi START END COUNT'
              (--task counting; the count is the repetitions between the bounds)

Frame numbers in the published files count from 1; the lists count from 0. A row the converter
cannot read stops it with one line naming the file and row; a video without any label (Charades)
or with fewer than two repetitions (UCFRep, as SEVERE skips them) is left out and counted.
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import exit_usage  # noqa: E402

GYM_SUBSETS = {"FX-S1": range(6, 17), "UB-S1": range(74, 89)}  # SEVERE's gym_set_*.py


class RowError(ValueError):
    def __init__(self, path, row, why):  # row 0: the file (or folder) as a whole
        super().__init__(f"{path}:{row}: {why}" if row else f"{path}: {why}")


def read_rows(path):
    """[(row number, words)] of a whitespace-separated file."""
    if not os.path.isfile(path):
        raise RowError(path, 0, "not found (--help lists the files of each dataset)")
    with open(path, encoding="utf-8-sig") as f:
        return [(n, line.split()) for n, line in enumerate(f, start=1) if line.strip()]


def read_csv(path, columns):
    if not os.path.isfile(path):
        raise RowError(path, 0, "not found (--help lists the files of each dataset)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if missing := [c for c in columns if c not in (reader.fieldnames or [])]:
            raise RowError(path, 1, f"no column {missing[0]!r} (columns: {reader.fieldnames})")
        return [(n, row) for n, row in enumerate(reader, start=2)]


def number(path, row, text, what):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise RowError(path, row, f"{what} {text!r} is not an integer") from None


def k400(folder, fold, subset):
    splits, classes = {}, None
    for split, name in (("train", "train.csv"), ("test", "validate.csv")):
        path = os.path.join(folder, name)
        rows = read_csv(path, ("label", "youtube_id", "time_start", "time_end"))
        classes = classes or {c: k for k, c in enumerate(sorted({r["label"] for _, r in rows}))}
        splits[split] = []
        for row, r in rows:
            if r["label"] not in classes:
                raise RowError(path, row, f"class {r['label']!r} is not one of train.csv's")
            start, end = (number(path, row, r[k], k) for k in ("time_start", "time_end"))
            splits[split].append(f"{r['label'].replace(' ', '_')}/{r['youtube_id']}_"
                                 f"{start:06d}_{end:06d}.mp4 {classes[r['label']]}")
    return splits, {}


def ssv2(folder, fold, subset):
    def load(name):
        path = os.path.join(folder, f"something-something-v2-{name}.json")
        try:
            with open(path) as f:
                return path, json.load(f)
        except (OSError, ValueError) as err:
            raise RowError(path, 0, f"unreadable ({type(err).__name__}: {err})") from None
    _, labels = load("labels")
    splits = {}
    for split, name in (("train", "train"), ("test", "validation")):
        path, videos = load(name)
        rows = []
        for row, video in enumerate(videos, start=1):
            template = video.get("template", "").replace("[", "").replace("]", "")
            if template not in labels:
                raise RowError(path, row, f"template {template!r} is not in the labels file")
            rows.append(f"{video['id']}.webm {labels[template]}")
        splits[split] = rows
    return splits, {}


def ucf101(folder, fold, subset):
    classes = {}
    for row, words in read_rows(os.path.join(folder, "classInd.txt")):
        classes[words[-1]] = number("classInd.txt", row, words[0], "class index") - 1
    splits = {}
    for split, name in (("train", f"trainlist{fold:02d}.txt"), ("test", f"testlist{fold:02d}.txt")):
        path, rows = os.path.join(folder, name), []
        for row, words in read_rows(path):
            video = words[0]
            if video.split("/")[0] not in classes:
                raise RowError(path, row, f"class {video.split('/')[0]!r} is not in classInd.txt")
            rows.append(f"{video} {classes[video.split('/')[0]]}")
        splits[split] = rows
    return splits, {}


def hmdb51(folder, fold, subset):
    files = sorted(glob.glob(os.path.join(folder, f"*_test_split{fold}.txt")))
    if len(files) != 51:
        raise RowError(folder, 0, f"{len(files)} files *_test_split{fold}.txt, HMDB-51 has 51")
    splits = {"train": [], "test": []}
    for label, path in enumerate(files):
        name = os.path.basename(path)[:-len(f"_test_split{fold}.txt")]
        for row, words in read_rows(path):
            kind = number(path, row, words[-1] if len(words) == 2 else None, "split mark")
            if kind in (1, 2):
                splits["train" if kind == 1 else "test"].append(f"{name}/{words[0]} {label}")
    return splits, {}


def epic100(folder, fold, subset):
    splits = {}
    for split, name in (("train", "EPIC_100_train.csv"), ("test", "EPIC_100_validation.csv")):
        path, rows = os.path.join(folder, name), []
        for row, r in read_csv(path, ("participant_id", "video_id", "start_frame", "stop_frame",
                                      "verb_class")):
            start, stop = (number(path, row, r[k], k) for k in ("start_frame", "stop_frame"))
            rows.append(f"{r['participant_id']}/videos/{r['video_id']}.MP4 {start - 1} "
                        f"{stop - 1} {number(path, row, r['verb_class'], 'verb_class')}")
        splits[split] = rows
    return splits, {}


def gym99(folder, fold, subset):
    keep = GYM_SUBSETS.get(subset)
    if subset and keep is None:
        raise RowError(folder, 0, f"--subset {subset}: one of {', '.join(GYM_SUBSETS)}")
    splits = {}
    for split, name in (("train", "gym99_train_element_v1.1.txt"),
                        ("test", "gym99_val_element.txt")):
        path, rows = os.path.join(folder, name), []
        for row, words in read_rows(path):
            label = number(path, row, words[-1] if len(words) == 2 else None, "label")
            if keep is None or label in keep:
                clip = os.path.splitext(words[0])[0]
                rows.append(f"{clip}.mp4 {label - (keep.start if keep else 0)}")
        splits[split] = rows
    return splits, {}


def charades(folder, fold, subset):
    splits, unlabelled = {}, {}
    for split, name in (("train", "Charades_v1_train.csv"), ("test", "Charades_v1_test.csv")):
        path, rows = os.path.join(folder, name), []
        for row, r in read_csv(path, ("id", "actions")):
            actions = [a.split() for a in r["actions"].split(";") if a.strip()]
            if not actions:
                unlabelled[split] = unlabelled.get(split, 0) + 1
                continue
            if any(len(a) != 3 or not a[0][:1] == "c" for a in actions):
                raise RowError(path, row, f"actions {r['actions']!r}: expected "
                               "'cNNN START END;...'")
            labels = sorted({number(path, row, a[0][1:], "action class") for a in actions})
            rows.append(f"{r['id']}.mp4 {','.join(map(str, labels))}")
        splits[split] = rows
    return splits, {"without any action": unlabelled}


def ucfrep(folder, fold, subset):
    from scipy.io import loadmat
    splits, short = {}, {}
    for split, name in (("train", "train"), ("test", "val")):
        files = sorted(glob.glob(os.path.join(folder, name, "*.mat")))
        if not files:
            raise RowError(os.path.join(folder, name), 0, "no .mat annotation files")
        rows = []
        for path in files:
            try:
                label = loadmat(path)["label"][0, 0]
                start, end = int(label["start_frame"][0, 0]), int(label["end_frame"][0, 0])
                bounds = np.asarray(label["temporal_bound"]).ravel()
            except Exception as err:
                raise RowError(path, 0, f"unreadable ({type(err).__name__}: {err})") from None
            if len(bounds) < 3:
                short[split] = short.get(split, 0) + 1
                continue
            video = os.path.basename(path)[:-4]
            rows.append(f"{video[2:-8]}/{video}.avi {start - 1} {end - 1} {len(bounds) - 1}")
        splits[split] = rows
    return splits, {"with fewer than 2 repetitions": short}


CONVERTERS = dict(k400=k400, ssv2=ssv2, ucf101=ucf101, hmdb51=hmdb51, epic100=epic100, gym99=gym99, charades=charades,
                  ucfrep=ucfrep)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=tuple(CONVERTERS))
    parser.add_argument("annotations", help="the folder of the published annotation files")
    parser.add_argument("out_dir")
    parser.add_argument("--fold", type=int, default=1, help="ucf101, hmdb51: the split (1-3)")
    parser.add_argument("--subset", default=None, help="gym99: FX-S1 or UB-S1")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.annotations):
        exit_usage(f"{args.annotations} is not a folder")
    try:
        splits, left_out = CONVERTERS[args.dataset](args.annotations, args.fold, args.subset)
    except RowError as err:
        exit_usage(str(err))
    os.makedirs(args.out_dir, exist_ok=True)
    for name, split in (("train", "train"), ("val", "test"), ("test", "test")):
        with open(os.path.join(args.out_dir, f"{name}.csv"), "w", encoding="utf-8") as f:
            f.writelines(row + "\n" for row in splits[split])
    for why, counts in left_out.items():
        for split, count in counts.items():
            print(f"{args.dataset}: {count} {split} videos {why} left out")
    print(f"{args.dataset}: {len(splits['train'])} train, {len(splits['test'])} test rows in "
          f"{args.out_dir} (val.csv = test.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
