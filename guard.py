"""What stops a run from outside, turned into a save and one line: data that does not come, a
stop signal while it does not, a lost peer, a killed loader worker, memory.

    ReadBoard: what each loader process is reading now, and since when (shared memory the
        forked workers write; slot 0 is the main process, slot k + 1 worker k)
    DataWatch: a thread beside the training loop. While the loop waits for a batch it warns
        every --data_warn_s, naming the files being read; past --data_timeout_s, or 2 s after
        a stop signal, it saves the last completed update and ends the process itself (the
        main thread may be blocked in the kernel, where no Python code of it can run). A stop
        signal during a step that lasts over 20 s (a collective waiting for a frozen peer) is
        acted on the same way: a step applies its update only after its collectives
    failure_line: what an exception from outside means, with its remedy and exit code
    run_cli: the entry points' whole run, every failure a user can act on as one `error:`
        line with its exit code (errors.py)
"""
import contextlib
import errno
import logging
import multiprocessing
import multiprocessing.queues
import os
import re
import select
import shutil
import signal
import sys
import threading
import time

import psutil
import torch

import checkpoint
import distributed
import outputs
import stop_signals
import bad_files
from errors import (EXIT_FAILED, EXIT_RETRY, EXIT_USAGE, EXIT_WRITE, DataAbort,
                    NonFiniteLossError, OutsideFailure, UsageError, WriteError)

log = logging.getLogger("smile")
STOP_GRACE_S = {"data": 2.0, "step": 20.0}  # a stop signal this long into a phase: act here


class ReadBoard:
    """Which sample each loader process is reading, since when (wall clock: the workers' and
    the main process's clocks agree), and the first batch a worker lost on its way out."""

    def __init__(self, num_workers, decode_threads=0):
        self.num_workers = num_workers  # slots: the main process, workers, decoder threads
        self.slots = multiprocessing.RawArray("d", 2 * (num_workers + 1 + decode_threads))
        self.lost = multiprocessing.RawArray("c", 1024)

    @staticmethod
    def _slot():
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else info.id + 1

    @contextlib.contextmanager
    def reading(self, index, slot=None):
        """Around the read of sample `index` in this process (or in decoder thread `slot`)."""
        slot = self._slot() if slot is None else slot
        self.slots[2 * slot + 1], self.slots[2 * slot] = index, time.time()
        try:
            yield
        finally:
            self.slots[2 * slot] = 0.0

    def reads(self):
        """[(slot, sample index, seconds)] of the reads under way, the oldest first."""
        now, slots = time.time(), self.slots[:]
        return sorted(((k // 2, int(slots[k + 1]), now - slots[k])
                       for k in range(0, len(slots), 2) if slots[k]), key=lambda r: -r[2])

    def reader(self, slot):
        return ("the main process" if slot == 0 else f"worker {slot - 1}"
                if slot <= self.num_workers else
                f"decoder thread {slot - self.num_workers - 1} of the training process")

    def in_worker(self):
        """In a loader worker (distributed.seed_worker): a finished batch goes to the main
        process through a queue's feeder thread, whose failure (shared memory full) torch
        only prints, and the main process would wait for that batch for ever. Posted here,
        the watch ends the run with the cause instead."""
        def lost(err, obj):
            if not self.lost.value:
                self.lost.value = f"{type(err).__name__}: {err}".encode()[:1023]
        multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(lost)

    def lost_batch(self):  # the error that lost a worker's batch, or ''
        return self.lost.value.decode(errors="replace")


class DataWatch:
    """The training loop's watchdog (the module's docstring). The loop draws its batches
    through `batches()` and calls `update_done((epoch, next batch))` after each update.

    bail(code, line, hung): save the last completed update, list `hung` [(path, reason)] as
    bad, print `line` and end the process with `code`. It runs in this thread, holding the
    lock the loop needs to go on, so no step starts meanwhile. explain(error) -> (line,
    code) of a batch a worker lost (failure_line)."""

    def __init__(self, board, path_of, warn_s, timeout_s, stop_flag, bail, rank=0,
                 explain=None):
        self.board, self.path_of, self.warn_s, self.timeout_s = board, path_of, warn_s, timeout_s
        self.stop_flag, self.bail, self.rank, self.explain = stop_flag, bail, rank, explain
        self.lock, self.ended = threading.Lock(), threading.Event()
        self.phase, self.since, self.next_warning, self.signal, self.completed = (
            None, 0.0, 0.0, None, None)

    def __enter__(self):
        # the kernel-level handler writes each signal's number here, also while the main
        # thread is stuck in a system call and the Python handler cannot run
        self.pipe = os.pipe()
        os.set_blocking(self.pipe[1], False)
        self.old_fd = signal.set_wakeup_fd(self.pipe[1], warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._watch, name="data-watch", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.ended.set()
        os.write(self.pipe[1], b"\0")  # wakes the watch now, not at its next second
        self.thread.join()
        signal.set_wakeup_fd(self.old_fd)
        for fd in self.pipe:
            os.close(fd)

    def _enter(self, phase):
        with self.lock:  # blocks for good once the watch bails: no step starts after it
            self.phase, self.since = phase, time.monotonic()
            self.next_warning = self.since + self.warn_s

    def batches(self, iterable, loader_iterator=None):
        """The loader's batches (from `loader_iterator`, through `iterable`), each waited for
        under the watch; the loop's body between them is the step phase."""
        it = iter(iterable)
        try:
            while True:
                self._enter("data")
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except (ConnectionError, EOFError, FileNotFoundError) as err:
                    raise distributed.worker_death(loader_iterator or it) or err
                self._enter("step")
                yield batch
        finally:
            self._enter(None)

    def update_done(self, position):  # after an update: (epoch, next batch) a save holds
        with self.lock:
            self.completed = position

    def reads(self):
        """What the loader processes are reading: [(phrase, path, seconds)], oldest first."""
        return [(f"{self.board.reader(slot)} has been reading {self.path_of(index)} for "
                 f"{seconds:.0f} s", self.path_of(index), seconds)
                for slot, index, seconds in self.board.reads()]

    def _watch(self):
        while not self.ended.is_set():
            ready, _, _ = select.select([self.pipe[0]], [], [], 1.0)
            if ready:
                for signum in os.read(self.pipe[0], 64):
                    if self.signal is None and signum in stop_signals.STOP_SIGNALS:
                        self.signal = signal.Signals(signum).name
            with self.lock:
                if self.phase is not None:
                    try:
                        self._look(time.monotonic() - self.since)
                    except Exception:  # a watch that died would leave the run unwatched
                        log.debug("the data watch failed; it goes on watching", exc_info=True)

    def _look(self, waited):
        stop = self.signal or self.stop_flag.signal
        if stop and waited >= STOP_GRACE_S[self.phase]:
            what = ("in a step (a collective waiting for a peer?)" if self.phase == "step" else
                    "while waiting for data" + "".join(f"; {r[0]}" for r in self.reads()[:1]))
            self.bail(0, f"{stop} received {waited:.0f} s {what}", [])
        if self.phase != "data":
            return
        if (lost := self.board.lost_batch()) and self.explain:
            line, code = self.explain(RuntimeError(lost)) or (f"a worker lost a batch: {lost}",
                                                               EXIT_RETRY)
            self.bail(code, line, [])
        reads = self.reads()
        if waited >= self.timeout_s:
            hung = [(path, f"{bad_files.HUNG} in {self.timeout_s:g} s "
                           "(--data_timeout_s)") for _, path, seconds in reads
                    if seconds >= min(self.warn_s, self.timeout_s)]
            what = reads[0][0] if reads else "no read is under way"
            self.bail(EXIT_RETRY, f"no batch for {waited:.0f} s (--data_timeout_s "
                      f"{self.timeout_s:g}): {what}" + (
                          ". The file is listed in bad_files.tsv (the resume reads it once "
                          "more; one that hangs twice is left out)" if hung else ""), hung)
        elif time.monotonic() >= self.next_warning:
            self.next_warning += self.warn_s
            where = "; ".join(r[0] for r in reads) or "no read is under way"
            log.log(logging.WARNING if self.rank == 0 else logging.ERROR,
                    "WARNING: %sno batch for %.0f s: %s (the run saves and exits at "
                    "--data_timeout_s %g)", f"rank {self.rank}: " if self.rank else "",
                    waited, where, self.timeout_s)


def end_process(code, line):
    """From the watch's thread: the line on stderr (and train.log), the loader's workers
    killed (one may be stuck in the kernel, and holds the job's output open), then exit
    without unwinding the main thread, which may be stuck too."""
    log.debug("%s", line)
    print(line, file=sys.stderr, flush=True)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


# ---------------------------------------------------------------- failures from outside
PEER_WORDS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "Timed out", "timed out", "NCCL", "Gloo", "gloo")


def failure_line(err, args, hosts=(), rank=0):
    """(one line, exit code) for an exception that came from outside the step's own code:
    a lost or frozen peer, a killed loader worker, shared memory or memory exhausted; None
    for any other. hosts: (host name, address) of every rank, to name a peer."""
    text = str(err)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")[:300]
    if "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly"
                                        in text):
        return (f"a data loader worker died ({first}); when the kernel log (dmesg) names the "
                "out-of-memory killer, lower --num_workers or --batch_size, or ask for more "
                "memory", EXIT_RETRY)
    if "shared memory" in text or "/dev/shm" in text:
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
        return (f"shared memory ran out ({first}); /dev/shm has {free / 2**20:.0f} MiB free "
                f"and the {args.num_workers} loader workers hand their batches over there: "
                "lower --num_workers, or give the job a larger /dev/shm (docker --shm-size; "
                "under SLURM it counts against the job's memory)", EXIT_FAILED)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
            isinstance(err, OSError) and err.errno == errno.ENOMEM):
        return (f"out of memory ({type(err).__name__}: {first}); lower --batch_size (raise "
                "--update_freq to keep the effective batch) or --num_workers", EXIT_FAILED)
    if isinstance(err, torch.distributed.DistError) or (
            isinstance(err, RuntimeError) and any(w in text for w in PEER_WORDS)):
        return (f"lost contact with another process of this run{_peer(text, hosts, rank)}: a "
                "process or its node died, or froze past --dist_timeout_s "
                f"{getattr(args, 'dist_timeout_s', '?'):g} ({first})", EXIT_RETRY)
    return None


def _peer(text, hosts, rank):
    """' (rank 1 on host h)' when the message's address is one rank's node, else ''."""
    address = re.search(r"\[([0-9a-fA-F.:]+)\]:\d+", text)
    ranks = [r for r, (_, ip) in enumerate(hosts) if address and ip == address.group(1)
             and r != rank]
    return f" (rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))} on host " \
        f"{hosts[ranks[0]][0]})" if ranks else ""


# ---------------------------------------------------------------- the process's end
def run_cli(main, args, check_args):
    """Check, run, and turn what a user can fix into one `error:` line with its exit code
    (errors.py); every traceback, these and the others, goes to OUTPUT_DIR/train.log."""
    try:  # stop signals mean "save and stop" from the entry point's first import on
        check_args(args)
    except ValueError as err:
        return _fail(f"error: {err}", EXIT_USAGE)
    try:
        code = main(args)
    except OSError as err:  # a write into the run's folders that failed: its own cause
        log.debug("uncaught", exc_info=True)
        if not _ours(getattr(err, "filename", None), args):
            if isinstance(err, FileNotFoundError):  # a list or file named by a flag
                return _fail(f"error: {err}", EXIT_USAGE)
            raise
        return _fail(f"error: {checkpoint.write_error(err.filename, err)}", EXIT_WRITE)
    except (UsageError, DataAbort, NonFiniteLossError, WriteError, OutsideFailure) as err:
        line = bad_files.data_abort_line(err) if isinstance(err, DataAbort) else str(err)
        return _fail(f"error: {line}", getattr(err, "exit_code", EXIT_USAGE))
    except BaseException:
        log.debug("uncaught", exc_info=True)
        raise
    finally:
        outputs.release_output_dirs()
    if code == 0:  # every rank returns 0 together; one that failed alone just exits
        distributed.close_distributed()
    return code


def _ours(path, args):
    """Whether `path` lies in the run's output or TensorBoard folder."""
    folders = [f for f in (getattr(args, "output_dir", None), getattr(args, "log_dir", None)) if f]
    return bool(path) and any(os.path.abspath(path).startswith(os.path.abspath(f) + os.sep)
                              for f in folders)


def _fail(line, code):
    if code == EXIT_USAGE:  # refused before its first step: what it made goes again
        outputs.forget_refused_run()
    log.debug("%s", line, exc_info=True)  # DEBUG goes to train.log only (utils.setup_logging)
    print(line, file=sys.stderr, flush=True)
    return code
