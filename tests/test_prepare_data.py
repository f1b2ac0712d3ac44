"""jresnet.prepare_data: every source layout, the written TFDS dataset, errors and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import pickle
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jresnet import datasets, input_pipeline, prepare_data
from jresnet.cifar_format import fine_to_coarse
from jresnet.errors import DataError
from jresnet.prepare_data import prepare
from jresnet.testing.tiny_data import write_dataset
from tests.conftest import run_module

CIFAR10_LABELS = datasets.get("cifar10").label_names
CIFAR100_LABELS = datasets.get("cifar100").label_names
CIFAR100_COARSE_LABELS = datasets.get("cifar100").coarse_label_names


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Preparing must never touch the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def tiny_release(monkeypatch):
    """Pretends the official releases have the split sizes of the tiny archives built here.

    An official-format archive (python or binary) must hold the official 50,000/10,000
    examples; the tests build ones with 20 (CIFAR-10) or 100 (CIFAR-100) per split.
    """
    for name, size in [("cifar10", 20), ("cifar100", 100)]:
        tiny = dataclasses.replace(datasets.get(name), split_sizes={"train": size, "test": size})
        monkeypatch.setitem(datasets.DATASETS, name, tiny)


def fake_split(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [num_classes * per_class, 32, 32, 3] random images and their int64 labels."""
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 32, 32, 3), np.uint8)
    return images, labels


SPLITS10 = {"train": fake_split(10, 2, 0), "test": fake_split(10, 2, 1)}


def chw_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did at protocol 2, the way the official batches were made.

    Python 2 wrote its ``str`` (the dict keys, label names, file names and the pixel buffer) as
    BINSTRING, which ``pickle.load(encoding="bytes")`` turns into ``bytes``, and named NumPy's
    array reconstructor ``numpy.core.multiarray._reconstruct``. Python 3's own protocol 2
    would instead call ``_codecs.encode`` for every ``bytes`` object.
    """

    dispatch = pickle._Pickler.dispatch.copy()
    _reconstruct = np.empty(0).__reduce__()[0]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        if obj is self._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def python_tarball(path: Path, splits=SPLITS10) -> Path:
    """A cifar-10-python.tar.gz: pickled dicts, the training split over five batches."""
    with tarfile.open(path, "w:gz") as tar:
        meta = {"num_cases_per_batch": 4, "label_names": list(CIFAR10_LABELS), "num_vis": 3072}
        add_file(tar, "cifar-10-batches-py/batches.meta", py2_pickle(meta))
        images, labels = splits["train"]
        for i, part in enumerate(np.array_split(np.arange(len(images)), 5), start=1):
            batch = {
                "batch_label": f"training batch {i} of 5",
                "labels": labels[part].tolist(),
                "data": chw_rows(images[part]),
                "filenames": [f"image_{j}.png" for j in part],
            }
            add_file(tar, f"cifar-10-batches-py/data_batch_{i}", py2_pickle(batch))
        images, labels = splits["test"]
        batch = {"batch_label": "testing batch 1 of 1", "labels": labels.tolist()}
        batch["data"] = chw_rows(images)
        add_file(tar, "cifar-10-batches-py/test_batch", py2_pickle(batch))
    return path


def binary_tarball(path: Path, splits=SPLITS10) -> Path:
    """A cifar-10-binary.tar.gz: records of 1 label byte + 3072 CHW pixel bytes."""

    def records(images, labels):
        return np.concatenate([labels[:, None].astype(np.uint8), chw_rows(images)], 1).tobytes()

    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "cifar-10-batches-bin/batches.meta.txt", "\n".join(CIFAR10_LABELS).encode())
        images, labels = splits["train"]
        for i, part in enumerate(np.array_split(np.arange(len(images)), 5), start=1):
            data = records(images[part], labels[part])
            add_file(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", data)
        add_file(tar, "cifar-10-batches-bin/test_batch.bin", records(*splits["test"]))
    return path


def image_tree(root: Path, splits=SPLITS10, names=CIFAR10_LABELS) -> Path:
    """train/<class>/<i>.png and test/<class>/<i>.png (PNG, so pixels are lossless)."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def tar_of(tree: Path, path: Path, arcname: str = "cifar10") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=arcname)
    return path


def as_multiset(images, labels) -> list[tuple[bytes, int]]:
    return sorted(
        (image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
    )


def assert_dataset_equals(data_dir: Path, dataset: str, splits) -> None:
    for split, (images, labels) in splits.items():
        got = input_pipeline.load_split(dataset, split, data_dir)
        assert as_multiset(*got) == as_multiset(images, labels), split


# --------------------------------------------------------------------------
# Sources.


@pytest.mark.usefixtures("tiny_release")
@pytest.mark.parametrize("layout", ["python", "binary", "tree", "tree_tar"])
def test_prepare_reads_every_layout_exactly(tmp_path, layout):
    source = {
        "python": lambda: python_tarball(tmp_path / "cifar-10-python.tar.gz"),
        "binary": lambda: binary_tarball(tmp_path / "cifar-10-binary.tar.gz"),
        "tree": lambda: image_tree(tmp_path / "tree"),
        "tree_tar": lambda: tar_of(image_tree(tmp_path / "tree"), tmp_path / "cifar10.tar.gz"),
    }[layout]()
    lines = []
    written = prepare(source, tmp_path / "tfds", log=lines.append)
    assert written == tmp_path / "tfds" / "cifar10" / "3.0.2"
    assert any("train: 20, test: 20" in line for line in lines)
    assert_dataset_equals(tmp_path / "tfds", "cifar10", SPLITS10)


def test_image_folder_labels_follow_official_names_case_insensitively(tmp_path):
    upper = tuple(name.upper() for name in CIFAR10_LABELS)
    prepare(image_tree(tmp_path / "tree", names=upper), tmp_path / "tfds", log=lambda _: None)
    assert_dataset_equals(tmp_path / "tfds", "cifar10", SPLITS10)


def test_image_folder_with_other_names_uses_sorted_folder_order(tmp_path):
    names = tuple(f"class_{9 - i}" for i in range(10))  # sorted order reverses the labels
    lines = []
    prepare(image_tree(tmp_path / "tree", names=names), tmp_path / "tfds", log=lines.append)
    assert any("sorted folder-name order" in line for line in lines)
    reversed_labels = {s: (images, 9 - labels) for s, (images, labels) in SPLITS10.items()}
    assert_dataset_equals(tmp_path / "tfds", "cifar10", reversed_labels)


@pytest.mark.usefixtures("tiny_release")
def test_cifar100_python_tarball(tmp_path):
    splits = {"train": fake_split(100, 1, 2), "test": fake_split(100, 1, 3)}
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        meta = {
            "fine_label_names": list(CIFAR100_LABELS),
            "coarse_label_names": list(CIFAR100_COARSE_LABELS),
        }
        add_file(tar, "cifar-100-python/meta", py2_pickle(meta))
        for split, (images, labels) in splits.items():
            coarse = fine_to_coarse()[labels].tolist()
            data = {"data": chw_rows(images), "fine_labels": labels.tolist()}
            data["coarse_labels"] = coarse
            add_file(tar, f"cifar-100-python/{split}", py2_pickle(data))
    prepare(tmp_path / "cifar-100-python.tar.gz", tmp_path / "tfds", log=lambda _: None)
    assert_dataset_equals(tmp_path / "tfds", "cifar100", splits)
    for example in tfds.data_source("cifar100", split="test", data_dir=tmp_path / "tfds"):
        assert example["coarse_label"] == fine_to_coarse()[example["label"]]


# --------------------------------------------------------------------------
# The written dataset is the standard one.


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_written_dataset_matches_the_stock_builder(tmp_path, dataset):
    num_classes = datasets.get(dataset).num_classes
    splits = {"train": fake_split(num_classes, 1, 4), "test": fake_split(num_classes, 1, 5)}
    write_dataset(tmp_path, dataset, splits)
    stock = tfds.builder_cls(dataset)(data_dir=tmp_path / "unprepared").info
    builder = tfds.builder(dataset, data_dir=tmp_path)
    assert builder.is_prepared()
    info = builder.info
    assert info.version == stock.version == "3.0.2"
    assert info.features.to_json_content() == stock.features.to_json_content()
    assert info.supervised_keys == stock.supervised_keys
    assert sorted(info.splits) == ["test", "train"]
    assert info.splits["train"].num_examples == num_classes
    assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    names = CIFAR10_LABELS if dataset == "cifar10" else CIFAR100_LABELS
    assert tuple(info.features["label"].names) == names
    example = tfds.data_source(dataset, split="train", data_dir=tmp_path)[0]
    assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
    assert example["id"].decode().startswith("train_")
    assert sorted(p.name for p in (tmp_path / dataset / "3.0.2").iterdir()) == [
        f"{dataset}-test.array_record-00000-of-00001",
        f"{dataset}-train.array_record-00000-of-00001",
        *(["coarse_label.labels.txt"] if dataset == "cifar100" else []),
        "dataset_info.json",
        "features.json",
        "label.labels.txt",
    ]


# --------------------------------------------------------------------------
# Errors.


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def test_writing_a_dataset_prints_no_tfds_banner_or_warning(tmp_path, capsys, caplog):
    """TFDS's "Downloading and preparing dataset Unknown size" (nothing is downloaded) and
    its warning about the folder it is about to create are not shown."""
    with caplog.at_level(logging.WARNING):
        write_dataset(tmp_path, "cifar10", {"train": fake_split(10, 1, 6)})
    out = capsys.readouterr().out
    assert "Downloading and preparing" not in out and "Unknown size" not in out
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nope.tar.gz", tmp_path / "tfds", log=lambda _: None)


def test_not_an_archive(tmp_path):
    (tmp_path / "cifar.zip").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="neither a directory nor a tar archive"):
        prepare(tmp_path / "cifar.zip", tmp_path / "tfds", log=lambda _: None)


def test_unrecognised_layout(tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "images" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="Unrecognised layout"):
        prepare(tmp_path / "src", tmp_path / "tfds", log=lambda _: None)


def test_wrong_number_of_class_folders(tmp_path):
    splits = {"train": fake_split(3, 1, 8), "test": fake_split(3, 1, 9)}
    image_tree(tmp_path / "tree", splits)
    with pytest.raises(DataError, match=r"Found 3 class folders.*10 \(cifar10\)"):
        prepare(tmp_path / "tree", tmp_path / "tfds", "cifar10", log=lambda _: None)


def test_class_folders_differ_between_splits(tmp_path):
    image_tree(tmp_path / "tree")
    (tmp_path / "tree" / "test" / "truck").rename(tmp_path / "tree" / "test" / "lorry")
    with pytest.raises(DataError, match="differ between train"):
        prepare(tmp_path / "tree", tmp_path / "tfds", log=lambda _: None)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((31, 32, 3), np.uint8), "32x31 RGB"),
        (np.zeros((32, 32), np.uint8), "32x32 L"),
        (np.zeros((32, 32, 4), np.uint8), "32x32 RGBA"),
    ],
)
def test_images_must_be_32x32_rgb(tmp_path, bad, match):
    image_tree(tmp_path / "tree")
    save_png(tmp_path / "tree" / "train" / "cat" / "bad.png", bad)
    with pytest.raises(DataError, match=rf"train/cat/bad\.png: a {match} image"):
        prepare(tmp_path / "tree", tmp_path / "tfds", log=lambda _: None)


def test_malformed_python_tarball(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        meta = {"label_names": list(CIFAR10_LABELS)}
        add_file(tar, "cifar-10-batches-py/batches.meta", py2_pickle(meta))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add_file(tar, f"cifar-10-batches-py/{name}", py2_pickle({"batch_label": "x"}))
    with pytest.raises(DataError, match="cifar-10-python but is malformed"):
        prepare(tmp_path / "cifar-10-python.tar.gz", tmp_path / "tfds", log=lambda _: None)


def test_source_of_another_dataset(tmp_path):
    source = binary_tarball(tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match="not cifar100"):
        prepare(source, tmp_path / "tfds", "cifar100", log=lambda _: None)


# --------------------------------------------------------------------------
# Command line.


def test_cli(tmp_path):
    # An image folder: the official-format archives must hold the official 60,000 images.
    source = tar_of(image_tree(tmp_path / "tree"), tmp_path / "cifar10.tar.gz")
    result = run_module(
        "jresnet.prepare_data", "--from", str(source), "--data_dir", str(tmp_path / "tfds")
    )
    assert result.returncode == 0, result.stderr
    assert "train: 20, test: 20" in result.stdout
    assert str(tmp_path / "tfds" / "cifar10" / "3.0.2") in result.stdout
    assert_dataset_equals(tmp_path / "tfds", "cifar10", SPLITS10)


def test_cli_bad_input(tmp_path):
    result = run_module(
        "jresnet.prepare_data",
        "--from",
        str(tmp_path / "missing"),
        "--data_dir",
        str(tmp_path / "tfds"),
    )
    assert result.returncode != 0
    assert "error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("tiny_release")
def test_download_and_prepare_checks_md5_and_writes_the_dataset(tmp_path, monkeypatch):
    """The internet path, with urlopen serving a local python-format tarball."""
    tarball = python_tarball(tmp_path / "cifar-10-python.tar.gz")
    data = tarball.read_bytes()
    served = []

    def fake_urlopen(url, timeout):
        served.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(prepare_data.urllib.request, "urlopen", fake_urlopen)
    url = datasets.get("cifar10").url
    cifar10 = datasets.get("cifar10")  # the tiny_release one
    monkeypatch.setitem(datasets.DATASETS, "cifar10", dataclasses.replace(cifar10, md5="0" * 32))
    with pytest.raises(DataError, match="MD5"):
        prepare_data.download_and_prepare("cifar10", tmp_path / "bad", log=lambda _: None)
    assert not (tmp_path / "bad").exists()

    right = dataclasses.replace(cifar10, md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(datasets.DATASETS, "cifar10", right)
    prepare_data.download_and_prepare("cifar10", tmp_path / "tfds", log=lambda _: None)
    assert served == [url, url]
    assert_dataset_equals(tmp_path / "tfds", "cifar10", SPLITS10)
