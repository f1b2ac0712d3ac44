#!/usr/bin/env bash
# Checks, on this machine, that .device/wheels installs offline next to the device's own
# packages: a Python 3.12 venv with jax 0.11.2 (CPU), flax, optax, orbax-checkpoint, chex and
# the other preinstalled packages jresnet uses, then the wheels with --no-index, then jresnet
# with --no-deps, then imports. Usage: bash tools/check_device_wheels.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/jresnet-device-venv}
if [ ! -x "$VENV/bin/python" ]; then
  PYENV_VERSION=${PYENV_VERSION:-3.12.1} python -m venv "$VENV"
  "$VENV/bin/pip" install -q "jax==0.11.2" flax optax orbax-checkpoint chex numpy pillow \
    matplotlib absl-py protobuf psutil pyarrow requests tqdm wrapt etils fsspec \
    typing-extensions zipp attrs six pyyaml msgpack setuptools pytest
fi
"$VENV/bin/pip" install -q --no-index --no-deps --no-compile --find-links .device/wheels \
  .device/wheels/*.whl
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --no-index -e .
"$VENV/bin/pip" check || true  # version notes only; the imports below are what matters
cd /tmp && "$VENV/bin/python" -c "
import jax, jresnet, jresnet.input_pipeline, jresnet.train, jresnet.prepare_data, jresnet.main
print('ok: jax', jax.__version__, 'jresnet from', jresnet.__file__)
"
