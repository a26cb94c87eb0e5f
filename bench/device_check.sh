#!/usr/bin/env bash
# What only a GPU can tell about the data path, in one run (for a node or a lent device):
#   bench/device_check.sh OUT_DIR
# 1. the GPU-only tests: NVDEC's frames against the CPU decoder's (tests/test_rendering.py);
# 2. bench/bench_data.py on the GPU: the device's share of --augment_on device (the render) and
#    of --decode_on device (NVDEC decode and render), wall time with the GPU synchronised;
# 3. a short stage-1 run through the CLI with --decode_on device --video_backend torchcodec on
#    the GPU, whose log says whether NVDEC decoded or fell back to the CPU; a few of its videos
#    are stored sideways, and NVDEC's frames of them are compared with the CPU's first.
# Needs the requirements, a CUDA build of torchcodec and the driver's libnvcuvid (INSTALL.md).
# Knobs (environment): SAMPLES (24), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
OUT=$1; mkdir -p "$OUT"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PYTHON" -c "import torch, torchcodec; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'torchcodec', torchcodec.__version__)" \
    | tee "$OUT/device.txt"
{ ldconfig -p | grep nvcuvid || echo "no libnvcuvid: NVDEC falls back to the CPU (INSTALL.md)"; } \
    | tee -a "$OUT/device.txt"
"$PYTHON" -m pytest -q -rs tests/test_rendering.py 2>&1 | tee "$OUT/tests.txt"
"$PYTHON" bench/bench_data.py --samples "${SAMPLES:-24}" --device cuda --backend torchcodec \
    --decoders pyav,torchcodec --paths device,device-decode 2>&1 | tee "$OUT/bench_data.txt"
"$PYTHON" - "$OUT/videos" <<'PY'
import os, sys
sys.path.insert(0, ".")
from tools.synthetic_videos import footage_frames, write_video
out = sys.argv[1]
# three stored sideways, as phones store portrait videos (video_io turns them upright)
turned = {15: 90, 23: -90, 31: 180}
paths = [write_video(f"{out}/v{i}.mp4", footage_frames(120, 640, 360, i), fps=30,
                     bit_rate=1_200_000, rotation=turned.get(i, 0)) for i in range(32)]
open(f"{out}/train.csv", "w").writelines(os.path.basename(p) + "\n" for p in paths)
import numpy as np, video_io
for i in turned:  # NVDEC's frames of a sideways video: turned as the CPU's are?
    try:
        cpu = video_io.decode_pyav(paths[i], lambda n: [0, 60])
        gpu = video_io.decode_torchcodec(paths[i], lambda n: [0, 60], device="cuda")
        gpu = gpu.cpu().numpy()
        same = gpu.shape == cpu.shape and np.abs(gpu.astype(int) - cpu).mean() < 3
        print(f"{paths[i]}: NVDEC {gpu.shape}, CPU {cpu.shape}: {'same' if same else 'DIFFER'}")
    except Exception as err:
        print(f"{paths[i]}: NVDEC failed: {type(err).__name__}: {err}")
PY
"$PYTHON" run_smile_pretraining.py --model pretrain_videomae_base_patch16_224 \
    --teacher_model clip_vit_b16 --teacher_weights random --data_path "$OUT/videos/train.csv" \
    --background video --augment_on device --decode_on device --video_backend torchcodec \
    --device cuda --precision bf16 --batch_size 8 --epochs 2 --warmup_epochs 0 \
    --print_freq 1 --num_workers 8 --output_dir "$OUT/run" 2>&1 | tee "$OUT/train.txt"
