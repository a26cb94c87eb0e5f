"""Annotation lists, parsed once and strictly, the same way for pretraining, fine-tuning,
evaluation, the probe and tools/check_videos.py."""
import hashlib
import math
import os

from errors import UsageError

DATASET_CLASSES = {"Kinetics-400": 400, "SSV2": 174, "UCF101": 101, "HMDB51": 51, "Gym99": 99,
                   "FX-S1": 11, "UB-S1": 15, "EPIC-100-verbs": 97, "Charades": 157, "UCFRep": 1}


def pretraining_list(data_path):
    """Pretraining's --data_path: a list file, or a folder holding train.csv."""
    if os.path.isdir(data_path):
        if not os.path.isfile(os.path.join(data_path, "train.csv")):
            raise ValueError(f"--data_path {data_path} is a folder without train.csv; give the "
                             "pretraining list file itself")
        return os.path.join(data_path, "train.csv")
    if not os.path.isfile(data_path):
        raise ValueError(f"--data_path {data_path} does not exist")
    return data_path


TASKS = ("classification", "multi_label", "counting")
ROW = {"classification": "'PATH LABEL' (or PATH,LABEL) with an integer label",
       "multi_label": "'PATH LABEL,LABEL,...' with integer labels",
       "counting": "'PATH COUNT' (or PATH,COUNT) with a count >= 0"}


def _label(word, task):
    """A row's last field as `task`'s label, or None when it is not one."""
    word = word.strip()
    if task == "multi_label":
        parts = word.split(",")
        return tuple(sorted({int(p) for p in parts})) if all(
            p.strip().isdigit() for p in parts) else None
    if task == "counting":
        try:
            return float(word) if float(word) >= 0 and math.isfinite(float(word)) else None
        except ValueError:
            return None
    return int(word) if word.lstrip("-").isdigit() else None


def _segment(rest, sep):
    """'PATH START END' -> (PATH, (START, END)), frames counted from 0, both inclusive (EPIC-
    Kitchens and FineGym lists); anything else -> (rest, None)."""
    parts = rest.rsplit(sep, 2)
    if len(parts) < 3 or not (parts[1].strip().isdigit() and parts[2].strip().isdigit()):
        return rest, None
    start, end = int(parts[1]), int(parts[2])
    if end < start:
        raise ValueError(f"the segment ends (frame {end}) before it starts (frame {start})")
    return parts[0].strip(), (start, end)


def parse_line(line, require_label=True, task="classification"):
    """One list line -> (path, label, segment), or None for a blank line, a '#' line or a CSV
    header. Rows: VideoMAE's 'PATH LABEL' (paths may hold spaces; the label is the last field)
    or CSV 'PATH,LABEL', with `task`'s label (ROW), optionally 'PATH START END LABEL' (a
    segment of a long video, else segment None). Without require_label a bare path (label
    -1). Raises ValueError."""
    line = line.strip()
    if not line or line[0] == "#" or line.lower().replace(" ", "") in (
            "path,label", "pathlabel", "path", "path,start,end,label", "pathstartendlabel"):
        return None
    for sep in (",", None) if task != "multi_label" else (None,):
        parts = line.rsplit(sep, 1)
        if len(parts) == 2 and (label := _label(parts[1], task)) is not None:
            if sep == "," and parts[0].rstrip()[-1:].isdigit() and parts[0].split()[-1].isdigit():
                raise ValueError(f"expected {ROW[task]}, got {line!r} (several labels: "
                                 "--task multi_label)")
            path, segment = _segment(parts[0].strip(), sep)
            return path, label, segment
    if not require_label:
        return line, -1, None
    raise ValueError(f"expected {ROW[task]}, got {line!r}")


class AnnotationList(list):
    """[(path, label)] as read, and `digest`: a hash of the entries as written in the list
    (paths before resolving, labels, order, the frame stride), so the same list moved
    elsewhere keeps it and any other list (other files, order or length) does not: what a
    resumed run compares. `frame_stride`: the videos keep one frame in N of their sources (a
    `# frame_stride N` line, written by tools/prepare_videos.py --stride N); `path`: the list;
    `segments`: each entry's (start, end) frames in its video, or None for whole videos."""

    digest, frame_stride, path, segments = None, 1, None, None


def read_list(path, root="", require_label=True, task="classification"):
    """A VideoMAE list (see parse_line) -> AnnotationList [(path, label)]. Relative paths
    resolve against `root` (--data_root), else against the list's own folder, never the
    working directory (on SLURM, wherever sbatch ran). A byte-order mark (Excel, Windows
    editors) is not part of the first path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation list {path} not found")
    root = root or os.path.dirname(os.path.abspath(path))
    entries, digest, segments = AnnotationList(), hashlib.sha256(), []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith("#"):  # a comment, or the one setting a list carries
                if (words := line.split())[1:2] == ["frame_stride"]:
                    if len(words) != 3 or not words[2].isdigit() or int(words[2]) < 1:
                        raise UsageError(f"{path}:{lineno}: expected '# frame_stride N', N >= 1")
                    entries.frame_stride = int(words[2])
                    digest.update(line.strip().encode())
                continue
            try:
                entry = parse_line(line, require_label, task)
                if entry and segments and (segments[0] is None) != (entry[2] is None):
                    raise ValueError("every row of a list gives a segment (PATH START END "
                                     "LABEL), or none does; the first row " + (
                                         "does not" if segments[0] is None else "does"))
            except ValueError as err:
                raise UsageError(f"{path}:{lineno}: {err}") from None
            if not entry:
                continue
            segments.append(entry[2])
            video = os.path.join(root, entry[0])
            for head, _, word in (entry[0].rpartition(" "), entry[0].rpartition(",")):
                if entry[1] == -1 and head and not os.path.exists(video) and os.path.exists(
                        os.path.join(root, head.strip())):  # 'PATH WORD': not a number
                    raise UsageError(f"{path}:{lineno}: the label {word.strip()!r} is not an "
                                     f"integer (line {line.strip()!r}); labels are class "
                                     "numbers")
            entries.append((video, entry[1]))
            row = "\t".join(map(str, (entry[0], entry[1], *(entry[2] or ()))))
            digest.update(f"{row}\n".encode())
    if not entries:
        raise UsageError(f"annotation list {path} has no entries")
    if segments[0] is not None:
        if entries.frame_stride > 1:
            raise UsageError(f"{path}: a list of segments prepared with a frame stride: its "
                             "frame numbers would count the original video's frames; prepare "
                             "its videos without --stride")
        entries.segments = segments
    entries.digest, entries.path = digest.hexdigest()[:16], path
    return entries


def frame_step(entries, sampling_rate):
    """--sampling_rate counted in the list's own frames: the videos of a list prepared with
    --stride s keep one frame in s, so the same real-time stride is sampling_rate / s."""
    stride = getattr(entries, "frame_stride", 1)
    if sampling_rate % stride:
        raise UsageError(f"--sampling_rate {sampling_rate} is not a multiple of the frame stride "
                         f"{stride} of {entries.path} (its videos keep one frame in {stride}: "
                         "tools/prepare_videos.py --stride): use a multiple of it, or a list "
                         "prepared with a stride that divides --sampling_rate")
    return sampling_rate // stride


def class_count(args):  # --nb_classes, else the dataset's own
    return args.nb_classes or DATASET_CLASSES[args.data_set]


def labelled_list(args, split):
    """(entries of DATA_PATH/split, the model's outputs: classes, or 1 for a count), every
    label checked against it."""
    path, task = os.path.join(args.data_path, split), getattr(args, "task", "classification")
    entries = read_list(path, args.data_root, task=task)
    if task == "counting":
        return entries, 1
    nb_classes = class_count(args)
    bad = [(p, label) for p, labels in entries for label in (
        labels if task == "multi_label" else (labels,)) if not 0 <= label < nb_classes]
    if bad:
        raise UsageError(f"{path}: label {bad[0][1]} outside [0, {nb_classes}) for --data_set "
                         f"{args.data_set} (video {bad[0][0]}); set --nb_classes")
    return entries, nb_classes
