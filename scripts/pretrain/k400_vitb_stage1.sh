#!/usr/bin/env bash
# SMILE stage 1 on Kinetics-400, ViT-B, one node with 8 GPUs (the released recipe):
# motion-infused clips + trajectory masking, CLIP ViT-B/16 teacher. Edit the paths below.
set -euo pipefail

DATA_PATH=/path/to/k400/train.csv            # 'PATH LABEL' lines
OBJECTS_PATH=/path/to/PIN_objects            # <category>/<instance>.png RGBA objects
TEACHER_WEIGHTS=/path/to/ViT-B-16-openai.pt  # see INSTALL.md
OUTPUT_DIR=runs/k400_vitb_stage1
GPUS=${GPUS:-8}
EPOCHS=${EPOCHS:-300}                        # 300 + 300 = the released "600 epochs"

cd "$(dirname "$0")/../.."
# launch.py = torchrun that lets the ranks save at a stop signal and exits with their code
# (README: "Stopping and resuming"); under SLURM, sbatch the .slurm script instead
python launch.py --standalone --nproc_per_node "$GPUS" run_smile_pretraining.py \
    --training_mode progressive \
    --data_path "$DATA_PATH" \
    --objects_path "$OBJECTS_PATH" --num_objects 2 \
    --mask_type trajectory --mask_ratio 0.8 --traj_unmask_ratio 0.1 --traj_region box \
    --teacher_model clip_vit_b16 --teacher_weights "$TEACHER_WEIGHTS" \
    --model pretrain_videomae_base_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 \
    --batch_size 32 --lr 1.5e-4 --min_lr 1e-5 --warmup_epochs 40 --epochs "$EPOCHS" \
    --opt_betas 0.9 0.95 --weight_decay 0.05 \
    --num_workers 10 --save_ckpt_freq 20 \
    --output_dir "$OUTPUT_DIR"
