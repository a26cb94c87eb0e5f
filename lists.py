"""Annotation lists, parsed once and strictly, the same way for pretraining, fine-tuning,
evaluation, the probe and tools/check_videos.py."""
import hashlib
import os

from errors import UsageError

DATASET_CLASSES = {"Kinetics-400": 400, "SSV2": 174, "UCF101": 101, "HMDB51": 51}


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


def parse_line(line, require_label=True):
    """One list line -> (path, label), or None for a blank line, a '#' line or a CSV header.
    Accepted: VideoMAE's 'PATH LABEL' (paths may hold spaces; the label is the last field) and
    CSV 'PATH,LABEL'; without require_label a bare path (label -1). Raises ValueError."""
    line = line.strip()
    if not line or line[0] == "#" or line.lower().replace(" ", "") in ("path,label", "pathlabel",
                                                                       "path"):
        return None
    for parts in (line.rsplit(",", 1), line.rsplit(maxsplit=1)):
        if len(parts) == 2 and parts[1].strip().lstrip("-").isdigit():
            return parts[0].strip(), int(parts[1])
    if not require_label:
        return line, -1
    raise ValueError(f"expected 'PATH LABEL' (or PATH,LABEL) with an integer label, "
                     f"got {line!r}")


class AnnotationList(list):
    """[(path, label)] as read, and `digest`: a hash of the entries as written in the list
    (paths before resolving, labels, order, the frame stride), so the same list moved
    elsewhere keeps it and any other list (other files, order or length) does not: what a
    resumed run compares. `frame_stride`: the videos keep one frame in N of their sources (a
    `# frame_stride N` line, written by tools/prepare_videos.py --stride N); `path`: the list."""

    digest, frame_stride, path = None, 1, None


def read_list(path, root="", require_label=True):
    """A VideoMAE list (see parse_line) -> AnnotationList [(path, label)]. Relative paths
    resolve against `root` (--data_root), else against the list's own folder, never the
    working directory (on SLURM, wherever sbatch ran). A byte-order mark (Excel, Windows
    editors) is not part of the first path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation list {path} not found")
    root = root or os.path.dirname(os.path.abspath(path))
    entries, digest = AnnotationList(), hashlib.sha256()
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
                entry = parse_line(line, require_label)
            except ValueError as err:
                raise UsageError(f"{path}:{lineno}: {err}") from None
            if not entry:
                continue
            video = os.path.join(root, entry[0])
            for head, _, word in (entry[0].rpartition(" "), entry[0].rpartition(",")):
                if entry[1] == -1 and head and not os.path.exists(video) and os.path.exists(
                        os.path.join(root, head.strip())):  # 'PATH WORD': not a number
                    raise UsageError(f"{path}:{lineno}: the label {word.strip()!r} is not an "
                                     f"integer (line {line.strip()!r}); labels are class "
                                     "numbers")
            entries.append((video, entry[1]))
            digest.update(f"{entry[0]}\t{entry[1]}\n".encode())
    if not entries:
        raise UsageError(f"annotation list {path} has no entries")
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


def labelled_list(args, split):
    """(entries of DATA_PATH/split, number of classes), every label checked against it."""
    path = os.path.join(args.data_path, split)
    entries = read_list(path, args.data_root)
    nb_classes = args.nb_classes or DATASET_CLASSES[args.data_set]
    bad = [(p, label) for p, label in entries if not 0 <= label < nb_classes]
    if bad:
        raise UsageError(f"{path}: label {bad[0][1]} outside [0, {nb_classes}) for --data_set "
                         f"{args.data_set} (video {bad[0][0]}); set --nb_classes")
    return entries, nb_classes
