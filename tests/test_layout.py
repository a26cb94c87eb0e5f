"""The house layout: one-way imports between top-level files, line budgets, and every
flag that a module defines is read somewhere."""
import ast
import glob
import os
import re

import pytest

from conftest import ROOT

LOCAL = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
# what each top-level file may import from the project (anything not listed: nothing)
# errors.py (the exception types and exit codes) may be imported by anything
PLUMBING = {"utils", "distributed", "checkpoint", "training", "errors", "outputs", "guard",
            "stop_signals"}
ALLOWED = {
    "datasets": {"motion_infusion", "masking_generator", "video_io", "video_transforms", "utils",
                 "errors", "lists", "bad_files", "object_banks", "rendering", "tasks"},
    "lists": {"errors"},
    "tasks": {"lists"},
    "motion_infusion": set(),
    "object_banks": {"errors"},
    "rendering": {"motion_infusion", "video_transforms"},
    "video_io": {"errors"},
    "modeling_pretrain": {"modeling_finetune"},
    "modeling_finetune": {"checkpoint"},
    "teachers": {"utils", "checkpoint"},
    "bad_files": {"distributed", "errors"},
    "checkpoint": {"errors"},
    "outputs": {"checkpoint", "distributed", "utils", "errors"},
    "distributed": {"stop_signals", "errors"},
    "stop_signals": set(),
    "launch": {"stop_signals", "errors"},
    "training": {"distributed", "checkpoint", "outputs", "stop_signals", "bad_files", "errors",
                 "utils", "guard"},
    "guard": {"stop_signals", "errors", "distributed", "outputs", "bad_files", "checkpoint"},
    "engine_for_pretraining": {"utils"},
    "engine_for_finetuning": {"utils", "pictures", "tasks"},
    "pictures": set(),
    "batches": {"masking_generator", "rendering"},
    "decode_ahead": {"rendering", "video_io"},
    "run_smile_pretraining": {"datasets", "modeling_pretrain", "engine_for_pretraining",
                              "motion_infusion", "object_banks", "masking_generator", "teachers",
                              "batches", "pictures", "video_transforms", "decode_ahead"} | PLUMBING,
    "run_class_finetuning": {"datasets", "modeling_finetune", "engine_for_finetuning",
                             "masking_generator", "batches", "hf_videomae", "tasks",
                             "pictures"} | PLUMBING,
    "hf_videomae": {"modeling_finetune"},
    "video_transforms": set(),
}
# training.py: the epoch loop and the update both engines used to make (they return a loss),
# and the saves a stalled run makes without its peers (guard.py watches); outputs.py: the
# run's folder and its logs (MetricLogger moved there from utils.py, with TensorBoard's
# degrade-on-failure); checkpoint.py and distributed.py: the write failure's own cause, the
# resume's precedence, the random states an exact resume restores; distributed.py: a worker
# killed while its batch is handed over (worker_death); training.py: an epoch whose validation
# a stop signal cut short is finished by the resume (_close_epoch);
# lists.py: the row formats of multi-label, count and segment lists (issue 26), class_count
# (once for the three places that derived the class count); datasets.py:
# --task, --segment_sampling and the segment each clip stays in;
# run_class_finetuning.py: --task through fine-tuning, the test and the probe, predictions.npz;
# checkpoint.py: the one reader and reporter of weights that four files used to write each;
# teachers.py: the table of targets the student regresses;
# decode_ahead.py (new, issue 24): decoding in the training process (NVDEC), with video_io.py's
# probe and PendingDecode, datasets.py's --decode_on, rendering.py's PendingSources, training's
# prefetch hook and guard.py's read-board slots for its threads; video_io.py: the display
# rotation PyAV and the probe apply (decord and torchcodec turn their frames themselves), and
# the MP4 track header the probe reads it from without decoding
BUDGET = {"run_smile_pretraining": 300, "run_class_finetuning": 370, "datasets": 435,
          "motion_infusion": 400, "masking_generator": 250, "modeling_finetune": 250,
          "modeling_pretrain": 400, "engine_for_pretraining": 250, "engine_for_finetuning": 300,
          "utils": 250, "distributed": 290, "checkpoint": 330, "training": 360,
          "bad_files": 200, "errors": 80, "lists": 175, "video_io": 365, "teachers": 300,
          "video_transforms": 150, "outputs": 345, "stop_signals": 100, "launch": 100,
          "batches": 100, "hf_videomae": 150, "pictures": 150, "object_banks": 250,
          "rendering": 160, "guard": 310, "tasks": 150,
          "decode_ahead": 150}


def local_imports(module):
    tree = ast.parse(open(os.path.join(ROOT, module + ".py")).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & LOCAL


@pytest.mark.parametrize("module", sorted(LOCAL))
def test_imports_flow_one_way(module):
    imported = local_imports(module)
    assert not {m for m in imported if m.startswith("run_")}, "nothing imports an entry point"
    assert imported <= ALLOWED.get(module, set()), f"{module} imports {imported}"


@pytest.mark.parametrize("module", sorted(LOCAL))
def test_line_budget(module):
    lines = len(open(os.path.join(ROOT, module + ".py")).read().splitlines())
    assert module in BUDGET, f"{module}.py has no line budget: add it to STYLE and here"
    assert lines <= BUDGET[module], f"{module}.py has {lines} lines, budget {BUDGET[module]}"


def test_every_flag_is_read():
    sources = ""
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):
        if f"{os.sep}tests{os.sep}" not in path and ".venv" not in path:
            sources += open(path).read()
    defined = set(re.findall(r"add_argument\(\s*\"--([a-z_0-9]+)\"", sources))
    assert defined
    unread = {flag for flag in defined
              if not re.search(rf"\.{flag}\b", sources)}
    assert not unread, f"flags defined but never read: {sorted(unread)}"


def test_readme_layout_table_names_every_file():
    """The README's layout table: one row per top-level file, tools/ listed whole, no row for a
    file that is gone."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("## Layout"):].split("\n## ")[0]
    rows = set(re.findall(r"^\| `([a-z_]+\.py)` \|", table, re.M))
    assert rows == {m + ".py" for m in LOCAL}
    tools_row = next(line for line in table.splitlines() if line.startswith("| `tools/`"))
    assert set(re.findall(r"`([a-z_]+\.py)`", tools_row)) == {
        os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))}
