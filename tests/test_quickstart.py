"""The README's main command, shortened through its environment knobs."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # every test here runs a script


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    env = {**os.environ, "PYTHON": sys.executable, "EPOCHS1": "1", "EPOCHS2": "1", "CLIPS": "32",
           "VIDEOS_PER_CLASS": "6", "WARMUP": "0", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["bash", "scripts/quickstart.sh", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for path in ("stage1/checkpoint-0.pth", "stage2/checkpoint-0.pth", "infusion_0.png",
                 "infusion_0.gif", "data/train.csv", "stage1/log.txt", "stage2/log.txt"):
        assert (out / path).is_file(), path
    assert "RANDOM WEIGHTS" in result.stdout
    assert "stage 2: whole student from" in result.stdout
    assert f"Outputs in {out}" in result.stdout
    assert "linear-probe top-1 on motion direction" in result.stdout
    for name in ("pretrained", "random"):
        assert (out / f"probe_{name}" / "results.json").is_file()
