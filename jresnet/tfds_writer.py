"""Writes CIFAR splits held in memory as the standard TFDS dataset, offline, without TensorFlow.

The result is ``DIR/<dataset>/3.0.2/`` in ``array_record`` format, with the features, version,
split names (``train``, ``test``), label names, example keys and ``id`` strings
(``train_00000``, ...) of TFDS 4.9.10's own ``cifar10`` / ``cifar100`` builders, so that plain
``tfds.data_source("cifar10", data_dir=DIR)`` and ``tfds.builder("cifar10", data_dir=DIR)`` read
it as the standard dataset.

Nothing half-written is left in ``DIR``: the dataset is built in a hidden work directory
``DIR/.jresnet_prepare_*/`` (`staging`; it also holds TFDS's ``incomplete.*`` directory and its
download scratch) and moved into place when complete. The work directory is locked with
``flock`` (POSIX) while its run lives; the next run removes those of killed runs, with a
message, and names (without removing) leftovers it cannot prove dead: TFDS's own
``DIR/<dataset>/incomplete.*`` and the ``.jresnet_overwrite_*`` of older jresnet versions.
A destination that can't be written raises `errors.OutputError`.

Findings about TFDS 4.9.10 (checked, not assumed):

- The stock ``Cifar10.download_and_prepare`` cannot run here: it downloads
  ``cifar-10-binary.tar.gz`` from cs.toronto.edu, and its ``_load_data`` reads the batches with
  ``tf.io.gfile.GFile``, which raises ``ModuleNotFoundError: tensorflow`` without TensorFlow.
- ``tfds.features.Image.encode_example`` encodes a NumPy array with ``tf.image.encode_png`` (needs
  TensorFlow), but passes ``bytes`` through unchanged. We therefore encode each image to PNG with
  PIL ourselves (lossless) and hand TFDS the bytes; shapes and dtypes are validated beforehand.
- Writing ``array_record`` shards and ``dataset_info.json`` needs no TensorFlow.
- No network: the builder here subclasses the stock one (registration skipped) and overrides
  ``_split_generators`` so the download manager is never asked for anything; GCS access is also
  turned off (``try_download_gcs=False``). Why no public TFDS API does this: see
  `_builder_class`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jresnet import datasets, reporting
from jresnet.cifar_format import SplitArrays
from jresnet.errors import OutputError


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _builder_class(dataset: str) -> type:
    """The stock TFDS builder of ``dataset`` with its data read from memory instead of the web.

    Overriding ``_split_generators`` is TFDS's extension point for builder authors (every TFDS
    dataset implements it), though not public API for users. The public alternatives in TFDS
    4.9.10 were tried and do not give the stock dataset:

    - ``tfds.dataset_builders.store_as_tfds_dataset`` / ``AdhocBuilder``: its
      ``_split_generators`` tests ``isinstance(data, tf.data.Dataset)``, which imports
      TensorFlow (``ModuleNotFoundError`` without it), and its ``_info`` sets no
      ``supervised_keys`` (the stock ``("image", "label")`` would be lost), nor the stock
      description, citation and homepage.
    - ``tfds.core.SequentialWriter`` writes TFRecord only, with ``tf.io.TFRecordWriter``
      (TensorFlow again), and in the given order rather than the stock builder's shuffle by
      example key.
    - ``tfds.folder_dataset.write_metadata`` only describes shards that already exist; writing
      array_record shards in the stock order ourselves would re-implement TFDS's writer.
    """
    stock = tfds.builder_cls(dataset)

    class LocalCifar(stock, skip_registration=True):
        name = dataset  # same name, version, features and splits as the stock builder

        def __init__(self, *, splits: Mapping[str, SplitArrays], **kwargs):
            self._local_splits = splits
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # never download anything
            facts = datasets.get(dataset)
            self.info.features["label"].names = list(facts.label_names)
            if facts.coarse_label_names is not None:
                self.info.features["coarse_label"].names = list(facts.coarse_label_names)
            return {
                split: self._generate_local(split, arrays)
                for split, arrays in self._local_splits.items()
            }

        def _generate_local(self, split: str, arrays: SplitArrays) -> Iterator[tuple[int, dict]]:
            # Keys and ids as the stock generator: the running index within the split.
            for index in range(len(arrays.images)):
                record = {
                    "id": f"{split}_{index:05d}",
                    "image": _encode_png(arrays.images[index]),
                    "label": int(arrays.labels[index]),
                }
                if arrays.coarse_labels is not None:
                    record["coarse_label"] = int(arrays.coarse_labels[index])
                yield index, record

    return LocalCifar


_STAGING_PREFIX = ".jresnet_prepare_"
_LOCK_FILE = "lock"
# A live run locks its work directory microseconds after creating it; one without a lock file
# this old was left by a run killed in between.
_UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def staging(data_dir: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """A locked work directory for one run in ``data_dir`` (created if needed, and removed
    again if it stays empty after a failure); see `_staging_dir`. An unusable ``data_dir``
    raises `OutputError` at once."""
    with _data_dir(data_dir), _staging_dir(data_dir, log) as path:
        yield path


@contextlib.contextmanager
def _data_dir(data_dir: Path) -> Iterator[None]:
    """Creates ``data_dir`` if needed; removes it again if it stays empty after a failure."""
    created = not data_dir.exists()
    _create_data_dir(data_dir)
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty: a concurrent run wrote there
                data_dir.rmdir()
        raise


def _create_data_dir(data_dir: Path) -> None:
    """Creates ``data_dir`` (and its parents) or explains why it cannot be used."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        file = next(p for p in (data_dir, *data_dir.parents) if p.exists() and not p.is_dir())
        raise OutputError(
            f"The data directory {data_dir} cannot be created: {file} is not a directory but "
            "a file. Choose another --data_dir."
        ) from e
    except OSError as e:
        raise OutputError(
            f"cannot create the data directory {data_dir} ({e.strerror}). Choose another "
            "--data_dir or fix its permissions."
        ) from e


@contextlib.contextmanager
def _staging_dir(data_dir: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """A new hidden work directory in ``data_dir`` for one run; removed when the run ends.

    The run holds an ``flock`` on the directory's ``lock`` file for as long as it lives; the
    kernel drops the lock when the process dies, even by SIGKILL. So the work directories of
    killed runs, which are removed here first (with a message), are told apart from those of
    runs still going, which are left alone. The lock is taken under a temporary name and then
    renamed into place, so no run ever sees a live run's ``lock`` unlocked.
    """
    _remove_stale_staging(data_dir, log)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=data_dir))
    except OSError as e:
        raise OutputError(
            f"cannot write in the data directory {data_dir} ({e.strerror}). Choose another "
            "--data_dir or fix its permissions."
        ) from e
    with open(staging / f"{_LOCK_FILE}.new", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(staging / f"{_LOCK_FILE}.new", staging / _LOCK_FILE)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(data_dir: Path, log: Callable[[str], None]) -> None:
    """Removes the work directories that killed runs left in ``data_dir``; see `_staging_dir`."""
    for candidate in sorted(data_dir.glob(f"{_STAGING_PREFIX}*")):
        if not candidate.is_dir():
            continue
        try:
            lock = open(candidate / _LOCK_FILE)
        except FileNotFoundError:
            if time.time() - candidate.stat().st_mtime > _UNLOCKED_GRACE_S:
                _remove_leftover(candidate, log)
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another prepare is writing there right now
            _remove_leftover(candidate, log)


def _remove_leftover(path: Path, log: Callable[[str], None]) -> None:
    try:
        shutil.rmtree(path)
    except OSError as e:
        log(f"warning: could not remove {path}, left by an interrupted run: {e}")
    else:
        log(f"Removed {path}, the unfinished work of an interrupted run.")


def warn_foreign_leftovers(data_dir: Path, dataset: str, log: Callable[[str], None]) -> None:
    """Names leftovers of runs that had no lock: TFDS's own, or jresnet's before it had one."""
    found = [
        *sorted(data_dir.glob(".jresnet_overwrite_*")),
        *sorted((data_dir / dataset).glob("incomplete.*")),
    ]
    for path in found:
        log(
            f"warning: {path} looks left over by an interrupted dataset preparation; delete it "
            "unless another program is preparing a dataset in this directory right now."
        )


def target_dir(data_dir: Path, dataset: str) -> Path:
    """Where the dataset's files go: ``data_dir/<dataset>/<version>``."""
    return data_dir / dataset / str(tfds.builder_cls(dataset).VERSION)


def refuse_existing(target: Path, dataset: str, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise OutputError(
            f"{dataset} {target.name} already exists at {target}; "
            "pass --overwrite (overwrite=True) to replace it."
        )


def write_staged(
    staging: Path,
    data_dir: Path,
    dataset: str,
    splits: Mapping[str, SplitArrays],
    overwrite: bool,
) -> Path:
    """Generates the dataset in ``staging``, then moves it into ``data_dir``; returns its path."""
    target = target_dir(data_dir, dataset)
    refuse_existing(target, dataset, overwrite)
    builder = _builder_class(dataset)(splits=splits, data_dir=os.fspath(staging))
    try:
        # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... prepared
        # to <the staging directory>" to stdout, and warns that the folder it is about to
        # create has no dataset_info.json: none of it is true or news here (the caller says
        # where the dataset went); its progress bars (stderr) stay.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            reporting.without_log_lines("Variant folder "),
        ):
            builder.download_and_prepare(
                download_dir=os.fspath(staging / "downloads"),  # never used: nothing downloaded
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
        refuse_existing(target, dataset, overwrite)  # another run may have finished meanwhile
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target.rename(staging / "replaced")  # removed with the work directory
        Path(builder.data_dir).rename(target)
    except OSError as e:  # the directory was writable: a full disk, a quota, an I/O error
        raise OutputError(f"writing {dataset} to {data_dir} failed: {e}") from e
    return target


def write(
    data_dir: str | os.PathLike,
    dataset: str,
    splits: Mapping[str, SplitArrays],
    overwrite: bool,
    log: Callable[[str], None],
) -> Path:
    """Writes ``splits`` as the TFDS dataset ``dataset`` in ``data_dir``; returns its directory."""
    data_dir = Path(data_dir)
    with staging(data_dir, log) as work:
        return write_staged(work, data_dir, dataset, splits, overwrite)
