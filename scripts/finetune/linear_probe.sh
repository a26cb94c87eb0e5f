#!/usr/bin/env bash
# Linear probe of a pretrained encoder (paper Table 1 protocol, see README): frozen backbone,
# mean-pooled features of each view extracted once and cached, a linear classifier on top.
set -euo pipefail

DATA_PATH=/path/to/ucf101/lists               # folder with train.csv and test.csv
DATA_SET=UCF101                               # Kinetics-400, SSV2, UCF101, HMDB51
MODEL_PATH=runs/k400_vitb_stage2/checkpoint-299.pth
OUTPUT_DIR=runs/probe_ucf101

source "$(dirname "$0")/../common.sh"
launch run_class_finetuning.py --linear_probe --data_path "$DATA_PATH" --data_set "$DATA_SET" \
    --finetune "$MODEL_PATH" --model vit_base_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 224 \
    --probe_train_segments 2 --test_num_segment 5 --test_num_crop 3 \
    --probe_epochs 100 --probe_lr 1e-3 --probe_weight_decay 1e-4 --batch_size 32 \
    --num_workers 10 --output_dir "$OUTPUT_DIR"
