#!/usr/bin/env bash
# Learning evidence on a CPU: linear probes on the quick-start's motion-classification videos
# (classes differ only in the direction of motion) for the quick-start's stage-2 checkpoint and
# for the same encoder left at random initialisation. Usage: scripts/quickstart_probe.sh [DIR]
# where DIR is the quick-start's output folder (default runs/quickstart).
set -euo pipefail
OUT=${1:-runs/quickstart}
source "$(dirname "$0")/common.sh"
CKPT=$(ls "$OUT"/stage2/checkpoint-[0-9]*.pth | sort -V | tail -n 1)
PROBE=(--linear_probe --data_path "$OUT/data" --data_set UCF101 --nb_classes 4
       --model vit_tiny_patch16_224 --num_frames 8 --input_size 112 --short_side_size 112
       --sampling_rate 2 --test_num_segment 2 --test_num_crop 1 --device cpu --num_workers 2
       --batch_size 16 --probe_repeats 5)

for name in pretrained random; do
    weights=$CKPT
    [ "$name" = random ] && weights=random
    echo "== linear probe: $name encoder ($weights)"
    "$PYTHON" run_class_finetuning.py "${PROBE[@]}" --finetune "$weights" \
        --output_dir "$OUT/probe_$name" | grep -E "results|loaded|random"
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
res = {n: json.load(open(f"{out}/probe_{n}/results.json")) for n in ("pretrained", "random")}
print("linear-probe top-1 on motion direction (4 classes, chance 25%), mean of 5 probe seeds:")
for name, r in res.items():
    seeds = ", ".join(f"{t:.1f}" for t in r["top1_per_seed"])
    print(f"  {name:10s} {r['top1']:5.1f}%   (seeds: {seeds}; {r['num_videos']} test videos)")
PY
