"""Prepare CIFAR-10/100 as the standard TFDS dataset from a local copy, offline, without TensorFlow.

Usage::

    python -m jresnet.prepare_data --from PATH --data_dir DIR [--dataset cifar10] [--overwrite]

``PATH`` is one of the layouts `jresnet.sources` reads: the official python or binary archive
(``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz``, or the cifar-100 ones), or an
image-folder tree ``train/<class>/*``, ``test/<class>/*`` (a directory or a ``.tar.gz`` of
one); any of these may also be given as an already extracted directory. `jresnet.tfds_writer`
writes the result as ``DIR/<dataset>/3.0.2/`` in ``array_record`` format, readable as the
standard TFDS dataset; nothing half-written is left in ``DIR``.

`download_and_prepare` does the same from the official archive on the web (what `jresnet.main`
calls for a dataset that is not prepared). Problems with the source raise `errors.DataError`,
with the destination `errors.OutputError`; the command line prints ``error: <message>`` and
exits with status 2 (`jresnet.errors`); a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from jresnet import datasets, errors, sources, tfds_writer
from jresnet.errors import DataError


def prepare(
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    dataset: str | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Reads a local CIFAR source and writes it as the standard TFDS dataset.

    Args:
      source: a layout `jresnet.sources` reads.
      data_dir: TFDS data directory to write into (created if missing).
      dataset: "cifar10" or "cifar100"; None infers it from the source.
      overwrite: replace an existing dataset of the same name and version.
      log: receives one line of progress at a time.

    Returns:
      The dataset's version directory, ``data_dir/<dataset>/<version>``.
    """
    start = time.perf_counter()
    sources.check_dataset_name(dataset)
    data_dir = Path(data_dir)
    # An unusable destination fails before the source is read.
    with tfds_writer.staging(data_dir, log) as staging:
        if dataset is not None:
            tfds_writer.refuse_existing(
                tfds_writer.target_dir(data_dir, dataset), dataset, overwrite
            )
        log(f"Reading {source} ...")
        read = sources.read_source(source, dataset)
        counts = ", ".join(f"{s}: {len(a.images)}" for s, a in read.splits.items())
        seconds = time.perf_counter() - start
        log(f"Read {read.dataset} ({read.layout}) in {seconds:.1f}s: {counts}.")
        if not read.official:
            _warn_other_sizes(read, log)
        tfds_writer.warn_foreign_leftovers(data_dir, read.dataset, log)
        written = tfds_writer.write_staged(staging, data_dir, read.dataset, read.splits, overwrite)
    log(f"Wrote {read.dataset} in array_record format to {written} ({counts}).")
    log(f"Done in {time.perf_counter() - start:.1f}s.")
    return written


def _warn_other_sizes(read: sources.Source, log: Callable[[str], None]) -> None:
    for split, arrays in read.splits.items():
        official = datasets.get(read.dataset).split_sizes[split]
        if len(arrays.images) != official:
            log(
                f"warning: {len(arrays.images):,} {split} images; the official {read.dataset} "
                f"{split} split has {official:,}. Fine for a subset, but this is not the "
                "official dataset."
            )


def download_and_prepare(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Downloads the official python-format archive and `prepare`s it, without TensorFlow.

    TFDS's own cifar10 builder needs TensorFlow to prepare (see the module
    docstring); this is the TF-free equivalent for machines with internet.
    Network failures raise ``OSError`` (``urllib.error.URLError``) within
    ``timeout_s`` per blocking operation; a corrupt download raises `DataError`.
    """
    url, md5 = datasets.get(dataset).url, datasets.get(dataset).md5
    with tempfile.TemporaryDirectory(prefix="jresnet-download-") as tmp:
        path = Path(tmp) / url.rsplit("/", 1)[1]
        log(f"Downloading {url} ...")
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"{url} downloaded with MD5 {digest.hexdigest()}, expected {md5}")
        return prepare(path, data_dir, dataset, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.prepare_data",
        description=(
            "Write CIFAR-10/100 as the standard TFDS dataset (array_record) from a local copy, "
            "without TensorFlow or network access."
        ),
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="cifar-10-python.tar.gz, cifar-10-binary.tar.gz (or the cifar-100 ones), or an "
        "image-folder tree train/<class>/*, test/<class>/* (a directory or a .tar.gz of one).",
    )
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into.")
    parser.add_argument(
        "--dataset",
        choices=sorted(datasets.DATASETS),
        default=None,
        help="default: from the source",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)  # bad flags exit with argparse's status 2

    def job() -> None:
        prepare(args.source, args.data_dir, args.dataset, overwrite=args.overwrite)

    # DataError -> "error: ..." and errors.EXIT_USAGE (2); a bug keeps its traceback.
    return errors.run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
