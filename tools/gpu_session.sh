#!/usr/bin/env bash
# The one script a GPU session runs on the device machine, from the repository root, with
# .device/ (tools/device_wheels.sh) carried. README "## GPUs" gives the exact call.
#   1. installs the carried wheels and jresnet (pip install --no-deps -e .), offline;
#   2. smoke test: imports, a few fused train steps on the GPU (tools/gpu_smoke.py), and the
#      tests that matter on a GPU (parity, phases of conv.py, mixed precision), time-capped;
#   3. the benchmark's gpu profile on the JPEG copy (python -m jresnet.prepare_data makes it a
#      TFDS data dir meanwhile, on the CPU): python -m benchmarks.run --profile gpu, which
#      rewrites $OUT/gpu/GPU_RESULTS.json after every configuration, then GPU_RESULTS.md.
# Everything it prints also goes to $OUT/session.log. Total wall time stays under
# SESSION_BUDGET_S (default 480 s): the benchmark gets what the first steps leave.
# The same benchmark command with --dry-run runs on a CPU (tests/test_benchmarks.py).
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
TFDS=/tmp/jresnet-tfds
JAX_PLATFORMS=cpu python3 -m jresnet.prepare_data --from .device/data/cifar10_jpeg.tar.gz \
  --data_dir "$TFDS" > "$OUT/prepare.log" 2>&1 &
PREPARE=$!
echo "== smoke ($(( $(date +%s) - START )) s)"
timeout 120 python3 tools/gpu_smoke.py || exit 1
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_mixed_precision.py \
  tests/test_conv.py tests/test_models.py  # failures are reported, the benchmark still runs
wait "$PREPARE" || { tail -20 "$OUT/prepare.log"; exit 1; }
echo "== benchmark ($(( $(date +%s) - START )) s)"
LEFT=$(( BUDGET - ($(date +%s) - START) - 30 ))
python3 -m benchmarks.run --profile gpu --data-dir "$TFDS" --output "$OUT/gpu/GPU_RESULTS.md" \
  --budget-s "$LEFT"
echo "== done ($(( $(date +%s) - START )) s)"
