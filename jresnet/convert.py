"""PyTorch and safetensors weight files <-> jresnet work directories, and the command line.

The name and shape mapping lives in `jresnet.torch_layouts` (pure numpy); this
module reads and writes files and Orbax checkpoints. Its public names are the
import path the rest of jresnet uses: `torch_to_flax`, `flax_to_torch`,
`infer_architecture`, `load_torch_checkpoint`, `ConversionError`.

Files read (the format is recognised from the content, not the extension):

* PyTorch checkpoints (``torch.save``: zip archives, or the legacy pickles of
  PyTorch < 1.6 such as akamaster's), always with ``torch.load(weights_only=True)``;
  a bare state dict or one wrapped as ``{"state_dict"|"net"|"model_state_dict"|"model": ...}``;
* ``.safetensors`` files of the same state dicts (package ``safetensors``).

Command line::

    python -m jresnet.convert IN.pth|IN.safetensors OUT_DIR [--shortcut A|B]
        [--dataset cifar10|cifar100] [--normalization cifar|imagenet|cifar100]
    python -m jresnet.convert NAME OUT_DIR          # published weights, see jresnet.pretrained
    python -m jresnet.convert WORKDIR OUT.pth|OUT.safetensors [--layout seed|chenyaofo]

The first two write a jresnet work directory (a step-0 checkpoint that
`jresnet.checkpoint.load_model`, ``--config.eval_only`` and ``--config.init_from``
read); the third writes a state dict that the seed's PyTorch model loads with
``strict=True``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jresnet import errors, safe_files
from jresnet.torch_layouts import (
    CHENYAOFO,
    DATA_PARALLEL_PREFIX,
    KEY_NAMES,
    SEED,
    Architecture,
    ConversionError,
    KeyNames,
    describe_layout,
    detect_key_names,
    flax_to_torch,
    import_torch,
    infer_architecture,
    infer_flax_architecture,
    num_values,
    strip_data_parallel_prefix,
    torch_to_flax,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHENYAOFO",
    "DATA_PARALLEL_PREFIX",
    "KEY_NAMES",
    "SEED",
    "WRAPPER_KEYS",
    "Architecture",
    "ConversionError",
    "KeyNames",
    "WeightsFileNotFoundError",
    "convert_file",
    "describe_layout",
    "detect_key_names",
    "export_workdir",
    "flax_to_torch",
    "infer_architecture",
    "infer_flax_architecture",
    "load_state_dict_file",
    "load_torch_checkpoint",
    "main",
    "save_state_dict_file",
    "strip_data_parallel_prefix",
    "torch_to_flax",
]

# Keys of the dicts that training scripts wrap their state dict in:
# akamaster's ``{"state_dict", "best_prec1"}``, the seed's ``{"net", "acc", "epoch"}``,
# the PyTorch tutorials' ``{"model_state_dict", ...}`` and chenyaofo's training
# checkpoints' ``{"model", ...}``.
WRAPPER_KEYS = ("state_dict", "net", "model_state_dict", "model")
TORCH_EXTENSIONS = (".pth", ".pt", ".th")
SAFETENSORS_EXTENSION = ".safetensors"

_ZIP_MAGIC = b"PK\x03\x04"


class WeightsFileNotFoundError(ConversionError, FileNotFoundError):
    """A weights file that does not exist."""


def _file_format(path: str) -> str:
    """``"zip"``, ``"pickle"``, ``"safetensors"`` or ``"unknown"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if head.startswith(_ZIP_MAGIC):
        return "zip"  # torch.save since PyTorch 1.6
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # legacy torch.save: pickle protocol 2..5
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len <= size:
            return "safetensors"  # u64 little-endian header size, then a JSON header
    return "unknown"


def _check_is_file(path: str) -> None:
    if os.path.isdir(path):
        raise ConversionError(
            f"{path} is a directory, not a weights file (a jresnet work directory is "
            "converted the other way: python -m jresnet.convert WORKDIR OUT.pth)"
        )
    if not os.path.isfile(path):
        raise WeightsFileNotFoundError(f"no such weights file: {path!r}")


def _torch_reason(error: Exception) -> str:
    """The informative line of a torch.load error (its weights_only errors are long)."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0] if text else type(error).__name__


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

    Accepts a bare state dict, or one under a key of `WRAPPER_KEYS`: akamaster's
    ``{"state_dict": ..., "best_prec1": ...}``, the seed's ``{"net": ..., "acc": ...}``.

    Raises:
      ConversionError: torch missing; a directory; a file that is not a PyTorch
        checkpoint at all, is corrupt, or holds Python objects other than tensors;
        no recognisable state dict (the message lists the keys found).
      WeightsFileNotFoundError: (a `ConversionError` and a `FileNotFoundError`) no such file.
    """
    torch = import_torch()
    path = os.fspath(path)
    _check_is_file(path)
    kind = _file_format(path)
    if kind == "safetensors":
        raise ConversionError(f"{path} is a safetensors file: read it with load_state_dict_file")
    if kind == "unknown":
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint: it is neither a zip archive (torch.save's "
            "format) nor a legacy torch.save pickle"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        message = str(e)
        if "not an allowed global" in message or "Unsupported global" in message:
            raise ConversionError(
                f"{path}: refusing to load it: it holds Python objects other than tensors, "
                "which torch.load(weights_only=True) does not unpickle (they could run "
                "arbitrary code). Re-save just the weights, e.g. "
                f"torch.save(model.state_dict(), ...). torch said: {_torch_reason(e)}"
            ) from e
        raise ConversionError(
            f"{path} can't be read as a PyTorch checkpoint (corrupt or truncated?): "
            f"{type(e).__name__}: {_torch_reason(e)}"
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


def _import_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ConversionError(
            "reading or writing .safetensors files needs the safetensors package: "
            "pip install safetensors (from a clone: pip install -e '.[export]')"
        ) from e
    return safetensors.numpy


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    st = _import_safetensors()
    try:
        return dict(st.load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise ConversionError(f"{path} can't be read as a safetensors file: {e}") from e


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict of a PyTorch checkpoint or a ``.safetensors`` file (by content).

    Values are ``torch.Tensor`` for PyTorch files and numpy arrays for safetensors;
    `torch_to_flax` takes either.
    """
    path = os.fspath(path)
    _check_is_file(path)
    if _file_format(path) == "safetensors":
        return _load_safetensors(path)
    return load_torch_checkpoint(path)


def save_state_dict_file(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes a state dict of numpy arrays as ``.safetensors`` or a PyTorch file (by extension).

    The file appears complete or not at all (written to a temporary file, then renamed).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (*TORCH_EXTENSIONS, SAFETENSORS_EXTENSION):
        raise ConversionError(
            f"{path}: unknown weights format {ext!r}; use one of "
            f"{', '.join((*TORCH_EXTENSIONS, SAFETENSORS_EXTENSION))}"
        )
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    # Through safe_files: both formats get mode 0o644 less the umask (safetensors' own
    # save_file gives 0o600), and a symlink planted at ``path`` is refused.
    with safe_files.atomic_writer(path) as f:
        if ext == SAFETENSORS_EXTENSION:
            # "format": "pt" tells Hugging Face tools these are PyTorch-layout tensors.
            f.write(_import_safetensors().save(arrays, metadata={"format": "pt"}))
        else:
            torch = import_torch()
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, f)


# --------------------------------------------------------------------------
# Work directories.


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
    """Converts a PyTorch or safetensors weights file into a jresnet checkpoint in ``out_dir``.

    Returns a summary (architecture, config, parameter count, checkpoint path).
    Nothing is left in ``out_dir`` if it fails.
    """
    from jresnet import checkpoint, datasets
    from jresnet.configs import default

    if _holds_checkpoints(out_dir):
        raise ConversionError(
            f"{checkpoint.checkpoint_dir(out_dir)} already holds checkpoints; "
            "choose an empty output directory"
        )
    state_dict = load_state_dict_file(source)
    layout = describe_layout(state_dict)
    variables = torch_to_flax(state_dict, shortcut=shortcut)
    arch = infer_architecture(state_dict)

    if dataset is None:
        by_classes = {d.num_classes: d.name for d in datasets.DATASETS.values()}
        if arch.num_classes not in by_classes:
            raise ConversionError(
                f"the classifier has {arch.num_classes} classes, neither CIFAR-10 nor "
                "CIFAR-100: pass --dataset"
            )
        dataset = by_classes[arch.num_classes]
    if datasets.get(dataset).num_classes != arch.num_classes:
        raise ConversionError(
            f"--dataset {dataset} has {datasets.get(dataset).num_classes} classes but the "
            f"checkpoint's classifier has {arch.num_classes}"
        )
    if normalization is None:
        normalization = "imagenet" if layout == "akamaster" or arch.shortcut == "A" else "cifar"

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
        "layout": layout,
        "config": config,
        "num_params": num_values(variables["params"]),
        "num_batch_stats": num_values(variables["batch_stats"]),
        "path": path,
    }


def convert_pretrained(name: str, out_dir: str, cache: str | None = None) -> dict[str, Any]:
    """Downloads (or finds in the cache) published weights and converts them into ``out_dir``."""
    from jresnet import pretrained

    weights = pretrained.get(name)
    path = pretrained.fetch(weights, cache)
    return convert_file(
        path, out_dir, weights.shortcut, weights.dataset, normalization=weights.normalization
    )


def export_workdir(workdir: str, out_path: str, layout: str = "seed") -> dict[str, Any]:
    """Writes the latest checkpoint of a jresnet work directory as a PyTorch state dict file.

    ``out_path`` ending in ``.pth``/``.pt``/``.th`` gives a ``torch.save`` file, in
    ``.safetensors`` a safetensors file; ``layout`` "seed" (which the seed's
    ``ResNet20`` and akamaster's option-A models load with ``strict=True``) or
    "chenyaofo". An existing ``out_path`` is never overwritten.
    """
    from jresnet import checkpoint

    if os.path.exists(out_path):
        raise ConversionError(f"{out_path} already exists; choose another output path")
    variables, config = checkpoint.load_variables(workdir)
    state_dict = flax_to_torch(variables, layout=layout)
    save_state_dict_file(state_dict, out_path)
    return {
        "architecture": infer_flax_architecture(variables),
        "config": config,
        "num_tensors": len(state_dict),
        "path": out_path,
    }


# --------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.convert",
        description="Convert CIFAR ResNet weights between PyTorch/safetensors files and jresnet "
        "work directories. SOURCE is a .pth/.th/.pt or .safetensors file (-> OUT is a work "
        "directory), a published weights name from `python -m jresnet.pretrained` (-> OUT is "
        "a work directory), or a jresnet work directory (-> OUT is a .pth or .safetensors file).",
    )
    parser.add_argument("source", metavar="SOURCE", help="weights file, pretrained name or workdir")
    parser.add_argument("out", metavar="OUT", help="work directory, or .pth/.safetensors file")
    parser.add_argument("--shortcut", choices=("A", "B"), help="default: inferred from the keys")
    parser.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100"),
        help="default: from the number of classes (10 or 100)",
    )
    parser.add_argument(
        "--normalization",
        choices=("cifar", "imagenet", "cifar100"),
        help="input normalisation the weights were trained with; default: imagenet for "
        "akamaster's layout (module. prefix or option A), cifar otherwise",
    )
    parser.add_argument(
        "--layout",
        choices=sorted(KEY_NAMES),
        default="seed",
        help="key names of the state dict written from a work directory (default: seed)",
    )
    parser.add_argument("--cache_dir", help="where published weights are cached")
    return parser


def _to_workdir(args: argparse.Namespace) -> int:
    if os.path.exists(args.source):
        summary = convert_file(
            args.source, args.out, args.shortcut, args.dataset, args.normalization
        )
    else:
        from jresnet import pretrained

        if args.source not in pretrained.REGISTRY:
            raise WeightsFileNotFoundError(
                f"{args.source!r} is neither a file, a work directory nor a published weights "
                f"name ({', '.join(pretrained.REGISTRY)})"
            )
        if args.shortcut or args.dataset or args.normalization:
            raise ConversionError(
                "--shortcut, --dataset and --normalization are fixed for published weights"
            )
        summary = convert_pretrained(args.source, args.out, args.cache_dir)
    arch, config = summary["architecture"], summary["config"]
    print(
        f"Converted {args.source} ({summary['layout']} layout): {arch.describe()}, "
        f"{summary['num_params']:,} parameters, {summary['num_batch_stats']:,} BN statistics.\n"
        f"Wrote {summary['path']} (step 0) with config model={config.model} "
        f"shortcut={config.shortcut} dataset={config.dataset} "
        f"normalization={config.normalization}.\n"
        f"Evaluate it (with its saved model and normalisation): python train.py --workdir "
        f"{args.out} --config.eval_only=True [--config.data_dir=DIR]\n"
        f"or in Python: model, variables = jresnet.checkpoint.load_model({args.out!r})"
    )
    return 0


def _to_file(args: argparse.Namespace) -> int:
    if args.shortcut or args.dataset or args.normalization:
        raise ConversionError(
            "--shortcut, --dataset and --normalization apply to files converted into a work "
            "directory; a work directory's own config says them"
        )
    summary = export_workdir(args.source, args.out, args.layout)
    config = summary["config"]
    print(
        f"Wrote {summary['path']}: {summary['architecture'].describe()}, "
        f"{summary['num_tensors']} tensors in the {args.layout} layout. Its inputs are NCHW "
        f"images normalised with {config.normalization!r} (jresnet.datasets.NORMALIZATIONS)."
    )
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if os.path.isdir(args.source):
        if not args.out.lower().endswith((*TORCH_EXTENSIONS, SAFETENSORS_EXTENSION)):
            raise ConversionError(
                f"{args.source} is a directory, not a weights file. To write a jresnet work "
                "directory's weights as a file, give an OUT ending in .pth or .safetensors"
            )
        return _to_file(args)
    return _to_workdir(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit code (`jresnet.errors`)."""
    return errors.run_cli(lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
