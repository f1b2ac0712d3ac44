"""Published PyTorch CIFAR ResNet weights, downloaded, verified and loaded in one line.

    model, variables = jresnet.pretrained.load("cifar10_resnet20")
    probabilities = jresnet.predict.predict(model, variables, uint8_images)  # NHWC

Two sources (`list` prints them all):

* akamaster/pytorch_resnet_cifar10: ``resnet20`` ... ``resnet1202``, CIFAR-10,
  option A, ImageNet normalisation;
* chenyaofo/pytorch-cifar-models: ``cifar10_resnet{20,32,44,56}`` and
  ``cifar100_resnet{20,32,44,56}``, option B (the seed's network), the CIFAR
  normalisation of each dataset.

Files go to a cache directory, by default ``~/.cache/jresnet/weights``
(``$JRESNET_CACHE_DIR``, or ``cache_dir=``), under their published file names.
Every file is verified before use, cached or just downloaded. Its full sha256 is
recorded in `REGISTRY` for the files we have verified ourselves (akamaster's
``resnet20`` and ``resnet56``, hashed from copies downloaded from their published URLs)
and must match exactly; for the others (fetched nowhere here: this project's machines
have no network) only the hex digits in the file name are checked, as the prefix of
its sha256 (the torch.hub convention, 8 hex digits = 32 bits). A full sha256 is added
to the registry once a file has been downloaded and checked against its source. A file
that fails is deleted and reported, never used. Without internet, download the file by
hand and put it at the path the error message gives.

Loading never unpickles arbitrary objects: `jresnet.weight_files.load_torch_checkpoint`
uses ``torch.load(weights_only=True)`` (torch is needed for these ``.th``/``.pt``
files: the ``test`` or ``bench`` extra). This module reads files with
`jresnet.weight_files` and maps them with `jresnet.torch_layouts`; `jresnet.weights`
is the one entry point that resolves any weights source (names included).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jresnet import datasets, errors, models, safe_files, torch_layouts, weight_files
from jresnet.errors import WeightsError

CACHE_ENV = "JRESNET_CACHE_DIR"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "jresnet", "weights")

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10"
_CHENYAOFO = "https://github.com/chenyaofo/pytorch-cifar-models"


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weights file.

    Attributes:
      name: what `load` takes, e.g. ``"cifar10_resnet20"``.
      depth: ResNet depth (6n + 2).
      shortcut: "A" (zero padding) or "B" (1x1 conv + BN projection).
      dataset: a `jresnet.datasets` name.
      normalization: the input normalisation it was trained with (a name of
        ``datasets.NORMALIZATIONS``).
      accuracy: published top-1 test accuracy in percent, from the source's README.
      url: where the file is downloaded from.
      source: the repository that published it.
      sha256: the file's full sha256 where we know it, else None (then only the
        prefix in the file name is checked).
    """

    name: str
    depth: int
    shortcut: str
    dataset: str
    normalization: str
    accuracy: float
    url: str
    source: str
    sha256: str | None = None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        """The hex digits after the last ``-`` of the file name: a prefix of its sha256."""
        return os.path.splitext(self.file_name)[0].rsplit("-", 1)[-1]

    @property
    def num_classes(self) -> int:
        return datasets.get(self.dataset).num_classes

    def num_params(self) -> int:
        """Trainable parameters of the model (computed from shapes, no weights needed)."""
        model = models.create_model(
            f"resnet{self.depth}", shortcut=self.shortcut, num_classes=self.num_classes
        )
        image = jax.ShapeDtypeStruct((1, 32, 32, 3), "float32")
        shapes = jax.eval_shape(model.init, jax.random.key(0), image)
        return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def _akamaster(depth: int, file_hash: str, accuracy: float, sha256: str | None = None) -> Weights:
    return Weights(
        name=f"resnet{depth}",
        depth=depth,
        shortcut="A",
        dataset="cifar10",
        normalization="imagenet",
        accuracy=accuracy,
        url=f"{_AKAMASTER}/raw/master/pretrained_models/resnet{depth}-{file_hash}.th",
        source=_AKAMASTER,
        sha256=sha256,
    )


def _chenyaofo(dataset: str, depth: int, file_hash: str, accuracy: float) -> Weights:
    return Weights(
        name=f"{dataset}_resnet{depth}",
        depth=depth,
        shortcut="B",
        dataset=dataset,
        normalization="cifar" if dataset == "cifar10" else "cifar100",
        accuracy=accuracy,
        url=f"{_CHENYAOFO}/releases/download/resnet/{dataset}_resnet{depth}-{file_hash}.pt",
        source=_CHENYAOFO,
    )


# Accuracies: akamaster's README ("Test err(this impl.)", as 100 - error) and
# chenyaofo's README (Top-1 Acc.). Full sha256s: of the files we have verified (see the
# module docstring); the others are checked by the sha256 prefix in their names.
REGISTRY: Mapping[str, Weights] = {
    w.name: w
    for w in (
        _akamaster(
            20,
            "12fca82f",
            91.73,
            "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        ),
        _akamaster(32, "d509ac18", 92.63),
        _akamaster(44, "014dd654", 93.10),
        _akamaster(
            56,
            "4bfd9763",
            93.39,
            "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        ),
        _akamaster(110, "1d1ed7c2", 93.68),
        _akamaster(1202, "f3b1deed", 93.82),
        _chenyaofo("cifar10", 20, "4118986f", 92.60),
        _chenyaofo("cifar10", 32, "ef93fc4d", 93.53),
        _chenyaofo("cifar10", 44, "2a3cabcb", 94.01),
        _chenyaofo("cifar10", 56, "187c023a", 94.37),
        _chenyaofo("cifar100", 20, "23dac2f1", 68.83),
        _chenyaofo("cifar100", 32, "84213ce6", 70.16),
        _chenyaofo("cifar100", 44, "ffe32858", 71.63),
        _chenyaofo("cifar100", 56, "f2eff4c8", 72.63),
    )
}


def list() -> Sequence[Weights]:
    """Every known weights file, akamaster's first."""
    return tuple(REGISTRY.values())


def get(name: str) -> Weights:
    """The `Weights` called ``name``; `WeightsError` lists the known names."""
    if name not in REGISTRY:
        raise WeightsError(
            f"unknown pretrained weights {name!r}; known: {', '.join(REGISTRY)} "
            "(python -m jresnet.pretrained lists them)"
        )
    return REGISTRY[name]


def cache_dir(override: str | os.PathLike[str] | None = None) -> str:
    """``override``, else ``$JRESNET_CACHE_DIR``, else ``~/.cache/jresnet/weights``."""
    chosen = override if override is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def verify(path: str, weights: Weights) -> None:
    """Deletes ``path`` (if it can) and raises `WeightsError` unless its sha256 is the
    expected one."""
    actual = safe_files.sha256(path)
    expected = weights.sha256 or weights.hash_prefix
    if not actual.startswith(expected):
        try:
            os.remove(path)
            fate = "was deleted"
        except OSError as e:  # a read-only cache: the verification is still what to say
            fate = f"could not be deleted ({e.strerror}): delete it by hand"
        raise WeightsError(
            f"{path} failed verification and {fate}: its sha256 is {actual}, expected "
            f"{'' if weights.sha256 else 'a hash starting with '}{expected} (a corrupt or "
            f"truncated download, or another file). Run again to download it from "
            f"{weights.url}, or put the right file there by hand."
        )


def _download(weights: Weights, path: str, timeout_s: float) -> None:
    """Downloads to a temporary file next to ``path``, then renames it: no partial files."""
    hint = f"Download {weights.url} by hand and put it at {path}."
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{weights.file_name}.", dir=directory)
    except OSError as e:
        raise WeightsError(
            f"can't write to the weights cache {directory} ({e}); choose another one with "
            f"${CACHE_ENV} or cache_dir"
        ) from e
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(weights.url, timeout=timeout_s) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
        os.replace(partial, path)
    except urllib.error.HTTPError as e:
        raise WeightsError(
            f"downloading {weights.name} failed: HTTP {e.code} {e.reason} for {weights.url}. "
            + hint
        ) from e
    except (urllib.error.URLError, OSError) as e:  # offline, DNS, refused, timeout
        reason = getattr(e, "reason", e)
        raise WeightsError(
            f"can't download {weights.name} from {weights.url} ({reason}): are you offline? " + hint
        ) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def fetch(
    weights: Weights | str,
    cache: str | os.PathLike[str] | None = None,
    timeout_s: float = 60.0,
) -> str:
    """The path of a verified local copy of ``weights``, downloading it if needed.

    Args:
      weights: a `Weights` or its name.
      cache: the cache directory (default: `cache_dir`).
      timeout_s: network timeout per read, in seconds.

    Raises:
      WeightsError: unknown name, download failed (naming the URL and the path
        where a manually downloaded file is read from), or verification failed
        (the file is deleted).
    """
    if isinstance(weights, str):
        weights = get(weights)
    path = os.path.join(cache_dir(cache), weights.file_name)
    if not os.path.isfile(path):
        _download(weights, path, timeout_s)
    verify(path, weights)
    return path


def load(
    name: str, cache: str | os.PathLike[str] | None = None
) -> tuple[models.ResNet, dict[str, Any]]:
    """``(model, variables)`` of published weights, e.g. ``load("cifar10_resnet20")``.

    ``model.apply(variables, x, train=False)`` maps NHWC float32 images ``[N, 32, 32, 3]``,
    normalised as ``model.normalization`` names, to logits ``[N, num_classes]``
    (`jresnet.predict.predict` does the normalising for uint8 images). ``variables`` are
    ``{"params", "batch_stats"}`` of jax arrays.
    """
    weights = get(name)
    path = fetch(weights, cache)
    state_dict = weight_files.load_torch_checkpoint(path)
    variables = torch_layouts.torch_to_flax(state_dict, shortcut=weights.shortcut)
    arch = torch_layouts.infer_architecture(state_dict)
    if (arch.depth, arch.num_classes) != (weights.depth, weights.num_classes):
        raise WeightsError(
            f"{path} holds a {arch.describe()}, not the ResNet-{weights.depth} with "
            f"{weights.num_classes} classes that {name!r} should be"
        )
    model = models.ResNet(
        blocks_per_stage=arch.blocks_per_stage,
        num_classes=arch.num_classes,
        shortcut=arch.shortcut,
        normalization=weights.normalization,
    )
    return model, jax.tree.map(jnp.asarray, variables)


def table() -> str:
    """The registry as a Markdown table (what the README shows)."""
    rows = [
        "| name | depth | shortcut | params | dataset | normalization | published accuracy "
        "| source |",
        "|---|---:|---|---:|---|---|---:|---|",
    ]
    for w in REGISTRY.values():
        rows.append(
            f"| `{w.name}` | {w.depth} | {w.shortcut} | {w.num_params():,} | {w.dataset} | "
            f"{w.normalization} | {w.accuracy:.2f}% | "
            f"[{w.source.split('github.com/')[1]}]({w.url}) |"
        )
    return "\n".join(rows)


def listing(cache: str | os.PathLike[str] | None = None, urls: bool = False) -> str:
    """The registry as a plain-text table for a terminal (at most 100 columns): name, depth,
    dataset, shortcut, normalisation, published test accuracy and whether the file is in
    ``cache`` (verified when loaded); with ``urls``, each name's URL below it."""
    directory = cache_dir(cache)
    header = ("name", "depth", "dataset", "shortcut", "normalization", "accuracy", "cached")
    rows = [header] + [
        (
            w.name,
            str(w.depth),
            w.dataset,
            w.shortcut,
            w.normalization,
            f"{w.accuracy:.2f}%",
            "yes" if os.path.isfile(os.path.join(directory, w.file_name)) else "no",
        )
        for w in REGISTRY.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 5}  # numbers
    lines = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    if urls:
        lines += ["", *(f"{w.name}: {w.url}" for w in REGISTRY.values())]
    lines += [
        "",
        "accuracy: the source's published top-1 on the official test set.",
        f"cache: {directory} (${CACHE_ENV} or --cache_dir overrides it)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``jresnet pretrained`` (``python -m jresnet.pretrained``): lists the published weights."""
    parser = argparse.ArgumentParser(
        prog="jresnet pretrained",
        description="List the published weights that jresnet loads by name "
        "(jresnet.pretrained.load, --config.init_from, jresnet predict/convert/export), "
        "and which of them are already in the cache.",
    )
    parser.add_argument("--urls", action="store_true", help="also print each file's URL")
    parser.add_argument(
        "--markdown", action="store_true", help="the README's Markdown table (with parameters)"
    )
    parser.add_argument(
        "--cache_dir", help=f"cache directory (default: ${CACHE_ENV} or {DEFAULT_CACHE_DIR})"
    )
    args = parser.parse_args(argv)
    print(table() if args.markdown else listing(args.cache_dir, args.urls))
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(lambda: main(sys.argv[1:])))
