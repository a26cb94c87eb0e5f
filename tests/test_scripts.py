"""The recipe scripts as a user runs them, with $PYTHON standing in for the training: what
each would launch parses with its entry point's own flags, and says the recipe's numbers."""
import contextlib
import os
import shutil
import subprocess

import pytest

import run_class_finetuning as finetuning
import run_smile_pretraining as pretraining
import utils
from conftest import ROOT

RECORDER = """#!/usr/bin/env bash
[ "$1" = -c ] && exit 0             # the scripts' check for the requirements
printf '%s\\0' "$@" >> "$CALLS"; printf '\\n' >> "$CALLS"
if [ -n "${MAKE_RESULTS:-}" ]; then  # the run finished: its results.json is written
    prev=; for a in "$@"; do [ "$prev" = --output_dir ] && mkdir -p "$a" && : > "$a/results.json"
    prev=$a; done
fi
exit "${RUN_EXIT_CODE:-0}"          # what the run would end with
"""
PARSERS = {"run_smile_pretraining.py": pretraining.get_args_parser,
           "run_class_finetuning.py": finetuning.get_args_parser}


def launched(tmp_path, script, *argv, slurm=False, code=0, env=None):
    """[(entry point, parsed flags)] for each launch the script makes, and its output (the
    script's exit code must be `code`; `env`: more variables, e.g. RUN_EXIT_CODE)."""
    python, calls = tmp_path / "python", tmp_path / "calls"
    python.write_text(RECORDER)
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), CALLS=str(calls), **(env or {}))
    env.pop("SLURM_JOB_ID", None)
    if slurm:  # srun and scontrol as the job sees them: srun runs what it is given
        (tmp_path / "srun").write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')
        (tmp_path / "scontrol").write_text('#!/usr/bin/env bash\necho "scontrol $*"\n')
        for tool in ("srun", "scontrol"):
            (tmp_path / tool).chmod(0o755)
        env.update(SLURM_JOB_ID="42", PATH=f"{tmp_path}:{env['PATH']}")
    result = subprocess.run(["bash", script, *argv], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == code, result.stderr
    runs = []
    for line in calls.read_text().splitlines() if calls.exists() else []:
        words = line.strip("\0").split("\0")
        if words[0] == "-u":  # srun's ranks: python -u ENTRY.py
            words = words[1:]
        else:  # launch.py --standalone --nproc_per_node N ENTRY.py
            assert words[:3] == ["launch.py", "--standalone", "--nproc_per_node"]
            words = words[4:]
        runs.append((words[0], utils.parse_with_config(PARSERS[words[0]](), words[1:])))
    return runs, result.stdout + result.stderr


def test_pretraining_script_runs_stage_1_then_stops_until_it_is_done(tmp_path):
    runs, out = launched(tmp_path, "scripts/pretrain/k400_vitb.sh")
    [(entry, stage1)] = runs  # stage 1 wrote no checkpoint-299.pth: stage 2 waits
    assert (entry, stage1.first_stage_path, stage1.mask_type) == (
        "run_smile_pretraining.py", None, None)  # mask_type: what stage 1 implies
    assert (stage1.lr, stage1.batch_size, stage1.opt_betas, stage1.epochs) == (
        1.5e-4, 32, [0.9, 0.95], 300)
    assert stage1.objects_path and stage1.output_dir == "runs/k400_vitb_stage1"
    assert "run the same command to resume" in out


def test_pretraining_script_stage_2_under_slurm_requeues(tmp_path):
    runs, out = launched(tmp_path, "scripts/pretrain/k400_vitb.sh", "2", slurm=True)
    [(_, stage2)] = runs
    assert stage2.first_stage_path == "runs/k400_vitb_stage1/checkpoint-299.pth"
    assert stage2.num_masks_per_clip == 2 and stage2.output_dir == "runs/k400_vitb_stage2"
    assert "scontrol requeue 42" in out


def test_exit_5_requeues_at_most_3_times_in_a_row(tmp_path):
    """README's exit codes: 5 (a hung read, a lost node or worker; the run saved) requeues;
    the third in a row ends the job with it; a 0 in between starts the count again."""
    env = dict(OUTPUT_DIR=str(tmp_path / "run"), RUN_EXIT_CODE="5")
    for n in (1, 2):
        _, out = launched(tmp_path, "scripts/pretrain/k400_vitb.sh", "2", slurm=True, env=env)
        assert f"exit code 5, {n} of 3 in a row: requeueing job 42" in out and (
            "scontrol requeue 42") in out, out
    _, out = launched(tmp_path, "scripts/pretrain/k400_vitb.sh", "2", slurm=True, env=env, code=5)
    assert "error: the run ended with exit code 5 3 times in a row" in out and (
        "scontrol requeue") not in out, out
    launched(tmp_path, "scripts/pretrain/k400_vitb.sh", "2", slurm=True,
             env=dict(env, RUN_EXIT_CODE="0"))
    _, out = launched(tmp_path, "scripts/pretrain/k400_vitb.sh", "2", slurm=True, env=env)
    assert "1 of 3 in a row" in out
    _, out = launched(tmp_path, "scripts/finetune/vitb.sh", slurm=False, code=4,
                      env=dict(RUN_EXIT_CODE="4"))  # any other code: the job ends with it
    assert "requeue" not in out


@pytest.mark.parametrize("recipe,expected", [
    ("k400", dict(data_set="Kinetics-400", layer_decay=0.75, epochs=100, test_num_segment=7)),
    ("ssv2", dict(data_set="SSV2", layer_decay=0.7, epochs=40, test_num_segment=2)),
])
def test_finetuning_script_recipes(tmp_path, recipe, expected):
    [(entry, args)], _ = launched(tmp_path, "scripts/finetune/vitb.sh", recipe)
    assert entry == "run_class_finetuning.py"
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.finetune == "runs/k400_vitb_stage2/checkpoint-299.pth"


def test_linear_probe_script(tmp_path):
    [(_, args)], _ = launched(tmp_path, "scripts/finetune/linear_probe.sh")
    assert args.linear_probe and args.data_set == "UCF101" and args.probe_epochs == 100


@pytest.mark.parametrize("text,message", [
    ("lr: 1.0e-3\nlearning_rate: 1.0e-3\n", "sets learning_rate: not flags of"),
    ("- lr\n", "is not 'flag: value' lines"),
    ("lr: [1\n", "while parsing"),
    (None, "No such file or directory"),
    # each value goes through its flag's type, choices and on/off form
    ("epochs: 1.5\n", "epochs: 1.5: invalid int value: '1.5'"),
    ("num_frames: 8.0\n", "num_frames: 8.0: invalid int value"),
    ("mixup: [0.8]\n", "mixup: [0.8] is a list; --mixup takes one value"),
    ("opt_betas: 0.9\n", "opt_betas: 0.9 is one value; --opt_betas takes a list"),
    ('auto_resume: "false"\n', "auto_resume: 'false' is not true or false (unquoted)"),
    ("data_set: K400\n", "data_set: 'K400': invalid choice: 'K400'"),
])
def test_a_config_that_cannot_work_is_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "recipe.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SystemExit) as info:
        utils.parse_with_config(finetuning.get_args_parser(), ["--config", str(config)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --config {config}") and message in err


def test_config_values_parse_as_the_command_line_would(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("lr: 1e-4\nauto_resume: false\nopt_betas: [0.9, 0.95]\nmodel_ema: true\n"
                      "epochs: 7\nresume: null\n")
    args = utils.parse_with_config(finetuning.get_args_parser(),
                                   ["--config", str(config), "--epochs", "3"])
    assert (args.lr, args.auto_resume, args.opt_betas, args.model_ema) == (
        1e-4, False, [0.9, 0.95], True)  # 1e-4 is a string to YAML, a float to --lr
    assert args.epochs == 3 and args.resume is None  # the command line wins


@pytest.mark.parametrize("script,argument", [("scripts/pretrain/k400_vitb.sh", "3"),
                                             ("scripts/finetune/vitb.sh", "k700")])
def test_a_wrong_script_argument_is_one_line(script, argument):
    result = subprocess.run(["bash", script, argument], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage:")
    assert result.stderr.count("\n") == 1 and not result.stdout


EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "scripts", "eval"))
                     if f.endswith(".yaml"))


def test_the_evaluation_script_runs_every_experiment_once(tmp_path):
    """Table 1's six probes and SEVERE's eight, each from its recipe into its own folder with
    its dataset's lists; an experiment that has its results.json is not run again."""
    checkpoint = tmp_path / "k400_vitb_stage2" / "checkpoint-299.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    done = os.path.join(ROOT, "runs", "eval", "k400_vitb_stage2-checkpoint-299", "probe_k400")
    try:
        evaluation_runs(tmp_path, checkpoint, done)
    finally:
        shutil.rmtree(os.path.dirname(done), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.removedirs(os.path.dirname(os.path.dirname(done)))  # runs/eval, runs if empty


def evaluation_runs(tmp_path, checkpoint, done):
    runs, out = launched(tmp_path, "scripts/eval/evaluate.sh", str(checkpoint),
                         env=dict(LISTS="/lists", EXTRA_FLAGS="--num_workers 3"))
    assert len(runs) == 1 and "run the same command to resume" in out  # stopped: it waits
    (tmp_path / "calls").unlink()
    runs, out = launched(tmp_path, "scripts/eval/evaluate.sh", str(checkpoint),
                         env=dict(LISTS="/lists", EXTRA_FLAGS="--num_workers 3",
                                  MAKE_RESULTS="1"))
    assert len(EXPERIMENTS) == 14 and len(runs) == 14
    by_name = {os.path.basename(args.output_dir): args for _, args in runs}
    assert sorted(by_name) == EXPERIMENTS and all(a.num_workers == 3 for a in by_name.values())
    assert all(a.finetune == str(checkpoint) and a.output_dir == os.path.relpath(
        os.path.join(os.path.dirname(done), name), ROOT) for name, a in by_name.items())
    probes = {n for n, a in by_name.items() if a.linear_probe}
    assert probes == {e for e in EXPERIMENTS if e.startswith("probe_")} and len(probes) == 6
    assert (by_name["severe_charades"].task, by_name["severe_charades"].data_path) == (
        "multi_label", "/lists/charades")
    assert (by_name["severe_ucfrep"].task, by_name["severe_ucfrep"].segment_sampling) == (
        "counting", True)
    assert by_name["severe_fx_s1"].data_path == "/lists/gym99_fx_s1"
    assert by_name["severe_ucf101_1000"].data_path == "/lists/ucf101_1000"
    for name in EXPERIMENTS:  # all but probe_k400 to be done again
        if name != "probe_k400":
            os.remove(os.path.join(os.path.dirname(done), name, "results.json"))
    (tmp_path / "calls").unlink()
    runs, out = launched(tmp_path, "scripts/eval/evaluate.sh", str(checkpoint), "table1",
                         "severe_ucfrep", env=dict(MAKE_RESULTS="1"))
    assert [os.path.basename(a.output_dir) for _, a in runs] == [
        "probe_ucf101", "probe_hmdb51", "probe_ssv2", "probe_gym99", "probe_epic_verbs",
        "severe_ucfrep"] and f"probe_k400: done ({os.path.relpath(done, ROOT)}/results.json)" \
        in out, out


@pytest.mark.parametrize("argv,message", [
    (["{checkpoint}", "severe_kinetics"], "error: no experiment 'severe_kinetics': one of "
                                          "table1, severe, all, probe_epic_verbs"),
    (["/nope.pth"], "error: checkpoint /nope.pth does not exist"),
])
def test_a_wrong_evaluation_argument_is_one_line(tmp_path, argv, message):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"")
    result = subprocess.run(["bash", "scripts/eval/evaluate.sh",
                             *[a.format(checkpoint=checkpoint) for a in argv]], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1
