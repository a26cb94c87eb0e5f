"""On PYTHONPATH for the multi-process runs of tests/conftest.run_script: at exit, after the
script's own code has finished, each rank says whether it left its process group open. One left
to interpreter teardown can abort a finished run (gloo threads outliving Python, exit -6)."""
import atexit
import os
import sys


def _report():
    distributed = sys.modules.get("torch.distributed")
    if "RANK" in os.environ and distributed is not None:
        state = "open" if distributed.is_initialized() else "closed"
        print(f"exit probe: rank {os.environ['RANK']} process group {state}", flush=True)


atexit.register(_report)
