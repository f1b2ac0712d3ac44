"""PyTorch and safetensors weight files: read safely, written atomically.

Files read (the format is recognised from the content, not the extension):

* PyTorch checkpoints (``torch.save``: zip archives, or the legacy pickles of
  PyTorch < 1.6 such as akamaster's), always with ``torch.load(weights_only=True)``;
  a bare state dict or one wrapped as ``{"state_dict"|"net"|"model_state_dict"|"model": ...}``;
* ``.safetensors`` files of the same state dicts (package ``safetensors``).

Reading is bounded before anything is decompressed or unpickled: a zip archive's
central directory declares every record's size, and an archive whose records, pickle or
total size exceed what any CIFAR ResNet state dict needs (`MAX_RECORD_BYTES`,
`MAX_PICKLE_BYTES`, `MAX_TOTAL_BYTES`, `MAX_RECORDS`) is refused from those declarations
alone, so a small file claiming gigabytes costs neither the memory nor the time.

Every problem a file can have raises `jresnet.errors.WeightsError` with a one-line
message naming the file. The name and shape mapping of the state dicts is
`jresnet.torch_layouts`'s job; work directories are `jresnet.checkpoint`'s.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from jresnet import safe_files
from jresnet.errors import OutputError, WeightsError
from jresnet.torch_layouts import import_torch

if TYPE_CHECKING:
    import torch

# Keys of the dicts that training scripts wrap their state dict in:
# akamaster's ``{"state_dict", "best_prec1"}``, the seed's ``{"net", "acc", "epoch"}``,
# the PyTorch tutorials' ``{"model_state_dict", ...}`` and chenyaofo's training
# checkpoints' ``{"model", ...}``.
WRAPPER_KEYS = ("state_dict", "net", "model_state_dict", "model")
TORCH_EXTENSIONS = (".pth", ".pt", ".th")
SAFETENSORS_EXTENSION = ".safetensors"
EXTENSIONS = (*TORCH_EXTENSIONS, SAFETENSORS_EXTENSION)

# Bounds on what a zip-format torch file may declare. The largest CIFAR ResNet
# (ResNet-1202) holds about 19.4 million values: 78 MB in float32, twice that in
# float64; its largest tensor is far smaller, and its state dict has under 10,000
# entries (one record each, plus the pickle and a few small ones). The bounds leave
# ample room (other class counts, optimizer state beside the weights) and stay far
# below what would exhaust a machine.
MAX_RECORD_BYTES = 512 << 20
MAX_TOTAL_BYTES = 1 << 30
MAX_PICKLE_BYTES = 64 << 20
MAX_RECORDS = 50_000

_ZIP_MAGIC = b"PK\x03\x04"
# What torch 2.x says when weights_only=True refuses a global: "Unsupported global:
# GLOBAL x was not an allowed global", "unsupported GLOBAL posix.system whose module
# posix is blocked".
_REFUSED_GLOBAL = re.compile(r"unsupported global|not an allowed global|is blocked", re.I)


def file_format(path: str) -> str:
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


def check_is_file(path: str) -> None:
    """`WeightsError` unless ``path`` is an existing regular file (a directory is named)."""
    if os.path.isdir(path):
        raise WeightsError(
            f"{path} is a directory, not a weights file (a jresnet work directory is "
            "converted the other way: python -m jresnet.convert WORKDIR OUT.pth)"
        )
    if not os.path.isfile(path):
        raise WeightsError(f"no such weights file: {path!r}")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def check_zip_bounds(path: str) -> None:
    """Refuses a zip-format torch file whose declared sizes exceed what a ResNet needs.

    Reads only the central directory (no record is decompressed): the number of
    records, each record's uncompressed size, the pickle's, and their total.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsError(
            f"{path} can't be read as a PyTorch checkpoint (corrupt or truncated?): {e}"
        ) from e
    limit = "more than any CIFAR ResNet needs: refusing to read it (a damaged or hostile file?)"
    if len(records) > MAX_RECORDS:
        raise WeightsError(f"{path} holds {len(records):,} records, {limit}")
    total = 0
    for record in records:
        bound = MAX_PICKLE_BYTES if record.filename.endswith(".pkl") else MAX_RECORD_BYTES
        if record.file_size > bound:
            raise WeightsError(
                f"{path}: its record {record.filename!r} declares {_mib(record.file_size)}, "
                + limit
            )
        total += record.file_size
    if total > MAX_TOTAL_BYTES:
        raise WeightsError(f"{path} declares {_mib(total)} in all, {limit}")


def _torch_reason(error: Exception) -> str:
    """The informative line of a torch.load error, without torch's advice to retry with
    ``weights_only=False`` (which would run the file's code)."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return line.split(" Please use", 1)[0]
    lines = [line for line in lines if "weights_only" not in line]
    return lines[0] if lines else type(error).__name__


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
    ``nn.Module``, a custom class) is refused, not executed. A zip archive is first
    checked against the size bounds (`check_zip_bounds`).

    Accepts a bare state dict, or one under a key of `WRAPPER_KEYS`: akamaster's
    ``{"state_dict": ..., "best_prec1": ...}``, the seed's ``{"net": ..., "acc": ...}``.

    Raises:
      WeightsError: torch missing; no such file; a directory; a file that is not a
        PyTorch checkpoint at all, is corrupt, too large, or holds Python objects other
        than tensors; no recognisable state dict (the message lists the keys found).
    """
    torch = import_torch()
    path = os.fspath(path)
    check_is_file(path)
    kind = file_format(path)
    if kind == "safetensors":
        raise WeightsError(f"{path} is a safetensors file: read it with load_state_dict_file")
    if kind == "unknown":
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint: it is neither a zip archive (torch.save's "
            "format) nor a legacy torch.save pickle"
        )
    if kind == "zip":
        check_zip_bounds(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        reason = _torch_reason(e)
        if _REFUSED_GLOBAL.search(str(e)):
            raise WeightsError(
                f"{path}: refused: it holds Python objects other than tensors, which "
                "torch.load(weights_only=True) does not unpickle (they could run arbitrary "
                "code); refusing to load it. Re-save just the weights, e.g. "
                f"torch.save(model.state_dict(), ...). torch said: {reason}"
            ) from e
        raise WeightsError(
            f"{path} can't be read as a PyTorch checkpoint (corrupt or truncated?): "
            f"{type(e).__name__}: {reason}"
        ) from e

    if _is_state_dict(obj, torch):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key], torch):
                return dict(obj[key])
        found = ", ".join(repr(k)[:40] for k in list(obj)[:20]) or "none"
        raise WeightsError(
            f"{path}: no state dict found: expected a dict of tensors, or one under "
            f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; top-level keys: {found}"
        )
    raise WeightsError(
        f"{path}: no state dict found: the file holds a {type(obj).__name__}, not a dict"
    )


def _import_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as e:
        raise WeightsError(
            "reading or writing .safetensors files needs the safetensors package: "
            "pip install safetensors (from a clone: pip install -e '.[export]')"
        ) from e
    return safetensors.numpy


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    st = _import_safetensors()
    if os.path.getsize(path) > MAX_TOTAL_BYTES:
        raise WeightsError(
            f"{path} is {_mib(os.path.getsize(path))}, more than any CIFAR ResNet needs"
        )
    try:
        return dict(st.load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise WeightsError(f"{path} can't be read as a safetensors file: {e}") from e


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict of a PyTorch checkpoint or a ``.safetensors`` file (by content).

    Values are ``torch.Tensor`` for PyTorch files and numpy arrays for safetensors;
    `jresnet.torch_layouts.torch_to_flax` takes either.
    """
    path = os.fspath(path)
    check_is_file(path)
    if file_format(path) == "safetensors":
        return _load_safetensors(path)
    return load_torch_checkpoint(path)


def check_output_path(path: str) -> str:
    """The extension of a new weights file ``path``; `OutputError` if it can't be written.

    Refused: an unknown extension, an existing file (never overwritten), a missing or
    read-only directory.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise OutputError(
            f"{path}: unknown weights format {ext!r}; use one of {', '.join(EXTENSIONS)}"
        )
    if os.path.lexists(path):
        raise OutputError(f"{path} already exists; choose another output path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"can't write {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"can't write {path}: the directory {directory} is not writable")
    return ext


def save_state_dict_file(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes a state dict of numpy arrays as ``.safetensors`` or a PyTorch file (by extension).

    Through `jresnet.safe_files`: the file appears complete or not at all, with mode
    ``0o644`` less the umask whichever library wrote the bytes, never through a planted
    symlink; an existing file is never replaced (`check_output_path`).
    """
    path = os.fspath(path)
    ext = check_output_path(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    if ext == SAFETENSORS_EXTENSION:
        # "format": "pt" tells Hugging Face tools these are PyTorch-layout tensors.
        data = _import_safetensors().save(arrays, metadata={"format": "pt"})
        safe_files.write_bytes(path, data)
        return
    torch = import_torch()
    with safe_files.atomic_writer(path) as f:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, f)
