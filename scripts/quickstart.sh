#!/usr/bin/env bash
# SMILE end to end on a CPU with nothing downloaded, in about five minutes:
#   1. writes a small motion-classification video set (real H.264 files + lists),
#   2. stage 1: procedural objects moving over still noise (paper Table 7), trajectory masking,
#   3. stage 2: the generated videos, tube masking, from the whole stage-1 student,
#   4. a picture of what stage 1 trains on,
#   5. linear probes on the videos' motion classes: the stage-2 encoder vs a random one.
# The student is ViT-Tiny and the teacher a RANDOM tiny CLIP: this shows the machinery, not
# SMILE's numbers. Usage: scripts/quickstart.sh [OUTPUT_DIR]   (default runs/quickstart)
set -euo pipefail
OUT=${1:-runs/quickstart}
source "$(dirname "$0")/common.sh"
EPOCHS1=${EPOCHS1:-6}
EPOCHS2=${EPOCHS2:-3}
CLIPS=${CLIPS:-512}
VIDEOS_PER_CLASS=${VIDEOS_PER_CLASS:-48}
WARMUP=${WARMUP:-1}                          # warm-up epochs, fewer than either stage's
mkdir -p "$OUT"
start=$(date +%s)

COMMON=(--model pretrain_videomae_tiny_patch16_224 --teacher_model clip_vit_tiny
        --teacher_weights random --num_frames 8 --input_size 112 --batch_size 16
        --lr 1.5e-3 --warmup_epochs "$WARMUP" --device cpu --num_workers 2 --print_freq 8)

echo "== [1/5] writing the motion-classification video set to $OUT/data"
"$PYTHON" tools/synthetic_videos.py "$OUT/data" --videos_per_class "$VIDEOS_PER_CLASS"

echo "== [2/5] stage 1: $EPOCHS1 epochs of $CLIPS noise clips with moving objects"
"$PYTHON" run_smile_pretraining.py "${COMMON[@]}" --background noise \
    --num_synthetic_clips "$CLIPS" --epochs "$EPOCHS1" --output_dir "$OUT/stage1"

echo "== [3/5] stage 2: $EPOCHS2 epochs on the generated videos, tube masking"
"$PYTHON" run_smile_pretraining.py "${COMMON[@]}" --background video \
    --data_path "$OUT/data/train.csv" --sampling_rate 2 --epochs "$EPOCHS2" \
    --first_stage_path "$OUT/stage1/checkpoint-$((EPOCHS1 - 1)).pth" --output_dir "$OUT/stage2"

echo "== [4/5] picture of a stage-1 sample"
"$PYTHON" tools/visualize_infusion.py --background noise --num_frames 8 --input_size 112 \
    --output_dir "$OUT"

echo "== [5/5] linear probes: does the pretrained encoder know the direction of motion?"
PYTHON="$PYTHON" bash scripts/quickstart_probe.sh "$OUT"

echo
echo "done in $(( $(date +%s) - start )) s. Outputs in $OUT:"
echo "  stage-1 checkpoints  $OUT/stage1/checkpoint-*.pth"
echo "  stage-2 checkpoints  $OUT/stage2/checkpoint-*.pth"
echo "  TensorBoard logs     tensorboard --logdir $OUT"
echo "  infusion picture     $OUT/infusion_0.png (and .gif)"
echo "  probe results        $OUT/probe_pretrained/results.json, $OUT/probe_random/results.json"
echo "                       (beside each, predictions.npz: every test video's label and prediction)"
