#!/usr/bin/env bash
# SMILE stage 2 on Kinetics-400, ViT-B, one node with 8 GPUs: original clips + tube masking,
# starting from the whole stage-1 student with a fresh optimiser and schedule.
set -euo pipefail

DATA_PATH=/path/to/k400/train.csv
FIRST_STAGE_CKPT=runs/k400_vitb_stage1/checkpoint-299.pth
TEACHER_WEIGHTS=/path/to/ViT-B-16-openai.pt
OUTPUT_DIR=runs/k400_vitb_stage2
GPUS=${GPUS:-8}
EPOCHS=${EPOCHS:-300}
# the authors' stage 2 used two masks per decoded clip (--multiple_sampling)
NUM_MASKS_PER_CLIP=${NUM_MASKS_PER_CLIP:-2}

cd "$(dirname "$0")/../.."
# launch.py = torchrun that lets the ranks save at a stop signal and exits with their code
# (README: "Stopping and resuming"); under SLURM, sbatch the .slurm script instead
python launch.py --standalone --nproc_per_node "$GPUS" run_smile_pretraining.py \
    --training_mode progressive --first_stage_path "$FIRST_STAGE_CKPT" \
    --data_path "$DATA_PATH" \
    --mask_type tube --mask_ratio 0.8 --num_masks_per_clip "$NUM_MASKS_PER_CLIP" \
    --teacher_model clip_vit_b16 --teacher_weights "$TEACHER_WEIGHTS" \
    --model pretrain_videomae_base_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 \
    --batch_size 32 --lr 1.5e-4 --min_lr 1e-5 --warmup_epochs 40 --epochs "$EPOCHS" \
    --opt_betas 0.9 0.95 --weight_decay 0.05 \
    --num_workers 10 --save_ckpt_freq 20 \
    --output_dir "$OUTPUT_DIR"
