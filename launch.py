"""torchrun for this project's runs: stop signals that let the ranks save, and their exit codes.

    python launch.py [torchrun options] run_smile_pretraining.py [its options]

The options are torchrun's own (--nproc_per_node, --nnodes, --rdzv_endpoint, ...). Unlike
plain torchrun (which kills the ranks 30 s after a stop signal, a checkpoint perhaps still
being written, and exits 1 even when every rank saved, or for a rank's usage error), it passes
every SIGTERM, SIGINT and SIGUSR1 on to the ranks and waits for them to save, exiting 0 (the
ranks ignore repeats), and a failed rank's own exit code is its own, with one line.
"""
import signal
import sys

from errors import EXIT_RETRY
from stop_signals import STOP_SIGNALS  # installs nothing: only the entry points' line does

RECEIVED = []
EXIT_BARRIER_S = 30  # after the ranks ended, how long an agent waits for the other nodes'


def pass_on(signum, frame):
    """To each rank (the launcher's children); the launcher itself carries on waiting."""
    import psutil
    RECEIVED.append(signum)
    for child in psutil.Process().children():
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


for _sig in STOP_SIGNALS:  # before the imports below (seconds): a stop then is kept
    signal.signal(_sig, pass_on)

import torch.distributed  # noqa: E402
from torch.distributed import run as torchrun  # noqa: E402
from torch.distributed.elastic.multiprocessing import api as elastic_api  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402
from torch.distributed.elastic.rendezvous import RendezvousError  # noqa: E402


def exit_code(failures):
    """The code of the rank that failed by itself (the agent then stops the others with
    SIGTERM), the first of them; a rank killed by a signal as a shell reports it."""
    rank, failure = min(failures.items(), key=lambda item: (item[1].exitcode <= 0,
                                                              item[1].timestamp, item[0]))
    code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    what = (f"exit code {failure.exitcode}" if failure.exitcode > 0 else
            f"signal {signal.Signals(-failure.exitcode).name}")
    print(f"launch.py: rank {rank} ended with {what} (its own lines above say why); "
          f"{len(failures)} of the ranks failed", file=sys.stderr, flush=True)
    return code


def main(argv=None):
    # torchrun's agent installs its handler (raise, then kill the ranks) when it starts them:
    # it finds ours under that name instead
    elastic_api._terminate_process_handler = pass_on
    if RECEIVED:  # nothing has run, nothing to save: as a run stopped and saved, exit 0
        print(f"launch.py: {signal.Signals(RECEIVED[0]).name} before any rank started; run the "
              "same command to start", file=sys.stderr, flush=True)
        return 0
    shorten_exit_barrier(EXIT_BARRIER_S)
    try:
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as err:
        return exit_code(err.failures)
    except (RendezvousError, torch.distributed.DistError) as err:
        first = next(filter(None, map(str.strip, str(err).splitlines())), type(err).__name__)
        print(f"launch.py: lost the other nodes' rendezvous ({first}): the node that hosts "
              "--rdzv_endpoint went away; the ranks here were stopped, each saving what it "
              "could; run the same command to resume", file=sys.stderr, flush=True)
        return EXIT_RETRY
    return 0


def shorten_exit_barrier(seconds):
    """torchrun's agents wait up to 300 s at their end for the other nodes' agents (torch
    internals, checked by tests/test_stalls.py): ours have finished or failed together."""
    from torch.distributed.elastic.agent.server import local_elastic_agent
    agent = local_elastic_agent.LocalElasticAgent
    if not getattr(agent.__init__, "shortened", False):
        init = agent.__init__

        def shortened(self, *args, **kwargs):
            kwargs.setdefault("exit_barrier_timeout", seconds)
            init(self, *args, **kwargs)
        shortened.shortened = True
        agent.__init__ = shortened


if __name__ == "__main__":
    sys.exit(main())
