#!/usr/bin/env bash
# The one script a GPU session runs on the device machine, from the repository root, with
# .device/ (tools/device_wheels.sh) carried. README "## GPUs" gives the exact call.
#   1. installs the carried wheels and jresnet (pip install --no-deps -e .), offline;
#   2. smoke test: imports, a few fused train steps on the GPU (tools/gpu_smoke.py), and the
#      tests that matter on a GPU (parity, phases of conv.py, mixed precision), time-capped;
#   3. python -m benchmarks.gpu --out $OUT/gpu, which writes results.jsonl line by line.
# Everything it prints also goes to $OUT/session.log. Total wall time stays under
# SESSION_BUDGET_S (default 480 s): the benchmark gets what the first steps leave.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jresnet-out}
BUDGET=${SESSION_BUDGET_S:-480}
START=$(date +%s)
mkdir -p "$OUT/gpu"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
echo "== install ($(date -u))"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .device/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  || export PYTHONPATH=/tmp/site:$PWD  # the checkout itself, should pip refuse
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import jax, jresnet.train, jresnet.input_pipeline; print(jax.__version__, jax.devices())" \
  || exit 1
echo "== smoke ($(( $(date +%s) - START )) s)"
timeout 120 python3 tools/gpu_smoke.py || exit 1
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_mixed_precision.py \
  tests/test_conv.py tests/test_models.py  # failures are reported, the benchmark still runs
echo "== benchmark ($(( $(date +%s) - START )) s)"
LEFT=$(( BUDGET - ($(date +%s) - START) - 30 ))
python3 -m benchmarks.gpu --out "$OUT/gpu" --data .device/data/cifar10_jpeg.tar.gz \
  --budget-s "$LEFT"
echo "== done ($(( $(date +%s) - START )) s)"
