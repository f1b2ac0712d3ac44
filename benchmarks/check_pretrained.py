"""Published PyTorch weights, converted, classify real CIFAR-10 as PyTorch does.

For each of akamaster's pretrained files (option A, ImageNet normalisation):
convert it with ``python -m jresnet.convert``'s code path into a temporary
jresnet checkpoint, reload it with `jresnet.checkpoint.load_model`, and run the
CIFAR-10 test images through both the reloaded Flax model and the PyTorch
reference of ``tests/torch_reference.py``. Prints the top-1 accuracy of both,
the max abs logit difference, and how many predictions differ.

Usage (from the repository root; needs torch and pillow)::

    mkdir -p /tmp/cifar10 && tar xzf cifar10_jpeg.tar.gz -C /tmp/cifar10
    python benchmarks/check_pretrained.py --data /tmp/cifar10 --weights DIR

``--data`` holds ``test/<class>/*.jpg`` with the class folders in label order
when sorted (airplane, automobile, ..., truck). ``--weights`` holds
``resnet20-12fca82f.th`` and ``resnet56-4bfd9763.th`` (or pass files with --files).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # jresnet and tests.torch_reference without installing

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_FILES = ("resnet20-12fca82f.th", "resnet56-4bfd9763.th")


def load_test_images(data_dir: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 32, 32, 3] float32 in [0, 1], labels [N] int64)`` from ``test/<class>/``."""
    from PIL import Image

    test_dir = os.path.join(data_dir, "test")
    classes = sorted(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d)))
    if len(classes) != 10:
        raise SystemExit(f"expected 10 class folders in {test_dir}, found {classes}")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(test_dir, name)
        for file in sorted(os.listdir(folder)):
            with Image.open(os.path.join(folder, file)) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    order = np.arange(len(labels))
    if limit is not None:  # a class-balanced subset
        order = np.random.default_rng(0).permutation(len(labels))[:limit]
    return np.stack(images)[order].astype(np.float32) / 255.0, np.asarray(labels)[order]


def check(path: str, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, float]:
    import jax
    import torch

    from jresnet import checkpoint, convert
    from jresnet.testing.torch_reference import torch_resnet

    nhwc = (images - IMAGENET_MEAN) / IMAGENET_STD

    state_dict = convert.load_torch_checkpoint(path)
    arch = convert.infer_architecture(state_dict)
    reference = torch_resnet(arch.depth, arch.shortcut, arch.num_classes)
    unprefixed, _ = convert.strip_data_parallel_prefix(state_dict)
    result = reference.load_state_dict(unprefixed, strict=False)
    # Old files have no num_batches_tracked (unused with a fixed momentum); nothing else may differ.
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result
    reference.eval()

    with tempfile.TemporaryDirectory() as workdir:
        convert.convert_file(path, workdir)
        config = checkpoint.load_config(workdir)
        model, variables = checkpoint.load_model(workdir)
    assert config.normalization == "imagenet", config.normalization
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

    ours, theirs = [], []
    torch.set_num_threads(os.cpu_count() or 1)
    for start in range(0, len(nhwc), batch_size):
        x = nhwc[start : start + batch_size]
        ours.append(np.asarray(apply(variables, x)))
        with torch.no_grad():
            theirs.append(reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy())
    ours_logits, torch_logits = np.concatenate(ours), np.concatenate(theirs)
    return {
        "model": arch.describe(),
        "ours_acc": float((ours_logits.argmax(1) == labels).mean()),
        "torch_acc": float((torch_logits.argmax(1) == labels).mean()),
        "max_abs_logit_diff": float(np.abs(ours_logits - torch_logits).max()),
        "max_abs_logit": float(np.abs(torch_logits).max()),
        "pred_disagreements": int((ours_logits.argmax(1) != torch_logits.argmax(1)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with test/<class>/*.jpg")
    parser.add_argument("--weights", default=".", help="folder with the pretrained files")
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--limit", type=int, help="evaluate a random subset of this size")
    args = parser.parse_args()

    start = time.time()
    images, labels = load_test_images(args.data, args.limit)
    print(f"{len(labels):,} test images from {args.data} ({time.time() - start:.1f}s)")
    for name in args.files:
        path = os.path.join(args.weights, name)
        start = time.time()
        r = check(path, images, labels, args.batch_size)
        print(
            f"{name}: {r['model']}: top-1 ours {100 * r['ours_acc']:.2f}%, "
            f"torch {100 * r['torch_acc']:.2f}%; max |logit diff| {r['max_abs_logit_diff']:.2e} "
            f"(max |logit| {r['max_abs_logit']:.1f}); {r['pred_disagreements']} predictions "
            f"differ ({time.time() - start:.1f}s)"
        )


if __name__ == "__main__":
    main()
