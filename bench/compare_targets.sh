#!/usr/bin/env bash
# Which target keeps the motion inside a tubelet? Pretrains one student per target setting on
# the same labelled videos (stage 2 alone: tube masking, no infusion, same seed), then for each
# prints the patch embedding's difference share (tools/temporal_filters.py) and a linear probe
# of the encoder on the videos' classes, beside a random encoder's probe.
#   bench/compare_targets.sh DATA_DIR OUT_DIR
# DATA_DIR holds train.csv / val.csv / test.csv ('PATH LABEL'), e.g. from
# tools/synthetic_videos.py, whose classes differ only in the direction of motion.
# Knobs (environment): SETTINGS ("first all motion pixel"), EPOCHS (60), LR (1.5e-2 per 256),
# SEED (0; the pretraining's, the probes keep theirs), MODEL (tiny), TEACHER (clip_vit_tiny),
# TEACHER_WEIGHTS (random), FRAMES (8), SIZE (112), BATCH (16), NB_CLASSES (4), DEVICE (cpu),
# WORKERS (2). Each pretraining logs to OUT/SETTING.log (tail -f it to follow).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 DATA_DIR OUT_DIR" >&2; exit 2; }
DATA=$1; OUT=$2
[ -f "$DATA/train.csv" ] || {
    echo "error: no $DATA/train.csv (make one with tools/synthetic_videos.py)" >&2; exit 2; }
mkdir -p "$OUT"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
SIZE=${SIZE:-112}; FRAMES=${FRAMES:-8}; MODEL=${MODEL:-tiny}; DEVICE=${DEVICE:-cpu}
COMMON=(--num_frames "$FRAMES" --input_size "$SIZE" --sampling_rate 2 --device "$DEVICE"
        --num_workers "${WORKERS:-2}" --batch_size "${BATCH:-16}")
SETTINGS=${SETTINGS:-first all motion pixel}
for setting in $SETTINGS; do
    case $setting in first|all|motion|pixel) ;;
        *) echo "error: unknown setting $setting (first, all, motion, pixel)" >&2; exit 2;;
    esac
done
PROBED=()
for setting in $SETTINGS; do
    case $setting in
        first) extra=();; all) extra=(--teacher_frames all);;
        motion) extra=(--motion_loss_weight 1);; pixel) extra=(--target_type pixel);;
    esac
    echo "== $setting: pretraining into $OUT/$setting (log: $OUT/$setting.log)"
    "$PYTHON" run_smile_pretraining.py "${COMMON[@]}" "${extra[@]}" --seed "${SEED:-0}" \
        --model "pretrain_videomae_${MODEL}_patch16_224" \
        --teacher_model "${TEACHER:-clip_vit_tiny}" \
        --teacher_weights "${TEACHER_WEIGHTS:-random}" --background video --mask_type tube \
        --infusion_prob 0 --data_path "$DATA/train.csv" --epochs "${EPOCHS:-60}" \
        --lr "${LR:-1.5e-2}" --warmup_epochs "$(( ${EPOCHS:-60} / 12 ))" --keep_last 1 \
        --output_dir "$OUT/$setting" > "$OUT/$setting.log" 2>&1 \
        || { tail -n 5 "$OUT/$setting.log" >&2; exit 1; }
    PROBED+=("$setting:$(ls "$OUT/$setting"/checkpoint-[0-9]*.pth | sort -V | tail -n 1)")
done
PROBED+=("random:random")
for entry in "${PROBED[@]}"; do
    name=${entry%%:*}
    "$PYTHON" run_class_finetuning.py "${COMMON[@]}" --linear_probe --data_path "$DATA" \
        --data_set UCF101 --nb_classes "${NB_CLASSES:-4}" --model "vit_${MODEL}_patch16_224" \
        --short_side_size "$SIZE" --test_num_segment 2 --test_num_crop 1 --probe_repeats 5 \
        --finetune "${entry#*:}" --output_dir "$OUT/probe_$name" > "$OUT/probe_$name.log" 2>&1 \
        || { tail -n 5 "$OUT/probe_$name.log" >&2; exit 1; }
done
"$PYTHON" - "$OUT" "${PROBED[@]}" <<'PY'
import json, os, sys
sys.path.insert(0, os.getcwd())
from tools.temporal_filters import difference_share, patch_embedding
out = sys.argv[1]
print(f"{'target':8s} {'probe top-1 (5 probe seeds)':30s} difference share")
for entry in sys.argv[2:]:
    name, path = entry.split(":", 1)
    probe = json.load(open(f"{out}/probe_{name}/results.json"))
    share = "-" if path == "random" else f"{difference_share(patch_embedding(path)):.3f}"
    seeds = " ".join(f"{t:.0f}" for t in probe["top1_per_seed"])
    print(f"{name:8s} {probe['top1']:5.1f}% ({seeds}){'':6s} {share}")
PY
