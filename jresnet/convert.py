"""Conversion between PyTorch CIFAR ResNet state dicts and jresnet (Flax) variables.

Two PyTorch layouts are read, and their architecture is inferred from the keys:

* the seed's (kuangliu/pytorch-cifar style), option B: ``conv1.weight``,
  ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
  ``layerK.i.{conv1,bn1,conv2,bn2}.*``, the projection shortcut
  ``layerK.i.shortcut.0.weight`` (1x1 conv) and ``layerK.i.shortcut.1.*`` (BN)
  where the shape changes, and ``linear.{weight,bias}``;
* akamaster's (pytorch_resnet_cifar10), option A: the same names with the
  ``module.`` prefix of ``nn.DataParallel``, no shortcut parameters, and no
  ``num_batches_tracked`` (saved by an old PyTorch).

Conventions (PyTorch -> Flax):

* conv weight ``[out, in, kh, kw]`` (OIHW) -> ``kernel [kh, kw, in, out]`` (HWIO);
* linear weight ``[out, in]`` -> ``kernel [in, out]``; bias unchanged;
* BN ``weight``/``bias`` -> params ``scale``/``bias``; ``running_mean``/
  ``running_var`` -> batch_stats ``mean``/``var``; ``num_batches_tracked`` is
  dropped (jresnet's BatchNorm uses a fixed momentum, so it is never needed);
* module ``layerK.i`` -> ``layerK_{i}``; ``shortcut.0``/``shortcut.1`` ->
  ``shortcut_conv``/``shortcut_bn``.

Activations are NCHW in PyTorch and NHWC in jresnet: transpose inputs with
``x.transpose(0, 2, 3, 1)``; logits are the same.

Conversion is strict: missing keys, unexpected keys and shape mismatches raise
`ConversionError` naming all of them. torch is optional (the ``test``/``bench``
extras): only `load_torch_checkpoint` and ``flax_to_torch(..., as_tensors=True)``
import it.

Command line::

    python -m jresnet.convert IN.pth OUT_DIR [--shortcut A|B]
        [--dataset cifar10|cifar100] [--normalization cifar|imagenet]

writes a jresnet checkpoint that `jresnet.checkpoint.load_model` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from jresnet import models
from jresnet.errors import JresnetError

if TYPE_CHECKING:
    import torch

DATA_PARALLEL_PREFIX = "module."
# Keys of the dicts that training scripts wrap their state dict in:
# akamaster's ``{"state_dict", "best_prec1"}``, the seed's ``{"net", "acc", "epoch"}``,
# and the PyTorch tutorials' ``{"model_state_dict", ...}``.
WRAPPER_KEYS = ("state_dict", "net", "model_state_dict")

_BLOCK_KEY = re.compile(r"^layer([123])\.(\d+)\.")
_SHORTCUT_KEY = re.compile(r"^layer[123]\.\d+\.shortcut\.")
_FLAX_BLOCK = re.compile(r"^layer([123])_(\d+)$")


class ConversionError(JresnetError, ValueError):
    """A checkpoint or state dict that can't be converted; the message says why."""


class Architecture(NamedTuple):
    """What a state dict describes: ``depth = 6 * blocks_per_stage + 2``."""

    depth: int
    shortcut: str  # "A" or "B"
    num_classes: int

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def model_name(self) -> str:
        """The `jresnet.models.create_model` name, e.g. ``"resnet20"``."""
        return f"resnet{self.depth}"

    def describe(self) -> str:
        return f"ResNet-{self.depth} (option {self.shortcut}, {self.num_classes} classes)"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One PyTorch state-dict entry and where it lives in the Flax variables."""

    torch_key: str
    kind: str  # "conv", "linear", "vector" or "counter" (num_batches_tracked: no Flax twin)
    torch_shape: tuple[int, ...]
    collection: str = ""  # "params" or "batch_stats"
    path: tuple[str, ...] = ()

    @property
    def flax_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            o, i, h, w = self.torch_shape
            return (h, w, i, o)
        if self.kind == "linear":
            return tuple(reversed(self.torch_shape))
        return self.torch_shape


def _layout(blocks_per_stage: int, shortcut: str, num_classes: int) -> list[_Entry]:
    """Every state-dict entry of the PyTorch model, in PyTorch's registration order."""
    entries: list[_Entry] = []

    def conv(name: str, path: tuple[str, ...], out: int, in_: int, k: int) -> None:
        entries.append(
            _Entry(f"{name}.weight", "conv", (out, in_, k, k), "params", (*path, "kernel"))
        )

    def bn(name: str, path: tuple[str, ...], c: int) -> None:
        for torch_name, collection, flax_name in (
            ("weight", "params", "scale"),
            ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"),
            ("running_var", "batch_stats", "var"),
        ):
            entries.append(
                _Entry(f"{name}.{torch_name}", "vector", (c,), collection, (*path, flax_name))
            )
        entries.append(_Entry(f"{name}.num_batches_tracked", "counter", ()))

    widths = models.STAGE_WIDTHS
    conv("conv1", ("conv1",), widths[0], 3, 3)
    bn("bn1", ("bn1",), widths[0])
    in_planes = widths[0]
    for stage, planes in enumerate(widths, start=1):
        for i in range(blocks_per_stage):
            stride = 2 if stage > 1 and i == 0 else 1
            t, f = f"layer{stage}.{i}", f"layer{stage}_{i}"
            conv(f"{t}.conv1", (f, "conv1"), planes, in_planes, 3)
            bn(f"{t}.bn1", (f, "bn1"), planes)
            conv(f"{t}.conv2", (f, "conv2"), planes, planes, 3)
            bn(f"{t}.bn2", (f, "bn2"), planes)
            if shortcut == "B" and (stride != 1 or in_planes != planes):
                conv(f"{t}.shortcut.0", (f, "shortcut_conv"), planes, in_planes, 1)
                bn(f"{t}.shortcut.1", (f, "shortcut_bn"), planes)
            in_planes = planes
    entries.append(
        _Entry("linear.weight", "linear", (num_classes, in_planes), "params", ("linear", "kernel"))
    )
    entries.append(_Entry("linear.bias", "vector", (num_classes,), "params", ("linear", "bias")))
    return entries


def _mismatch_error(
    what: str, missing: Sequence[str], unexpected: Sequence[str], wrong: Sequence[str]
) -> ConversionError:
    lines = [f"{what}:"]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape/dtype mismatches", wrong),
    ):
        if items:
            lines.append(f"  {label} ({len(items)}): " + ", ".join(items))
    return ConversionError("\n".join(lines))


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Removes the ``module.`` prefix of ``nn.DataParallel`` when every key has it.

    Returns ``(state_dict, had_prefix)``.
    """
    keys = list(state_dict)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        n = len(DATA_PARALLEL_PREFIX)
        return {k[n:]: v for k, v in state_dict.items()}, True
    return dict(state_dict), False


def _infer(state_dict: Mapping[str, Any], shortcut: str | None) -> tuple[int, str, int | None]:
    """``(blocks_per_stage, shortcut, num_classes or None)`` of an unprefixed state dict."""
    blocks = 0
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks = max(blocks, int(m.group(2)) + 1)
    if blocks == 0:
        shown = ", ".join(list(state_dict)[:8]) or "none"
        raise ConversionError(
            "not a CIFAR ResNet state dict: no 'layer{1,2,3}.<i>.' block keys "
            f"(first keys: {shown})"
        )
    shortcut_keys = [k for k in state_dict if _SHORTCUT_KEY.match(k)]
    inferred = "B" if shortcut_keys else "A"
    if shortcut is not None:
        shortcut = shortcut.upper()
        if shortcut not in ("A", "B"):
            raise ConversionError(f"shortcut must be 'A', 'B' or None, got {shortcut!r}")
        if shortcut != inferred:
            if shortcut == "A":
                detail = "the state dict has option-B projection shortcut parameters: " + ", ".join(
                    shortcut_keys
                )
            else:
                detail = (
                    "the state dict has no shortcut parameters (layerK.i.shortcut.0/1.*), "
                    "so it is an option-A (zero-padding) model"
                )
            raise ConversionError(f"shortcut={shortcut!r} was requested but {detail}")
    num_classes = None
    for key in ("linear.weight", "linear.bias"):
        shape = getattr(state_dict.get(key), "shape", None)
        if shape:
            num_classes = int(shape[0])
            break
    return blocks, inferred, num_classes


def infer_architecture(state_dict: Mapping[str, Any]) -> Architecture:
    """Depth, shortcut option and number of classes of a PyTorch state dict (either layout).

    Only the keys and the classifier's shape are read; `torch_to_flax` checks the rest.
    """
    unprefixed, _ = strip_data_parallel_prefix(state_dict)
    blocks, shortcut, num_classes = _infer(unprefixed, None)
    if num_classes is None:
        raise ConversionError("can't infer num_classes: no 'linear.weight' or 'linear.bias' key")
    return Architecture(6 * blocks + 2, shortcut, num_classes)


def _to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
        value = value.numpy()
    return np.array(value, dtype=np.float32)


def _is_float(value: Any) -> bool:
    if hasattr(value, "is_floating_point"):
        return bool(value.is_floating_point())
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def torch_to_flax(
    state_dict: Mapping[str, Any], shortcut: str | None = None
) -> dict[str, dict[str, Any]]:
    """Converts a PyTorch CIFAR ResNet state dict to jresnet variables.

    Args:
      state_dict: ``{key: torch.Tensor | np.ndarray}`` in the seed's layout or
        akamaster's (``module.`` prefix, no ``num_batches_tracked``); see the
        module docstring. ``num_batches_tracked`` entries are dropped.
      shortcut: "A" or "B"; None infers it from the presence of
        ``layerK.i.shortcut.*`` keys. A value that contradicts the keys is an error.

    Returns:
      ``{"params": ..., "batch_stats": ...}``: nested dicts of float32 numpy
      arrays with exactly the structure and shapes of
      ``models.create_model(f"resnet{depth}", num_classes=..., shortcut=...).init(...)``.
      Use `infer_architecture` for the depth and number of classes.

    Raises:
      ConversionError: (a `ValueError`) naming every missing key, unexpected key
        and shape mismatch, or a contradictory ``shortcut``.
    """
    sd, _ = strip_data_parallel_prefix(state_dict)
    blocks, shortcut, num_classes = _infer(sd, shortcut)
    entries = _layout(blocks, shortcut, num_classes or 0)
    by_key = {e.torch_key: e for e in entries}

    missing = [e.torch_key for e in entries if e.kind != "counter" and e.torch_key not in sd]
    unexpected = [k for k in sd if k not in by_key]
    wrong = []
    for key, value in sd.items():
        entry = by_key.get(key)
        if entry is None or entry.kind == "counter":
            continue
        shape = getattr(value, "shape", None)
        if shape is None:
            wrong.append(f"{key}: expected an array, got {type(value).__name__}")
        elif tuple(shape) != entry.torch_shape:
            wrong.append(f"{key}: expected {entry.torch_shape}, got {tuple(shape)}")
        elif not _is_float(value):
            wrong.append(f"{key}: expected floating point, got {value.dtype}")
    if missing or unexpected or wrong:
        arch = Architecture(6 * blocks + 2, shortcut, num_classes or 0)
        what = (
            f"state dict does not match a CIFAR {arch.describe()}"
            if num_classes
            else f"state dict does not match a CIFAR ResNet-{arch.depth} (option {shortcut})"
        )
        raise _mismatch_error(what, missing, unexpected, wrong)

    variables: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
    for entry in entries:
        if entry.kind == "counter":
            continue
        value = _to_numpy(sd[entry.torch_key])
        if entry.kind == "conv":
            value = value.transpose(2, 3, 1, 0)
        elif entry.kind == "linear":
            value = value.T
        _set(variables[entry.collection], entry.path, np.ascontiguousarray(value))
    return variables


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _infer_flax(variables: Mapping[str, Any]) -> Architecture:
    params = variables.get("params")
    if not isinstance(params, Mapping):
        raise ConversionError(
            f"expected variables {{'params', 'batch_stats'}}, got keys {sorted(variables)}"
        )
    blocks, shortcut = 0, "A"
    for name, block in params.items():
        m = _FLAX_BLOCK.match(name)
        if m:
            blocks = max(blocks, int(m.group(2)) + 1)
            if isinstance(block, Mapping) and "shortcut_conv" in block:
                shortcut = "B"
    if blocks == 0:
        raise ConversionError(
            f"not jresnet ResNet variables: no 'layer{{1,2,3}}_<i>' params (got {sorted(params)})"
        )
    linear = params.get("linear")
    shape = getattr(linear.get("kernel"), "shape", None) if isinstance(linear, Mapping) else None
    num_classes = int(shape[-1]) if shape else 0  # 0: reported as missing/mismatched below
    return Architecture(6 * blocks + 2, shortcut, num_classes)


def flax_to_torch(variables: Mapping[str, Any], as_tensors: bool = False) -> dict[str, Any]:
    """Converts jresnet variables to a state dict of the seed's PyTorch model.

    Args:
      variables: ``{"params", "batch_stats"}`` of a `models.ResNet` (any depth,
        option A or B, any number of classes; all inferred).
      as_tensors: return ``torch.Tensor`` values (needs torch) instead of numpy arrays.

    Returns:
      ``{key: array}`` in PyTorch's registration order with the seed's key names
      (option B adds ``layerK.i.shortcut.0.weight`` and ``layerK.i.shortcut.1.*``).
      Float32 arrays, conv weights OIHW, linear weight ``[out, in]``. Every
      BatchNorm also gets ``num_batches_tracked`` as an int64 zero scalar, as a
      current PyTorch ``BatchNorm2d`` has, so that
      ``model.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)`` works
      on the seed's model (and on akamaster's option-A model under a current
      PyTorch). It is unused with PyTorch's default fixed momentum.

    Raises:
      ConversionError: naming every missing or unexpected variable and shape mismatch.
    """
    arch = _infer_flax(variables)
    entries = _layout(arch.blocks_per_stage, arch.shortcut, arch.num_classes)
    flat = {
        (collection, *path): value
        for collection, tree in variables.items()
        for path, value in (_flatten(tree).items() if isinstance(tree, Mapping) else [((), tree)])
    }
    expected = {(e.collection, *e.path): e for e in entries if e.kind != "counter"}
    missing = ["/".join(p) for p in expected if p not in flat]
    unexpected = ["/".join(p) for p in flat if p not in expected]
    wrong = [
        f"{'/'.join(p)}: expected {e.flax_shape}, got {tuple(np.shape(flat[p]))}"
        for p, e in expected.items()
        if p in flat and tuple(np.shape(flat[p])) != e.flax_shape
    ]
    if missing or unexpected or wrong:
        raise _mismatch_error(
            f"variables do not match a jresnet {arch.describe()}", missing, unexpected, wrong
        )

    state_dict: dict[str, Any] = {}
    for entry in entries:
        if entry.kind == "counter":
            state_dict[entry.torch_key] = np.zeros((), np.int64)
            continue
        value = np.asarray(flat[(entry.collection, *entry.path)], dtype=np.float32)
        if entry.kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif entry.kind == "linear":
            value = value.T
        state_dict[entry.torch_key] = np.array(value, dtype=np.float32, order="C")
    if as_tensors:
        torch = _import_torch()
        state_dict = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    return state_dict


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            "reading or writing PyTorch checkpoints needs torch, an optional dependency: "
            "pip install torch (or pip install 'jresnet[bench]')"
        ) from e
    return torch


def _is_state_dict(obj: Any, torch: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads the state dict of a PyTorch checkpoint file, never unpickling arbitrary objects.

    Always ``torch.load(path, map_location="cpu", weights_only=True)``: a file
    holding anything but tensors, containers and plain values (a pickled
    ``nn.Module``, a custom class) is refused, not executed.

    Accepts a bare state dict, akamaster's ``{"state_dict": ..., "best_prec1": ...}``,
    the seed's ``{"net": ..., "acc": ..., "epoch": ...}`` and ``{"model_state_dict": ...}``.

    Raises:
      ConversionError: torch missing, a file that isn't a (safe) torch
        checkpoint, or no recognisable state dict (the message lists the keys found).
      FileNotFoundError: no such file.
    """
    torch = _import_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such PyTorch checkpoint file: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ConversionError(
                f"{path}: refusing to load it: it holds Python objects other than tensors, "
                "which torch.load(weights_only=True) does not unpickle (they could run "
                "arbitrary code). Re-save just the weights, e.g. "
                f"torch.save(model.state_dict(), ...). torch said: {reason}"
            ) from e
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {reason})"
        ) from e

    if _is_state_dict(obj, torch):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key], torch):
                return dict(obj[key])
        found = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
        raise ConversionError(
            f"{path}: no state dict found: expected a dict of tensors, or one under "
            f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; top-level keys: {found}"
        )
    raise ConversionError(
        f"{path}: no state dict found: the file holds a {type(obj).__name__}, not a dict"
    )


# --------------------------------------------------------------------------
# Command line.


def _num_params(tree: Mapping[str, Any]) -> int:
    return sum(int(np.size(v)) for v in _flatten(tree).values())


def _holds_checkpoints(out_dir: str) -> bool:
    from jresnet import checkpoint

    path = checkpoint.checkpoint_dir(out_dir)
    return os.path.isdir(path) and bool(os.listdir(path))


def convert_file(
    source: str,
    out_dir: str,
    shortcut: str | None = None,
    dataset: str | None = None,
    normalization: str | None = None,
) -> dict[str, Any]:
    """Converts a PyTorch checkpoint file into a jresnet checkpoint in ``out_dir``.

    Returns a summary (architecture, config, parameter count, checkpoint path).
    Nothing is left in ``out_dir`` if it fails.
    """
    from jresnet import checkpoint, input_pipeline
    from jresnet.configs import default

    if _holds_checkpoints(out_dir):
        raise ConversionError(
            f"{checkpoint.checkpoint_dir(out_dir)} already holds checkpoints; "
            "choose an empty output directory"
        )
    state_dict = load_torch_checkpoint(source)
    _, prefixed = strip_data_parallel_prefix(state_dict)
    variables = torch_to_flax(state_dict, shortcut=shortcut)
    arch = infer_architecture(state_dict)

    if dataset is None:
        by_classes = {10: "cifar10", 100: "cifar100"}
        if arch.num_classes not in by_classes:
            raise ConversionError(
                f"the classifier has {arch.num_classes} classes, neither CIFAR-10 nor "
                "CIFAR-100: pass --dataset"
            )
        dataset = by_classes[arch.num_classes]
    if input_pipeline.num_classes(dataset) != arch.num_classes:
        raise ConversionError(
            f"--dataset {dataset} has {input_pipeline.num_classes(dataset)} classes but the "
            f"checkpoint's classifier has {arch.num_classes}"
        )
    akamaster = prefixed or arch.shortcut == "A"
    if normalization is None:
        normalization = "imagenet" if akamaster else "cifar"

    config = default.get_config()
    config.model = arch.model_name
    config.shortcut = arch.shortcut
    config.dataset = dataset
    config.normalization = normalization
    config.init_from = os.path.abspath(source)

    created = [p for p in (out_dir, checkpoint.checkpoint_dir(out_dir)) if not os.path.exists(p)]
    try:
        path = checkpoint.save_pretrained(out_dir, variables, config)
    except BaseException:
        for p in created:  # out_dir last: it contains the checkpoint directory
            shutil.rmtree(p, ignore_errors=True)
        raise
    return {
        "architecture": arch,
        "layout": "akamaster (module. prefix)" if prefixed else "unprefixed",
        "config": config,
        "num_params": _num_params(variables["params"]),
        "num_batch_stats": _num_params(variables["batch_stats"]),
        "path": path,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.convert",
        description="Convert a PyTorch CIFAR ResNet checkpoint (the seed's option-B layout or "
        "akamaster's option-A one) into a jresnet checkpoint.",
    )
    parser.add_argument("source", metavar="IN.pth", help="PyTorch checkpoint file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="jresnet work directory to write")
    parser.add_argument("--shortcut", choices=("A", "B"), help="default: inferred from the keys")
    parser.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100"),
        help="default: from the number of classes (10 or 100)",
    )
    parser.add_argument(
        "--normalization",
        choices=("cifar", "imagenet"),
        help="input normalisation the weights were trained with; default: imagenet for "
        "akamaster's layout (module. prefix or option A), cifar otherwise",
    )
    args = parser.parse_args(argv)
    try:
        summary = convert_file(
            args.source, args.out_dir, args.shortcut, args.dataset, args.normalization
        )
    except Exception as e:  # reported to the user, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    arch, config = summary["architecture"], summary["config"]
    print(
        f"Converted {args.source} ({summary['layout']}): {arch.describe()}, "
        f"{summary['num_params']:,} parameters, {summary['num_batch_stats']:,} BN statistics.\n"
        f"Wrote {summary['path']} (step 0) with config model={config.model} "
        f"shortcut={config.shortcut} dataset={config.dataset} "
        f"normalization={config.normalization}.\n"
        f"Evaluate it (with its saved model and normalisation): python train.py --workdir "
        f"{args.out_dir} --config.eval_only=True [--config.data_dir=DIR]\n"
        f"or in Python: model, variables = jresnet.checkpoint.load_model({args.out_dir!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
