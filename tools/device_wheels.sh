#!/usr/bin/env bash
# Fills .device/ (ignored by git) with what a GPU session carries to the device machine:
#   .device/wheels/  Python 3.12 manylinux x86_64 wheels of jresnet's dependencies that the
#                    device's image lacks (its python3 has jax 0.11.2 with the CUDA 13 plugin,
#                    flax, optax, orbax-checkpoint, chex, torch, numpy, pillow, matplotlib,
#                    protobuf, attrs, six, wrapt, ...: see the device README's package list);
#   .device/data/    the JPEG copy of CIFAR-10 for the benchmark's gpu profile (tools/gpu_session.sh).
# Usage: bash tools/device_wheels.sh [CIFAR10_JPEG_TARBALL]
# Then check the set on this machine: bash tools/check_device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARBALL=${1:-../shared/data/cifar10_jpeg.tar.gz}
WHEELS=.device/wheels
# Pinned to what tools/check_device_wheels.sh verified together with jax 0.11.2.
PACKAGES=(
  tensorflow-datasets==4.9.10
  array-record==0.8.6
  ml-collections==1.1.0
  tensorboardX==2.6.5
  importlib-resources==7.1.0
  dm-tree==0.1.10
  immutabledict==4.3.1
  simple-parsing==0.1.9
  docstring-parser==0.18.0
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  termcolor==3.3.0
  toml==0.10.2
)
rm -rf "$WHEELS" && mkdir -p "$WHEELS" .device/data
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
# promise (a dependency of tensorflow-datasets) is published as source only; it is pure
# Python, so its wheel is built here.
python3 -m pip wheel --no-deps -q -w "$WHEELS" promise==2.3
cp "$TARBALL" .device/data/cifar10_jpeg.tar.gz
ls "$WHEELS"
du -ch "$WHEELS" .device/data | tail -1
