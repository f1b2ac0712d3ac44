"""XLA:CPU flags that make ResNet training faster; must be set before JAX is imported.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise``
lets XLA:CPU fuse elementwise work (BatchNorm, ReLU) into YNNPACK kernels
instead of materialising transposes for the weight-gradient convolutions; its
speed-up per train step is measured in ``benchmarks/RESULTS.md``. It changes
only rounding (tests/test_xla_setup.py checks a step against the default flags).

The flag concerns the CPU backend only. ``XLA_FLAGS`` is parsed once for every
backend of the process, and XLA:GPU never reads ``xla_cpu_*`` options, so on a
GPU machine the flag changes nothing but the CPU client JAX keeps beside the
GPU (host-side work). Where ``JAX_PLATFORMS`` (or the older
``JAX_PLATFORM_NAME``) names backends and ``cpu`` is not among them, no CPU
program is compiled at all, so the flag is not added.

Unknown ``xla_cpu_*`` flags abort jaxlib at start-up, so the flag is only
added for jaxlib versions known to accept it (`KNOWN_JAXLIB_PREFIXES`). Opt
out with ``JRESNET_XLA_CPU_FLAGS=0``; a flag already in ``XLA_FLAGS`` is left
alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Container, Mapping, MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise"
# jaxlib versions whose XLA:CPU accepts the flag, each probed in a subprocess
# (tests/test_xla_setup.py): 0.10.2, 0.11.2 and 0.12.0.1.
KNOWN_JAXLIB_PREFIXES = ("0.10.", "0.11.", "0.12.")
OPT_OUT = "JRESNET_XLA_CPU_FLAGS"
PLATFORM_VARIABLES = ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")


def uses_cpu_backend(environ: Mapping[str, str]) -> bool:
    """Whether JAX may compile for its CPU backend, judging by ``JAX_PLATFORMS``.

    Unset or empty means JAX picks (a CPU backend is always created); otherwise the
    comma-separated list must name ``cpu``, e.g. ``JAX_PLATFORMS=cuda`` does not.
    """
    for variable in PLATFORM_VARIABLES:
        value = environ.get(variable, "").strip()
        if value:
            return "cpu" in (name.strip().lower() for name in value.split(","))
    return True


def configure_cpu_flags(
    environ: MutableMapping[str, str] | None = None, modules: Container[str] | None = None
) -> bool:
    """Adds `YNN_FUSION_FLAG` to ``XLA_FLAGS`` where safe; returns whether it did.

    Does nothing if JAX is already imported (too late), if ``JRESNET_XLA_CPU_FLAGS=0``,
    if ``JAX_PLATFORMS`` leaves out the CPU backend (`uses_cpu_backend`), if
    ``XLA_FLAGS`` already sets the fusion type, or for an unknown jaxlib.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "jax" in modules or environ.get(OPT_OUT, "1") == "0":
        return False
    if not uses_cpu_backend(environ):
        return False
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not version.startswith(KNOWN_JAXLIB_PREFIXES):
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FUSION_FLAG}".strip()
    return True
