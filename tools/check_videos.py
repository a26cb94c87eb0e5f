"""Pre-flight check of a video list: run it before a long run, then train on LIST.clean.

    python tools/check_videos.py LIST [--data_root ROOT] [--workers N] [--video_backend decord]
                                      [--task multi_label]

Opens every file of LIST (VideoMAE 'PATH LABEL' lines or CSV 'PATH,LABEL', as the loader reads
them; --task as in training, e.g. multi_label for Charades') in parallel and decodes what
training needs: the container, the video stream, its frame count, its first and last frames
(a segment's, in a list of segments; PyAV, then decord, as in training). Writes LIST.clean
(the good lines, unchanged) and LIST.bad.tsv (path, reason), prints a summary, and exits 1
when any file is bad (0 when all are good, 2 for a list it cannot read).
"""
import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import exit_usage  # noqa: E402
from lists import TASKS, parse_line  # noqa: E402
from utils import format_eta  # noqa: E402
from video_io import DECODERS, VideoDecodeError, in_segment, read_clip  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="annotation list to check")
    parser.add_argument("--data_root", default="",
                        help="prefix for relative paths (default: the list's folder, as in "
                             "training)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes that open files at once (default: all cores)")
    parser.add_argument("--video_backend", default="pyav", choices=tuple(DECODERS))
    parser.add_argument("--task", default="classification", choices=TASKS,
                        help="the list's labels, as for training (Charades: multi_label)")
    return parser.parse_args(argv)


def check(job):
    """(line number, '' if the file (its segment, for a segment list) is usable for training,
    else why not)."""
    lineno, path, backend, segment = job
    try:
        read_clip(path, backend, in_segment(lambda n: [0, n - 1], segment, path))
        return lineno, ""
    except VideoDecodeError as err:
        return lineno, " ".join(err.reason.split())
    except Exception as err:  # anything else a decoder throws still makes the file unusable
        return lineno, f"{type(err).__name__}: {' '.join(str(err).split())}"


def rate_and_eta(done, total, first, now, min_files):
    """'N files/s  eta H:MM:SS' from the files done since `first` = (files done, time) at the
    first result: the pool's start-up (each worker imports the decoders) is not a rate. Until
    `min_files` more are done the rate is not known yet."""
    measured, elapsed = done - first[0], now - first[1]
    if measured < min_files or elapsed <= 0:
        return "eta: measuring"
    rate = measured / elapsed
    return f"{rate:.1f} files/s  eta {format_eta((total - done) / rate)}"


class Progress:
    """The progress line on stderr of a pool's results, the rate counted from the first."""

    def __init__(self, total, workers):
        self.total, self.min_files, self.first = total, 4 * max(workers, 1), None

    def __call__(self, done, bad):
        self.first = self.first or (done, time.time())
        speed = rate_and_eta(done, self.total, self.first, time.time(), self.min_files)
        final = done == self.total
        sys.stderr.write(f"\r{done}/{self.total} files  {speed}  bad {bad}  "
                         + ("\n" if final else ""))
        sys.stderr.flush()


def main(argv=None):
    args = get_args(argv)
    if not os.path.isfile(args.list):
        exit_usage(f"{args.list} is not a file")
    with open(args.list, encoding="utf-8-sig") as f:
        lines = f.readlines()
    jobs, root = [], args.data_root or os.path.dirname(os.path.abspath(args.list))
    for lineno, line in enumerate(lines):
        try:
            entry = parse_line(line, require_label=False, task=args.task)
        except ValueError as err:
            exit_usage(f"{args.list}:{lineno + 1}: {err}")
        if entry:
            jobs.append((lineno, os.path.join(root, entry[0]), args.video_backend, entry[2]))
    if not jobs:
        exit_usage(f"{args.list} has no entries")

    reasons, start, progress = {}, time.time(), Progress(len(jobs), args.workers)
    with multiprocessing.get_context("spawn").Pool(max(args.workers, 1)) as pool:
        for done, (lineno, reason) in enumerate(pool.imap_unordered(check, jobs, chunksize=4), 1):
            if reason:
                reasons[lineno] = reason
            if done == 1 or done % 20 == 0 or done == len(jobs):
                progress(done, len(reasons))

    clean, bad = f"{args.list}.clean", f"{args.list}.bad.tsv"
    with open(clean, "w", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for i, line in enumerate(lines)
                     if line.strip() and i not in reasons)
    paths = {lineno: path for lineno, path, *_ in jobs}
    with open(bad, "w", encoding="utf-8") as f:
        f.write("path\treason\n")
        f.writelines(f"{paths[i]}\t{reasons[i]}\n" for i in sorted(reasons))
    print(f"{len(jobs) - len(reasons)} of {len(jobs)} files are usable, {len(reasons)} are not "
          f"({time.time() - start:.0f} s, {args.workers} workers)\n  good lines: {clean}\n"
          f"  bad files:  {bad}" + (f"\ntrain with --data_path {clean}" if reasons else ""))
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
