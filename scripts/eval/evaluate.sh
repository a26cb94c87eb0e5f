#!/usr/bin/env bash
# The paper's evaluation of one checkpoint: each experiment is a recipe here (NAME.yaml), run
# into runs/eval/CHECKPOINT_NAME/NAME; an experiment whose results.json exists is skipped, one
# that stopped (a signal, the time limit) resumes. Usage:
#   scripts/eval/evaluate.sh CHECKPOINT [NAME ... | table1 | severe | all]   (default all)
# Lists: LISTS below holds one folder per dataset (train.csv, val.csv, test.csv), made by
# tools/convert_annotations.py and tools/subset_list.py (README: "Evaluate like the paper").
# EXTRA_FLAGS: flags added to every experiment (e.g. "--num_workers 6"). Then:
#   python tools/results_table.py runs/eval
# Under SLURM, one job per experiment: sbatch scripts/eval/evaluate.slurm CHECKPOINT NAME.
set -euo pipefail

LISTS=${LISTS:-/path/to/lists}
CHECKPOINT=${1:?usage: $0 CHECKPOINT [NAME ... | table1 | severe | all]}
shift
NAME=${NAME:-$(basename "$(dirname "$CHECKPOINT")")-$(basename "$CHECKPOINT" .pth)}
HERE=$(dirname "$0")

lists_of() {  # the folder under LISTS an experiment reads
    case $1 in
        probe_k400) echo k400 ;;          probe_ucf101) echo ucf101 ;;
        probe_hmdb51) echo hmdb51 ;;      probe_ssv2|severe_ssv2) echo ssv2 ;;
        probe_gym99|severe_gym99) echo gym99 ;;
        probe_epic_verbs) echo epic100 ;; severe_ucf101_1000) echo ucf101_1000 ;;
        severe_gym99_1000) echo gym99_1000 ;;
        severe_fx_s1) echo gym99_fx_s1 ;; severe_ub_s1) echo gym99_ub_s1 ;;
        severe_ucfrep) echo ucfrep ;;     severe_charades) echo charades ;;
        *) return 1 ;;
    esac
}

experiments=()
for word in "${@:-all}"; do
    case $word in
        table1) experiments+=(probe_k400 probe_ucf101 probe_hmdb51 probe_ssv2 probe_gym99
                              probe_epic_verbs) ;;
        severe) experiments+=(severe_ssv2 severe_gym99 severe_ucf101_1000 severe_gym99_1000
                              severe_fx_s1 severe_ub_s1 severe_ucfrep severe_charades) ;;
        all) experiments+=($(cd "$HERE" && ls *.yaml | sed 's/\.yaml$//')) ;;
        *) lists_of "$word" >/dev/null || {
               echo "error: no experiment '$word': one of table1, severe, all," \
                    $(cd "$HERE" && ls *.yaml | sed 's/\.yaml$//') >&2; exit 2; }
           experiments+=("$word") ;;
    esac
done
[ -e "$CHECKPOINT" ] || { echo "error: checkpoint $CHECKPOINT does not exist" >&2; exit 2; }

source "$HERE/../common.sh"
for experiment in "${experiments[@]}"; do
    out="runs/eval/$NAME/$experiment"
    if [ -f "$out/results.json" ]; then
        echo "$experiment: done ($out/results.json)"
        continue
    fi
    echo "$experiment: $LISTS/$(lists_of "$experiment") -> $out"
    run_or_requeue "$out/results.json" run_class_finetuning.py \
        --config "scripts/eval/$experiment.yaml" --data_path "$LISTS/$(lists_of "$experiment")" \
        --finetune "$CHECKPOINT" --output_dir "$out" ${EXTRA_FLAGS:-}
done
