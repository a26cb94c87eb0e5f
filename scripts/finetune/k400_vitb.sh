#!/usr/bin/env bash
# Fine-tune a SMILE ViT-B on Kinetics-400, one node with 8 GPUs (VideoMAE recipe),
# then the 7 clips x 3 crops test. Edit the paths below.
set -euo pipefail

DATA_PATH=/path/to/k400/lists                 # folder with train.csv, val.csv, test.csv
MODEL_PATH=runs/k400_vitb_stage2/checkpoint-299.pth
OUTPUT_DIR=runs/k400_vitb_finetune
GPUS=${GPUS:-8}

cd "$(dirname "$0")/../.."
# launch.py = torchrun that lets the ranks save at a stop signal and exits with their code
# (README: "Stopping and resuming"); under SLURM, sbatch the .slurm script instead
python launch.py --standalone --nproc_per_node "$GPUS" run_class_finetuning.py \
    --data_path "$DATA_PATH" --data_set Kinetics-400 \
    --finetune "$MODEL_PATH" --model vit_base_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 224 \
    --batch_size 16 --lr 1e-3 --min_lr 1e-6 --warmup_lr 1e-8 --warmup_epochs 5 --epochs 100 \
    --layer_decay 0.75 --drop_path 0.1 --weight_decay 0.05 --opt_betas 0.9 0.999 \
    --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 \
    --test_num_segment 7 --test_num_crop 3 --dist_eval \
    --num_workers 10 --output_dir "$OUTPUT_DIR"
