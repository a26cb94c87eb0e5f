"""Stop signals: SIGTERM, SIGINT (Ctrl-C), SIGUSR1 and SIGHUP (a dropped ssh session) ask a run
to save and stop, however many arrive and whichever processes of the job they reach.

The entry points install it with their first line, `from stop_signals import installed` (it
imports nothing heavy), so that a signal that comes while torch is still being imported is
kept too; importing the module alone installs nothing. SLURM (scancel, pre-emption, a time
limit) signals every process of a job step, torchrun sends its own copy on to each rank, and a
user may press Ctrl-C twice: the first signal is recorded and every later one changes nothing,
except a second Ctrl-C at a terminal 2 s or more after the first, which stops at once.

In a DataLoader worker (distributed.seed_worker installs it there) the handler does nothing,
so a worker never dies of a stop signal (torch would then raise in the main process before it
could save). The one exception is a worker being shut down on purpose: torch and
multiprocessing end a late worker with SIGTERM, so `shutting_down()` opens that window.
"""
import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
INTERRUPT_AGAIN_AFTER_S = 2.0  # a forwarded copy of a Ctrl-C (torchrun) comes within ms


class StopFlag:
    """True once a stop signal reached this process; `signal` names the first one."""

    def __init__(self):
        self.signal, self.time, self.pid = None, 0.0, os.getpid()
        # shared with the forked workers: 1 while the main process ends them on purpose
        self.ending_workers = multiprocessing.RawValue("b", 0)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if os.getpid() != self.pid:  # a DataLoader worker
            # only the SIGTERM that ends it on purpose: a user's Ctrl-C or SLURM's signal can
            # reach its handler late (after a long C call), inside that window too
            if self.ending_workers.value and signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.signal is None:
            self.signal, self.time = signal.Signals(signum).name, time.monotonic()
        elif (signum == signal.SIGINT and self.signal == "SIGINT" and _interactive()
              and time.monotonic() - self.time >= INTERRUPT_AGAIN_AFTER_S):
            raise KeyboardInterrupt

    def __bool__(self):
        return self.signal is not None

    @contextlib.contextmanager
    def shutting_down(self):
        """Workers die of SIGTERM inside this block (the loader's own shutdown)."""
        self.ending_workers.value = 1
        try:
            yield
        finally:
            self.ending_workers.value = 0


def _interactive():
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


_FLAG = []


def stop_flag():
    """The process's one StopFlag, installed by the first call."""
    if not _FLAG:
        _FLAG.append(StopFlag())
        # multiprocessing ends leftover workers at exit with SIGTERM: let them die of it.
        # Registered after multiprocessing's own exit hook, so it runs before it.
        import multiprocessing.util  # noqa: F401
        atexit.register(lambda: setattr(_FLAG[0].ending_workers, "value", 1))
    return _FLAG[0]


def is_installed():
    return bool(_FLAG)


def __getattr__(name):
    """`from stop_signals import installed` installs the handlers: an entry point's first
    line. A plain `import stop_signals` (the library modules, the tools) changes nothing."""
    if name == "installed":
        return stop_flag()
    raise AttributeError(name)
