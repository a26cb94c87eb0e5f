"""Unreadable input judged over the whole run, not per DataLoader worker.

Workers never decide. Every sample reports the files it tried with its batch, as
`(index, path, reason)` (reason '' = read fine; index -1 for an object PNG, which is listed but
not counted against the video list). Each rank's training process records them in a
`BadFileLedger`; where the ranks meet anyway (the print step, the end of an epoch) they merge
what they saw and all take the same decision:

    stop when  bad > max_bad_fraction * tried,  over *distinct* files of the list and the
    whole run (every epoch, worker, rank and restart), once MIN_TRIED distinct files were
    tried or an epoch has ended.

Why 0.3 % bad files cannot stop a run at the default 5 %: a bad file is decoded once, written
to OUTPUT_DIR/bad_files.tsv, read back at a restart, and from then on the dataset draws a
substitute instead of decoding it. The estimate is therefore one sample of distinct files that
only grows, not a fresh guess per worker and epoch; the chance that it ever passes 5 % is the
chance that some prefix of >= MIN_TRIED = 200 files holds > 5 % bad ones: summed over every
prefix length (a union bound), 2e-9 (tests/test_bad_files.py computes it; 4e-4 at 1 % bad).
"""
import collections
import logging
import os
import re

import numpy as np
import torch

from distributed import all_gather_objects, all_reduce_max
from errors import DataAbort

log = logging.getLogger("smile")
MIN_TRIED = 200
NOTE = "note: "  # a reason with this prefix is said once, not counted as bad
TSV_HEADER = "path\treason\tepoch\trank\n"
HUNG = "a read that did not return"  # a file's first hang may be the mount's: it is read again


def should_abort(bad, tried, max_fraction, epoch_end=False):
    """The decision rule, on run-wide counts of distinct files."""
    if tried == 0 or (tried < MIN_TRIED and not epoch_end):
        return False
    return bad > max_fraction * tried


def read_tsv(path):
    """[(path, reason)] of a bad-files TSV (ours, or check_videos.py's LIST.bad.tsv)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [(row[0], row[1] if len(row) > 1 else "") for row in rows
            if row and row[0] and row[0] != "path"]


class BadFileLedger:
    """This rank's view of which list entries were tried and which failed.

    paths: the list's file paths by sample index (empty for synthetic backgrounds)."""

    def __init__(self, paths, max_fraction, output_dir, dist_info):
        self.max_fraction, self.dist = max_fraction, dist_info
        self.paths, self.indices = paths, {}  # path -> its indices (a path may be listed twice)
        for i, path in enumerate(paths):
            self.indices.setdefault(path, []).append(i)
        self.tried, self.bad = np.zeros((2, len(paths)), np.uint8)
        self.tsv = os.path.join(output_dir, "bad_files.tsv")
        self.written = set()  # paths in the TSV: the same set on every rank
        self.listed = set()  # those and what this rank found since the last merge
        self.noted = set()  # paths that were said once (NOTE), run-wide after a merge
        self.new = []  # (index, path, reason, epoch, rank) found on this rank, not merged yet
        rows = read_tsv(self.tsv)
        hangs = collections.Counter(path for path, reason in rows if reason.startswith(HUNG))
        for path, reason in rows:
            if not reason.startswith(HUNG) or hangs[path] > 1:
                self._mark_bad(path)
        if self.written:
            log.info("%d unreadable files listed in %s from earlier in this run: they are left "
                     "out", len(self.written), self.tsv)
        if once := sorted(set(hangs) - self.written):
            log.info("%d files whose read hung once are read again (a second hang leaves them "
                     "out), e.g. %s", len(once), once[0])

    def _mark_bad(self, path):
        self.written.add(path)
        self.listed.add(path)
        for i in self.indices.get(path, ()):
            self.bad[i] = self.tried[i] = 1

    def known_bad(self):
        """Sample indices never to decode again (handed to the dataset before each epoch)."""
        return frozenset(np.flatnonzero(self.bad).tolist())

    def record(self, attempts, epoch):
        """What one batch's samples tried: [(index, path, reason)]."""
        for index, path, reason in attempts:
            if 0 <= index < len(self.tried):  # synthetic samples have no file behind them
                self.tried[index] = 1
            if reason and path not in self.listed:
                self.listed.add(path)
                self.new.append((index, path, " ".join(reason.split()), epoch, self.dist.rank))

    def describe(self, index):
        """The file behind sample `index`, for messages."""
        return self.paths[index] if 0 <= index < len(self.paths) else f"sample {index}"

    def write_now(self, hung=(), epoch=-1):
        """Append this rank's unmerged findings and `hung` [(path, reason)] to the TSV without
        a collective: the process is about to end (guard.DataWatch, a lost peer)."""
        rows = [(path, reason, epoch, rank) for _, path, reason, epoch, rank in self.new
                if not reason.startswith(NOTE)] + [(p, r, epoch, self.dist.rank) for p, r in hung]
        rows = [row for row in rows if row[0] not in self.written]
        self._append(rows)
        self.written.update(row[0] for row in rows)

    def _append(self, rows):
        """(path, reason, epoch, rank) rows at the end of the TSV, its header first."""
        if rows:
            header = not os.path.isfile(self.tsv)
            with open(self.tsv, "a", encoding="utf-8") as f:
                f.write(TSV_HEADER if header else "")
                f.writelines("\t".join(map(str, row)) + "\n" for row in rows)

    def counts(self):
        return int(self.bad.sum()), int(self.tried.sum())

    def merge(self):
        """Every rank learns every rank's findings; rank 0 appends the new ones to the TSV and
        names each once in the log, with the running count."""
        found = [entry for part in all_gather_objects(self.new, self.dist) for entry in part]
        self.new = []
        self.tried = all_reduce_max(self.tried, self.dist)
        fresh = {}  # path -> first report of it (two ranks may meet the same file)
        for entry in found:
            if entry[2].startswith(NOTE):
                if entry[1] not in self.noted and self.dist.is_main:
                    log.warning("%s: %s", entry[1], entry[2][len(NOTE):])
                self.noted.add(entry[1])
            elif entry[1] not in self.written:
                fresh.setdefault(entry[1], entry)
        for path in fresh:
            self._mark_bad(path)
        fresh = list(fresh.values())
        if fresh and self.dist.is_main:
            bad, tried = self.counts()
            self._append([entry[1:] for entry in fresh])
            for index, path, reason, _, _ in fresh:
                what = "object image" if index < 0 else "unreadable"
                log.warning("%s: %s (%s); %d of %d files tried are bad (%.2f %%)", what, path,
                            reason, bad, tried, 100 * bad / max(tried, 1))

    def check(self, epoch_end=False):
        """Merge, then raise DataAbort (one line) when the run-wide rule says stop."""
        self.merge()
        bad, tried = self.counts()
        if should_abort(bad, tried, self.max_fraction, epoch_end):
            raise DataAbort(
                f"{bad} of {tried} distinct files tried so far could not be read "
                f"({100 * bad / tried:.1f} %), more than --max_bad_fraction {self.max_fraction}; "
                f"each is listed in {self.tsv}. Check the list with tools/check_videos.py and "
                "train on LIST.clean, or raise --max_bad_fraction")

    def state_dict(self):
        return {"num_files": len(self.tried), "tried": torch.from_numpy(np.packbits(self.tried))}

    def load_state_dict(self, state):
        if state and state["num_files"] == len(self.tried):
            tried = np.unpackbits(state["tried"].numpy())[:len(self.tried)]
            self.tried = np.maximum(self.tried, tried)


def data_abort_line(err):
    """The one line of a DataAbort, also when a DataLoader worker raised it (torch then wraps
    the worker's traceback into the message)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return re.sub(r"^(\w+\.)*DataAbort: ", "", lines[-1] if lines else "")
