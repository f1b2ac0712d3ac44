"""Deployment formats of a model's eval function: ONNX and serialized StableHLO (`jax.export`).

Command line::

    python -m jresnet.export WORKDIR_OR_NAME model.onnx [--input_layout NCHW] [--opset 18]
    python -m jresnet.export WORKDIR_OR_NAME model.jax.bin [--platforms cpu,cuda,tpu]

``WORKDIR_OR_NAME`` is any weights source `jresnet.weights.load` resolves: a jresnet
work directory, a published weights name (`jresnet.pretrained`) or a PyTorch or
safetensors file.

Both export ``logits = f(images)`` in eval mode (BatchNorm running statistics,
weights baked in as constants) with a dynamic batch dimension:

* ``images``: float32 ``[batch, 32, 32, 3]`` (NHWC, the default) or
  ``[batch, 3, 32, 32]`` (``--input_layout NCHW``, as PyTorch), already
  normalised: ``(pixels / 255 - mean) / std`` with the model's normalisation,
  which the ONNX file records in its metadata (``normalization``, ``mean``,
  ``std``, ``label_names``);
* ``logits``: float32 ``[batch, num_classes]``.

ONNX goes through the ``jax2onnx`` exporter (extra ``export``): every part of
the network (3x3 and 1x1 convolutions, BatchNorm, ReLU, option A's strided
slice and channel padding, the residual adds, global average pooling, the
classifier) exports; nothing is rewritten by hand. A ``.onnx`` file runs in
onnxruntime, TensorRT, OpenVINO, etc.

The StableHLO artifact (``jax.export``, no extra needed) runs in any JAX
program without jresnet's code::

    exported = jax.export.deserialize(open("model.jax.bin", "rb").read())
    logits = exported.call(images)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jresnet import datasets, errors, models, safe_files, weights
from jresnet.errors import ConfigError, OutputError

INPUT_LAYOUTS = ("NHWC", "NCHW")
ONNX_EXTENSION = ".onnx"
# ONNX 1.13 (2022). jax2onnx 0.13 writes ReduceMean with its axes as an input, which
# opset 18 introduced, whatever opset it is asked for: below 18 onnx.checker and
# onnxruntime reject its models, so lower opsets are refused. The newest is the installed
# onnx package's.
MIN_OPSET = 18
DEFAULT_OPSET = MIN_OPSET
DEFAULT_PLATFORMS = "cpu,cuda"
# The platforms jax.export lowers for (it accepts other names without complaint, for an
# artifact nothing runs).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def eval_function(
    model: models.ResNet, variables: Mapping[str, Any], input_layout: str = "NHWC"
) -> Callable[[jax.Array], jax.Array]:
    """``images -> logits`` in eval mode with ``variables`` closed over (exported as constants).

    ``images`` are normalised float32 ``[N, 32, 32, 3]`` (NHWC) or ``[N, 3, 32, 32]`` (NCHW).
    """
    if input_layout not in INPUT_LAYOUTS:
        raise ConfigError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    variables = jax.tree.map(jnp.asarray, dict(variables))

    def logits(images: jax.Array) -> jax.Array:
        if input_layout == "NCHW":
            images = jnp.transpose(images, (0, 2, 3, 1))
        return model.apply(variables, images, train=False)

    return logits


def _input_shape(input_layout: str, batch: Any) -> tuple[Any, ...]:
    return (batch, 3, 32, 32) if input_layout == "NCHW" else (batch, 32, 32, 3)


def _import_exporter(name: str) -> Any:
    """``onnx`` or ``jax2onnx``: optional packages (the ``export`` extra), imported on use."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(
            "ONNX export needs the jax2onnx and onnx packages: pip install onnx jax2onnx "
            "(from a clone: pip install -e '.[export]')"
        ) from e


def check_opset(opset: int) -> None:
    """Raises `ConfigError` unless ONNX ``opset`` is one jresnet's exporter writes correctly."""
    newest = _import_exporter("onnx").defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"--opset {opset} is not supported: it must be at least {MIN_OPSET} (the exporter "
            f"writes opset-{MIN_OPSET} operators) and at most {newest} (installed onnx's newest)"
        )


def check_platforms(platforms: Sequence[str]) -> None:
    """Raises `ConfigError` unless ``platforms`` is a non-empty list of `PLATFORMS`."""
    if not platforms:
        raise ConfigError(f"--platforms needs at least one of {', '.join(PLATFORMS)}")
    for platform in platforms:
        if platform not in PLATFORMS:
            raise ConfigError(
                f"--platforms: {platform!r} is not a jax.export platform; use one or more of "
                f"{', '.join(PLATFORMS)}, comma-separated"
            )


def to_onnx(
    model: models.ResNet,
    variables: Mapping[str, Any],
    input_layout: str = "NHWC",
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Any:
    """The ONNX ``ModelProto`` of the eval function, input ``images``, output ``logits``.

    The batch dimension is dynamic (named ``batch``); ``metadata`` goes into the
    model's ``metadata_props``. ``opset`` is at least `MIN_OPSET` (`check_opset`).
    """
    jax2onnx = _import_exporter("jax2onnx")
    check_opset(opset)
    fn = eval_function(model, variables, input_layout)
    # jax2onnx 0.13's linen Conv plugin prints debugging lines to stdout, and its dm_pix
    # plugins (unused here) fail to import under jax 0.10 with logged tracebacks: keep both out.
    plugin_log = logging.getLogger("jax2onnx.plugins.plugin_system")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto = jax2onnx.to_onnx(
                fn,
                [_input_shape(input_layout, "batch")],
                model_name="jresnet",
                opset=opset,
                input_names=["images"],
                output_names=["logits"],
            )
    finally:
        plugin_log.setLevel(level)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def to_stablehlo(
    model: models.ResNet,
    variables: Mapping[str, Any],
    input_layout: str = "NHWC",
    platforms: Sequence[str] = ("cpu", "cuda"),
) -> bytes:
    """The serialized `jax.export.Exported` of the eval function, batch dimension symbolic.

    ``platforms`` are some of `PLATFORMS` (`check_platforms`).
    """
    check_platforms(platforms)
    fn = eval_function(model, variables, input_layout)
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct(_input_shape(input_layout, batch), jnp.float32)
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
    return bytes(exported.serialize())


def _metadata(normalization: str, dataset: str) -> dict[str, str]:
    mean, std = datasets.NORMALIZATIONS[normalization]
    return {
        "normalization": normalization,
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
        "dataset": dataset,
        "label_names": json.dumps(list(datasets.get(dataset).label_names)),
    }


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.export",
        description="Export a model's eval function as ONNX (OUT ending in .onnx) or as a "
        "serialized jax.export artifact (any other OUT).",
    )
    parser.add_argument(
        "source", metavar="WORKDIR_OR_NAME", help="work directory, weights name or weights file"
    )
    parser.add_argument("out", metavar="OUT", help="model.onnx, or e.g. model.jax.bin")
    parser.add_argument("--input_layout", choices=INPUT_LAYOUTS, default="NHWC")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, at least {MIN_OPSET}"
    )
    parser.add_argument(
        "--platforms",
        default=DEFAULT_PLATFORMS,
        help=f"jax.export platforms, comma-separated ({', '.join(PLATFORMS)})",
    )
    parser.add_argument("--cache_dir", help="where published weights are cached")
    args = parser.parse_args(argv)

    if os.path.exists(args.out):
        raise OutputError(f"{args.out} already exists; choose another output path")
    safe_files.check_target(args.out)  # before the work: a missing directory, a planted link
    onnx_out = args.out.lower().endswith(ONNX_EXTENSION)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    if onnx_out:
        check_opset(args.opset)
    else:
        check_platforms(platforms)
    settings, variables = weights.load(args.source, args.cache_dir)
    model = models.from_config(settings)
    normalization, dataset = settings.normalization, settings.dataset
    shape = ", ".join(str(d) for d in _input_shape(args.input_layout, "batch"))
    metadata = _metadata(normalization, dataset)
    if onnx_out:
        proto = to_onnx(model, variables, args.input_layout, args.opset, metadata)
        safe_files.write_bytes(args.out, proto.SerializeToString())
        what = f"ONNX (opset {args.opset})"
    else:
        artifact = to_stablehlo(model, variables, args.input_layout, platforms)
        safe_files.write_bytes(args.out, artifact)
        what = f"jax.export StableHLO for {', '.join(platforms)}"
    print(
        f"Wrote {args.out}: {what}, input 'images' float32 [{shape}] ({args.input_layout}) "
        f"normalised as (x / 255 - {metadata['mean']}) / {metadata['std']} ({normalization}), "
        f"output 'logits' float32 [batch, {model.num_classes}] ({dataset})."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit code (`jresnet.errors`)."""
    return errors.run_cli(lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
