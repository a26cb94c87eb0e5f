#!/usr/bin/env bash
# SMILE pretraining on Kinetics-400, ViT-B, one node with 8 GPUs: stage 1 (motion-infused clips,
# trajectory masking), then stage 2 (original clips, tube masking, from the whole stage-1
# student). The recipe is k400_vitb.yaml; edit the paths below. Usage:
#   scripts/pretrain/k400_vitb.sh [1|2]     both stages (default), or one
# Run the same command after a stop: a finished stage is skipped, a stopped one resumes.
# Under SLURM, sbatch k400_vitb.slurm instead (it requeues itself until both are done).
set -euo pipefail

DATA_PATH=/path/to/k400/train.csv            # 'PATH LABEL' lines
OBJECTS_PATH=/path/to/PIN_objects            # <category>/<instance>.png RGBA objects
TEACHER_WEIGHTS=/path/to/ViT-B-16-openai.pt  # see INSTALL.md
OUTPUT_DIR=${OUTPUT_DIR:-runs/k400_vitb}     # stage N writes OUTPUT_DIR_stageN
EPOCHS=${EPOCHS:-300}
# the authors' stage 2 used two masks per decoded clip (--multiple_sampling)
NUM_MASKS_PER_CLIP=${NUM_MASKS_PER_CLIP:-2}

case "${1:-}" in ""|1|2) ;; *) echo "usage: $0 [1|2]   (both stages, or one)" >&2; exit 2;; esac
source "$(dirname "$0")/../common.sh"
last="checkpoint-$((EPOCHS - 1)).pth"
for stage in ${1:-1 2}; do
    if [ "$stage" = 1 ]; then
        stage_flags=(--objects_path "$OBJECTS_PATH")
    else
        stage_flags=(--first_stage_path "${OUTPUT_DIR}_stage1/$last"
                     --num_masks_per_clip "$NUM_MASKS_PER_CLIP")
    fi
    [ -f "${OUTPUT_DIR}_stage$stage/$last" ] && continue
    run_or_requeue "${OUTPUT_DIR}_stage$stage/$last" \
        run_smile_pretraining.py --config scripts/pretrain/k400_vitb.yaml \
        "${stage_flags[@]}" --data_path "$DATA_PATH" --teacher_weights "$TEACHER_WEIGHTS" \
        --epochs "$EPOCHS" --output_dir "${OUTPUT_DIR}_stage$stage"
done
