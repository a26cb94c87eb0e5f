#!/usr/bin/env bash
# Fine-tune a SMILE ViT-B, one node with 8 GPUs, then the multi-view test. The recipe of each
# dataset is a YAML file here (k400_vitb.yaml, ssv2_vitb.yaml); edit the paths below. Usage:
#   scripts/finetune/vitb.sh [k400|ssv2]      (default k400)
# Under SLURM, sbatch vitb.slurm instead (it requeues itself until the test is written).
set -euo pipefail

RECIPE=${1:-k400}
DATA_PATH=/path/to/$RECIPE/lists              # folder with train.csv, val.csv, test.csv
MODEL_PATH=runs/k400_vitb_stage2/checkpoint-299.pth
OUTPUT_DIR=runs/${RECIPE}_vitb_finetune

[ -f "$(dirname "$0")/${RECIPE}_vitb.yaml" ] || {
    echo "usage: $0 [k400|ssv2]   (no recipe $(dirname "$0")/${RECIPE}_vitb.yaml)" >&2; exit 2; }
source "$(dirname "$0")/../common.sh"
run_or_requeue "$OUTPUT_DIR/results.json" \
    run_class_finetuning.py --config "scripts/finetune/${RECIPE}_vitb.yaml" \
    --data_path "$DATA_PATH" --finetune "$MODEL_PATH" --output_dir "$OUTPUT_DIR"
