"""XLA:CPU flags that make ResNet training faster; must be set before JAX is imported.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise``
lets XLA:CPU fuse elementwise work (BatchNorm, ReLU) into YNNPACK kernels
instead of materialising transposes for the weight-gradient convolutions:
about 1.28x per train step on a 2-core Zen 4 (see ``benchmarks/RESULTS.md``).
It changes only rounding (tests/test_xla_setup.py checks a step against the
default flags).

Unknown ``xla_cpu_*`` flags abort jaxlib at start-up, so the flag is only
added for jaxlib versions known to accept it. Opt out with
``JRESNET_XLA_CPU_FLAGS=0``; a flag already in ``XLA_FLAGS`` is left alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Container, MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise"
# jaxlib versions whose XLA knows the flag (checked: 0.10.2).
KNOWN_JAXLIB_PREFIXES = ("0.10.",)
OPT_OUT = "JRESNET_XLA_CPU_FLAGS"


def configure_cpu_flags(
    environ: MutableMapping[str, str] | None = None, modules: Container[str] | None = None
) -> bool:
    """Adds `YNN_FUSION_FLAG` to ``XLA_FLAGS`` where safe; returns whether it did.

    Does nothing if JAX is already imported (too late), if ``JRESNET_XLA_CPU_FLAGS=0``,
    if ``XLA_FLAGS`` already sets the fusion type, or for an unknown jaxlib.
    The flag only affects the CPU backend; GPU runs ignore it.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "jax" in modules or environ.get(OPT_OUT, "1") == "0":
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
