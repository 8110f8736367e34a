#!/usr/bin/env bash
# The prepared device check (issues 6, 17): one command, under 10 minutes on one H200.
#
#   bench/gpu_check.sh            # on a CUDA machine
#   bench/gpu_check.sh --quick    # anywhere, seconds to minutes: the same steps, CPU-sized
#
# 1. the tests marked `gpu` (tests/test_gpu.py: training, prediction, ONNX Runtime's CUDA
#    provider and compiled PyTorch (inductor) on CUDA, and two-GPU data-parallel training
#    when there are two GPUs);
# 2. bench/train_throughput.py on a d2l-sized synthetic set (2,000 train / 800 test photos at
#    224 px, 5 epochs, batch 128): images/s with data loading included, engine vs the bare
#    d2l loop, both on the GPU;
# 3. bench/predict_load.py on the GPU: every runtime's batched speed and bare latency (eager
#    and compiled PyTorch, ONNX Runtime fp32 and INT8 on its CUDA provider), then /predict
#    with PREDICT_RUNTIME=auto (the fastest measured) at concurrency 1, 16 and 64.
#
# Figures go to $OUT (the device tool's output folder) or bench-results/: gpu_check.txt
# (everything printed) and one JSON file per benchmark. The virtualenv is created when
# missing and no python3 at hand has the dependencies (`make .venv/.installed`).
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
out="${OUT:-bench-results}"
mkdir -p "$out"
report="$out/gpu_check.txt"
: > "$report"
log() { echo "$@" | tee -a "$report"; }

# The Python to use: $PY, else the project's .venv, else a python3 that already has the
# dependencies (a device machine with its own torch), else a new .venv.
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
  elif python3 -c 'import torch, torchvision, fastapi, celery, sqlalchemy, alembic' 2>/dev/null
  then
    PY=python3
  else
    make .venv/.installed >> "$out/install.log" 2>&1 \
      || { log "gpu_check: creating .venv failed (see $out/install.log)"; exit 1; }
    PY=.venv/bin/python
  fi
fi
status=0

log "== $(date -u +%FT%TZ) gpu_check (quick=$quick)"
"$PY" - <<'PY' 2>&1 | tee -a "$report"
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 "
          f"{torch.cuda.is_bf16_supported()}")
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}: {ort.get_available_providers()}")
except ImportError:
    print("onnxruntime: not installed")
PY

if (( quick )); then
  device=cpu
  train_args=(--quick)
  predict_args=(--quick --concurrency 16)  # --quick: no compile on the CPU
else
  device=cuda
  train_args=(--train-per-class 1000 --test-per-class 400 --image-size 224 --epochs 5
              --batch-size 128)
  predict_args=(--rounds 3 --seconds 8 --concurrency 16,64)
fi

log "== 1. tests marked gpu"
timeout 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
  | tee -a "$report" || status=1

log "== 2. training throughput on $device (bench/train_throughput.py ${train_args[*]})"
timeout 300 "$PY" bench/train_throughput.py --device "$device" "${train_args[@]}" --json \
  > "$out/train_throughput.txt" 2>&1 || status=1
grep -v '^{' "$out/train_throughput.txt" | tee -a "$report"
tail -n 1 "$out/train_throughput.txt" > "$out/train_throughput.json"

log "== 3. /predict on $device (bench/predict_load.py ${predict_args[*]})"
timeout 420 "$PY" bench/predict_load.py --device "$device" "${predict_args[@]}" --json \
  > "$out/predict_load.txt" 2>&1 || status=1
grep -v '^{' "$out/predict_load.txt" | tee -a "$report"
tail -n 1 "$out/predict_load.txt" > "$out/predict_load.json"

log "== done: status $status (0 = every step ran and passed); figures in $out/"
exit $status
