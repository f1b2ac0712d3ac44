"""The names and shapes of PyTorch CIFAR ResNet state dicts, and their jresnet (Flax) twins.

Pure mapping: numpy arrays (or torch tensors, read duck-typed) in, numpy arrays
out; torch is imported only by ``flax_to_torch(..., as_tensors=True)`` and Orbax
never. Files are `jresnet.weight_files`'s job.

Three PyTorch layouts are read; which one a state dict uses is inferred from its
keys, and the whole dict must then match it exactly:

* ``"seed"`` (kuangliu/pytorch-cifar style, the seed's ``ckpt.pth``), option B:
  ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
  ``layerK.i.{conv1,bn1,conv2,bn2}.*``, the projection shortcut
  ``layerK.i.shortcut.0.weight`` (1x1 conv) and ``layerK.i.shortcut.1.*`` (BN)
  where the shape changes, and ``linear.{weight,bias}``;
* akamaster's (pytorch_resnet_cifar10), option A: the seed's names with the
  ``module.`` prefix of ``nn.DataParallel``, no shortcut parameters, and no
  ``num_batches_tracked`` (saved by an old PyTorch);
* ``"chenyaofo"`` (pytorch-cifar-models), option B: the seed's network with
  torchvision's names, ``layerK.i.downsample.0/1.*`` for the shortcut and
  ``fc.{weight,bias}`` for the classifier.

Conventions (PyTorch -> Flax):

* conv weight ``[out, in, kh, kw]`` (OIHW) -> ``kernel [kh, kw, in, out]`` (HWIO);
* linear weight ``[out, in]`` -> ``kernel [in, out]``; bias unchanged;
* BN ``weight``/``bias`` -> params ``scale``/``bias``; ``running_mean``/
  ``running_var`` -> batch_stats ``mean``/``var``; ``num_batches_tracked`` is
  dropped (jresnet's BatchNorm uses a fixed momentum, so it is never needed);
* module ``layerK.i`` -> ``layerK_{i}``; the shortcut's ``0``/``1`` ->
  ``shortcut_conv``/``shortcut_bn``; the classifier -> ``linear``.

Activations are NCHW in PyTorch and NHWC in jresnet: transpose inputs with
``x.transpose(0, 2, 3, 1)``; logits are the same.

Conversion is strict: missing keys, unexpected keys, shape mismatches and
non-finite values raise `WeightsError` naming all of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from flax import traverse_util

from jresnet import models
from jresnet.errors import WeightsError

DATA_PARALLEL_PREFIX = "module."

# Blocks per stage: ResNet-1202 has 200; a state dict claiming more than this is refused
# before anything of its size is built.
MAX_BLOCKS_PER_STAGE = 1000

_BLOCK_KEY = re.compile(r"^layer([123])\.(\d+)\.")
_FLAX_BLOCK = re.compile(r"^layer([123])_(\d+)$")


@dataclasses.dataclass(frozen=True)
class KeyNames:
    """The module names that differ between PyTorch layouts.

    Attributes:
      name: the layout's name ("seed" or "chenyaofo"; akamaster's is "seed" plus
        the ``module.`` prefix).
      shortcut: the projection shortcut's ``nn.Sequential`` inside a block.
      classifier: the final ``nn.Linear``.
    """

    name: str
    shortcut: str
    classifier: str


SEED = KeyNames("seed", shortcut="shortcut", classifier="linear")
CHENYAOFO = KeyNames("chenyaofo", shortcut="downsample", classifier="fc")
KEY_NAMES: Mapping[str, KeyNames] = {k.name: k for k in (SEED, CHENYAOFO)}


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


def _layout(
    blocks_per_stage: int, shortcut: str, num_classes: int, names: KeyNames = SEED
) -> list[_Entry]:
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
                conv(f"{t}.{names.shortcut}.0", (f, "shortcut_conv"), planes, in_planes, 1)
                bn(f"{t}.{names.shortcut}.1", (f, "shortcut_bn"), planes)
            in_planes = planes
    head = names.classifier
    entries.append(
        _Entry(f"{head}.weight", "linear", (num_classes, in_planes), "params", ("linear", "kernel"))
    )
    entries.append(_Entry(f"{head}.bias", "vector", (num_classes,), "params", ("linear", "bias")))
    return entries


def _some(items: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` of ``items`` (each cut to 120 characters), then how many more."""
    named = ", ".join(item[:120] for item in items[:shown])
    return named + (f", ... and {len(items) - shown:,} more" if len(items) > shown else "")


def _mismatch_error(
    what: str, missing: Sequence[str], unexpected: Sequence[str], wrong: Sequence[str]
) -> WeightsError:
    """One line naming the first few keys of each kind (a hostile file may have millions)."""
    parts = [
        f"{label} ({len(items):,}): {_some(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape/dtype mismatches", wrong),
        )
        if items
    ]
    return WeightsError(f"{what}: " + "; ".join(parts))


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Removes the ``module.`` prefix of ``nn.DataParallel`` when every key has it.

    Returns ``(state_dict, had_prefix)``.
    """
    keys = list(state_dict)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        n = len(DATA_PARALLEL_PREFIX)
        return {k[n:]: v for k, v in state_dict.items()}, True
    return dict(state_dict), False


def detect_key_names(state_dict: Mapping[str, Any]) -> KeyNames:
    """`CHENYAOFO` if an unprefixed state dict uses its names (``fc``, ``downsample``), else `SEED`.

    Only chooses which names to expect; `torch_to_flax` then requires all of them,
    so a dict mixing both layouts is an error that names the odd keys.
    """
    if any(k.startswith(f"{CHENYAOFO.classifier}.") for k in state_dict):
        return CHENYAOFO
    if any(k.startswith(f"{SEED.classifier}.") for k in state_dict):
        return SEED
    marker = f".{CHENYAOFO.shortcut}."
    return CHENYAOFO if any(marker in k for k in state_dict) else SEED


def _infer(
    state_dict: Mapping[str, Any], shortcut: str | None, names: KeyNames
) -> tuple[int, str, int | None]:
    """``(blocks_per_stage, shortcut, num_classes or None)`` of an unprefixed state dict."""
    found: dict[str, set[int]] = {}
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not found:
        raise WeightsError(
            "not a CIFAR ResNet state dict: no 'layer{1,2,3}.<i>.' block keys "
            f"(first keys: {_some(list(state_dict), 8)})"
        )
    for stage, indices in sorted(found.items()):
        if max(indices) + 1 != len(indices) or len(indices) > MAX_BLOCKS_PER_STAGE:
            odd = sorted(indices)[-3:] if len(indices) > 3 else sorted(indices)
            raise WeightsError(
                f"not a CIFAR ResNet state dict: the blocks of layer{stage} are not numbered "
                f"0, 1, ..., n-1 with n <= {MAX_BLOCKS_PER_STAGE} ({len(indices):,} blocks, "
                f"the last {', '.join(map(str, odd))})"
            )
    blocks = max(len(indices) for indices in found.values())
    shortcut_key = re.compile(rf"^layer[123]\.\d+\.{names.shortcut}\.")
    shortcut_keys = [k for k in state_dict if shortcut_key.match(k)]
    inferred = "B" if shortcut_keys else "A"
    if shortcut is not None:
        shortcut = shortcut.upper()
        if shortcut not in ("A", "B"):
            raise WeightsError(f"shortcut must be 'A', 'B' or None, got {shortcut!r}")
        if shortcut != inferred:
            if shortcut == "A":
                detail = "the state dict has option-B projection shortcut parameters: " + _some(
                    shortcut_keys
                )
            else:
                detail = (
                    f"the state dict has no shortcut parameters (layerK.i.{names.shortcut}.0/1.*), "
                    "so it is an option-A (zero-padding) model"
                )
            raise WeightsError(f"shortcut={shortcut!r} was requested but {detail}")
    num_classes = None
    for key in (f"{names.classifier}.weight", f"{names.classifier}.bias"):
        shape = getattr(state_dict.get(key), "shape", None)
        if shape:
            num_classes = int(shape[0])
            break
    return blocks, inferred, num_classes


def infer_architecture(state_dict: Mapping[str, Any]) -> Architecture:
    """Depth, shortcut option and number of classes of a PyTorch state dict (any layout).

    Only the keys and the classifier's shape are read; `torch_to_flax` checks the rest.
    """
    unprefixed, _ = strip_data_parallel_prefix(state_dict)
    names = detect_key_names(unprefixed)
    blocks, shortcut, num_classes = _infer(unprefixed, None, names)
    if num_classes is None:
        raise WeightsError(
            f"can't infer num_classes: no '{names.classifier}.weight' or "
            f"'{names.classifier}.bias' key"
        )
    return Architecture(6 * blocks + 2, shortcut, num_classes)


def describe_layout(state_dict: Mapping[str, Any]) -> str:
    """``"akamaster"`` (``module.`` prefix), ``"seed"`` or ``"chenyaofo"``: for messages."""
    unprefixed, prefixed = strip_data_parallel_prefix(state_dict)
    names = detect_key_names(unprefixed)
    if prefixed:
        return "akamaster" if names is SEED else f"{names.name} with the module. prefix"
    return names.name


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


def _non_finite(named_arrays: Mapping[str, np.ndarray]) -> list[str]:
    """``"name (k NaN, m inf of n)"`` for every array holding a NaN or an infinity."""
    bad = []
    for name, value in named_arrays.items():
        finite = np.isfinite(value)
        if not finite.all():
            nan = int(np.isnan(value).sum())
            bad.append(f"{name} ({nan} NaN, {int((~finite).sum()) - nan} inf of {value.size})")
    return bad


def _non_finite_error(bad: Sequence[str], what: str) -> WeightsError:
    return WeightsError(
        f"refusing to convert {what} with non-finite values: {len(bad)} tensor(s) hold NaN "
        f"or infinity: {_some(bad, 10)}. They come from a diverged run; use an earlier "
        "checkpoint."
    )


def torch_to_flax(
    state_dict: Mapping[str, Any], shortcut: str | None = None
) -> dict[str, dict[str, Any]]:
    """Converts a PyTorch CIFAR ResNet state dict to jresnet variables.

    Args:
      state_dict: ``{key: torch.Tensor | np.ndarray}`` in the seed's layout,
        akamaster's (``module.`` prefix, no ``num_batches_tracked``) or
        chenyaofo's (``downsample``, ``fc``); see the module docstring.
        ``num_batches_tracked`` entries are dropped.
      shortcut: "A" or "B"; None infers it from the presence of shortcut
        parameters. A value that contradicts the keys is an error.

    Returns:
      ``{"params": ..., "batch_stats": ...}``: nested dicts of float32 numpy
      arrays with exactly the structure and shapes of
      ``models.create_model(f"resnet{depth}", num_classes=..., shortcut=...).init(...)``.
      Use `infer_architecture` for the depth and number of classes.

    Raises:
      WeightsError: (a `ValueError`) naming every missing key, unexpected key
        and shape mismatch, a contradictory ``shortcut``, or every tensor with
        NaN or infinite values.
    """
    sd, _ = strip_data_parallel_prefix(state_dict)
    names = detect_key_names(sd)
    blocks, shortcut, num_classes = _infer(sd, shortcut, names)
    entries = _layout(blocks, shortcut, num_classes or 0, names)
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
            f"state dict ({names.name} layout) does not match a CIFAR {arch.describe()}"
            if num_classes
            else f"state dict does not match a CIFAR ResNet-{arch.depth} (option {shortcut})"
        )
        raise _mismatch_error(what, missing, unexpected, wrong)

    arrays = {e.torch_key: _to_numpy(sd[e.torch_key]) for e in entries if e.kind != "counter"}
    bad = _non_finite(arrays)
    if bad:
        raise _non_finite_error(bad, "a state dict")
    flat = {}
    for entry in entries:
        if entry.kind == "counter":
            continue
        value = arrays[entry.torch_key]
        if entry.kind == "conv":
            value = value.transpose(2, 3, 1, 0)
        elif entry.kind == "linear":
            value = value.T
        flat[(entry.collection, *entry.path)] = np.ascontiguousarray(value)
    return traverse_util.unflatten_dict(flat)


def infer_flax_architecture(variables: Mapping[str, Any]) -> Architecture:
    """Depth, shortcut option and number of classes of jresnet variables."""
    params = variables.get("params")
    if not isinstance(params, Mapping):
        raise WeightsError(
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
        raise WeightsError(
            f"not jresnet ResNet variables: no 'layer{{1,2,3}}_<i>' params (got {sorted(params)})"
        )
    linear = params.get("linear")
    shape = getattr(linear.get("kernel"), "shape", None) if isinstance(linear, Mapping) else None
    num_classes = int(shape[-1]) if shape else 0  # 0: reported as missing/mismatched below
    return Architecture(6 * blocks + 2, shortcut, num_classes)


def flax_to_torch(
    variables: Mapping[str, Any], as_tensors: bool = False, layout: str = "seed"
) -> dict[str, Any]:
    """Converts jresnet variables to a PyTorch state dict.

    Args:
      variables: ``{"params", "batch_stats"}`` of a `models.ResNet` (any depth,
        option A or B, any number of classes; all inferred).
      as_tensors: return ``torch.Tensor`` values (needs torch) instead of numpy arrays.
      layout: "seed" (default: the seed's names, which akamaster's option-A model
        also loads) or "chenyaofo" (``downsample``, ``fc``).

    Returns:
      ``{key: array}`` in PyTorch's registration order. Float32 arrays, conv
      weights OIHW, linear weight ``[out, in]``. Every BatchNorm also gets
      ``num_batches_tracked`` as an int64 zero scalar, as a current PyTorch
      ``BatchNorm2d`` has, so that ``model.load_state_dict(..., strict=True)``
      works. It is unused with PyTorch's default fixed momentum.

    Raises:
      WeightsError: naming every missing or unexpected variable, shape
        mismatch, or tensor with NaN or infinite values.
    """
    if layout not in KEY_NAMES:
        raise WeightsError(f"unknown layout {layout!r}; known: {sorted(KEY_NAMES)}")
    arch = infer_flax_architecture(variables)
    entries = _layout(arch.blocks_per_stage, arch.shortcut, arch.num_classes, KEY_NAMES[layout])
    flat = traverse_util.flatten_dict(dict(variables))
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
    arrays = {p: np.asarray(v, dtype=np.float32) for p, v in flat.items()}
    bad = _non_finite({"/".join(p): v for p, v in arrays.items()})
    if bad:
        raise _non_finite_error(bad, "variables")

    state_dict: dict[str, Any] = {}
    for entry in entries:
        if entry.kind == "counter":
            state_dict[entry.torch_key] = np.zeros((), np.int64)
            continue
        value = arrays[(entry.collection, *entry.path)]
        if entry.kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif entry.kind == "linear":
            value = value.T
        state_dict[entry.torch_key] = np.array(value, dtype=np.float32, order="C")
    if as_tensors:
        torch = import_torch()
        state_dict = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    return state_dict


def import_torch() -> Any:
    """``torch``, an optional dependency, or a `WeightsError` saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise WeightsError(
            "reading or writing PyTorch checkpoints needs torch, an optional dependency: "
            "pip install torch (from a clone: pip install -e '.[bench]')"
        ) from e
    return torch


def num_values(tree: Mapping[str, Any]) -> int:
    """Total number of scalars in a nested dict of arrays."""
    return sum(int(np.size(v)) for v in traverse_util.flatten_dict(dict(tree)).values())
