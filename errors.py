"""What can go wrong in a run, as exception types, and the exit code each one ends with.

Exit codes (documented in the README; the SLURM scripts requeue on 0 with an unfinished run,
and on 5 at most 3 times in a row):
    0  finished, or stopped by a signal after saving (run the same command to resume)
    1  the training itself failed (e.g. a non-finite loss): the last checkpoint is intact
    2  a usage error: a flag, list, folder or checkpoint that cannot work, found before work
    3  a data abort: too much of the data cannot be read (see OUTPUT_DIR/bad_files.tsv)
    4  a file could not be written (a full disk, a quota): the last checkpoint is intact
    5  interrupted by what a new allocation may not meet: a read that never returned, a peer
       process lost or frozen, a data worker killed, memory exhausted; the last completed
       step was saved where the process could (run the same command to resume)
"""
import sys

EXIT_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_WRITE, EXIT_RETRY = 1, 2, 3, 4, 5


def exit_usage(line):
    """A tool's mistake of its user: one `error:` line on stderr, exit 2."""
    print(f"error: {line}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


class UsageError(ValueError):
    """A flag, list, folder or checkpoint that cannot work: one line, exit 2, before any step."""

    exit_code = EXIT_USAGE


class BadInputError(RuntimeError):
    """One input file (video, image, object PNG) that cannot be used: skipped and counted."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # raised in DataLoader workers: must survive pickling
        return type(self), (self.path, self.reason)


class DataAbort(RuntimeError):
    """Too much of the data is unreadable: the run stops instead of training on what is left."""

    exit_code = EXIT_DATA


class NonFiniteLossError(RuntimeError):
    """The loss is NaN or infinite: the update is not applied and the run stops."""

    exit_code = EXIT_FAILED


class WriteError(RuntimeError):
    """A checkpoint or log that could not be written (no space, quota, I/O error): one line
    naming the folder, the bytes needed and the bytes free; nothing else is lost."""

    exit_code = EXIT_WRITE


class OutsideFailure(RuntimeError):
    """The run was interrupted from outside its step (a hung read, a lost peer or worker,
    memory) and saved what it could: one line, exit 5 where a retry can succeed (the SLURM
    scripts requeue), 1 where the remedy is the user's (memory)."""

    def __init__(self, line, exit_code=EXIT_RETRY):
        super().__init__(line)
        self.exit_code = exit_code
