#!/usr/bin/env bash
# The GPU checks, for a machine with one CUDA GPU (under 8 minutes there):
#   1. the VOC-size rehearsal (tests/test_voc_rehearsal.py) with device=cuda: every GPU
#      stage of config/voc.yaml at real VOC sizes, with per-rule seconds and peak memory;
#   2. CAM extraction, batched (ours) against IRNet's per-image loop, ResNet-50 on the
#      rehearsal's 500x375 images: speed-up (goal >= 20x) and max |dCAM| against fp32.
# Writes one JSON: $OUT/gpu.json (OUT defaults to results/gpu).
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu_name.txt" || true

POLE_REHEARSAL_DEVICE=cuda POLE_REHEARSAL_JSON="$OUT/rehearsal_gpu.json" \
  POLE_REHEARSAL_KEEP="$OUT/rehearsal_work" \
  "$PY" -m pytest -q -s -m voc tests/test_voc_rehearsal.py -p no:cacheprovider

"$PY" -m benchmarks --out "$OUT/bench" --only cam_extract --device cuda \
  --backbone resnet50 --data "$OUT/rehearsal_work/data/VOCdevkit/VOC2012" --split train_aug \
  --n-images 64 --batch-size 8 --repeats 2

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
doc = {
    "gpu": (out / "gpu_name.txt").read_text().strip() if (out / "gpu_name.txt").exists() else None,
    "rehearsal": json.loads((out / "rehearsal_gpu.json").read_text()),
    "cam_extract": json.loads((out / "bench" / "bench.json").read_text()).get("cam_extract"),
}
(out / "gpu.json").write_text(json.dumps(doc, indent=2))
print(json.dumps({"gpu": doc["gpu"], "wall_s": doc["rehearsal"]["wall_s"],
                  "cam_extract": {k: doc["cam_extract"].get(k) for k in ("speedup", "max_abs_diff")}}))
PYEOF
