"""On PYTHONPATH for the multi-process runs of tests/conftest.run_script: at exit, after the
script's own code has finished, each rank says whether it left its process group open and how
many gloo threads are still running. A group that lives on into interpreter teardown (held by a
module, e.g. in a default argument) is freed there, and that can abort a finished run (-6)."""
import atexit
import os
import sys


def _thread_name(task):
    try:
        with open(f"/proc/self/task/{task}/comm") as f:
            return f.read()
    except OSError:  # the thread ended meanwhile
        return ""


def _report():
    distributed = sys.modules.get("torch.distributed")
    if "RANK" in os.environ and distributed is not None:
        gloo = sum("gloo" in _thread_name(task) for task in os.listdir("/proc/self/task"))
        state = "open" if distributed.is_initialized() else "closed"
        print(f"exit probe: rank {os.environ['RANK']} process group {state}, {gloo} gloo threads",
              flush=True)


atexit.register(_report)
