"""Published PyTorch weights classify real CIFAR-10 the same in jresnet, PyTorch, .pth and ONNX.

For each weights file (akamaster's or chenyaofo's, recognised by its published
file name in `jresnet.pretrained.REGISTRY`):

1. place it in a temporary cache and load it with ``jresnet.pretrained.load(name)``
   (verification and conversion included): jresnet's logits;
2. run the same file in the PyTorch reference network of `jresnet.testing.torch_reference`
   (akamaster's option A, or the seed's option B under chenyaofo's names): PyTorch's logits;
3. write jresnet's variables back as a seed-layout ``.pth`` (`jresnet.torch_layouts.flax_to_torch`),
   load it into a fresh reference with ``strict=True``: the exported ``.pth``'s logits;
4. export the eval function to ONNX (`jresnet.export.to_onnx`) and run it in
   onnxruntime: ONNX's logits; and likewise the ``jax.export`` StableHLO artifact.

Prints, and writes to ``--out`` (Markdown), the top-1 accuracy of each path, the max
abs logit difference of each against PyTorch's, and how many predictions differ.

Usage (from the repository root; needs the ``test`` extra and pillow)::

    mkdir -p /tmp/cifar10 && tar xzf cifar10_jpeg.tar.gz -C /tmp/cifar10
    python -m benchmarks.check_pretrained --data /tmp/cifar10 --weights DIR

``--data`` holds ``test/<class>/*.jpg`` with the class folders in label order
when sorted (airplane, automobile, ..., truck). ``--weights`` holds the files
(default ``resnet20-12fca82f.th`` and ``resnet56-4bfd9763.th``; or pass --files).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time

import numpy as np

DEFAULT_FILES = ("resnet20-12fca82f.th", "resnet56-4bfd9763.th")
PATHS = ("jresnet", "torch", "exported .pth", "ONNX", "jax.export")


def load_test_images(data_dir: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images [N, 32, 32, 3], labels [N] int64)`` from ``test/<class>/``."""
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
    if limit is not None:  # a random subset
        order = np.random.default_rng(0).permutation(len(labels))[:limit]
    return np.stack(images)[order], np.asarray(labels)[order]


def _weights_named(file_name: str):
    from jresnet import pretrained

    for weights in pretrained.list():
        if weights.file_name == file_name:
            return weights
    raise SystemExit(f"{file_name} is not a published file name of jresnet.pretrained")


def _torch_reference(state_dict, arch):
    """The PyTorch reference network with ``state_dict`` loaded (renamed to the seed's names)."""
    from jresnet import torch_layouts
    from jresnet.testing.torch_reference import torch_resnet

    reference = torch_resnet(arch.depth, arch.shortcut, arch.num_classes)
    unprefixed, _ = torch_layouts.strip_data_parallel_prefix(state_dict)
    if torch_layouts.detect_key_names(unprefixed) is torch_layouts.CHENYAOFO:
        unprefixed = {
            k.replace(".downsample.", ".shortcut.").replace("fc.", "linear.", 1): v
            for k, v in unprefixed.items()
        }
    result = reference.load_state_dict(unprefixed, strict=False)
    # Old files have no num_batches_tracked (unused with a fixed momentum); nothing else may differ.
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result
    return reference.eval()


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )


def check(path: str, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    import jax
    import onnxruntime
    import torch

    from jresnet import datasets, export, pretrained, torch_layouts, weight_files

    weights = _weights_named(os.path.basename(path))
    with tempfile.TemporaryDirectory() as cache:
        shutil.copy(path, os.path.join(cache, weights.file_name))
        model, variables = pretrained.load(weights.name, cache)
    mean, std = datasets.NORMALIZATIONS[model.normalization]
    nhwc = ((images / np.float32(255) - np.float32(mean)) / np.float32(std)).astype(np.float32)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    torch.set_num_threads(os.cpu_count() or 1)

    def run_torch(reference):
        with torch.no_grad():
            return _batched(lambda x: reference(torch.from_numpy(x)).numpy(), nchw, batch_size)

    logits = {}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    logits["jresnet"] = _batched(lambda x: apply(variables, x), nhwc, batch_size)

    state_dict = weight_files.load_torch_checkpoint(path)
    arch = torch_layouts.infer_architecture(state_dict)
    logits["torch"] = run_torch(_torch_reference(state_dict, arch))

    with tempfile.TemporaryDirectory() as tmp:
        exported_pth = os.path.join(tmp, "exported.pth")
        weight_files.save_state_dict_file(torch_layouts.flax_to_torch(variables), exported_pth)
        from jresnet.testing.torch_reference import torch_resnet

        reference = torch_resnet(arch.depth, arch.shortcut, arch.num_classes)
        reference.load_state_dict(torch.load(exported_pth, weights_only=True), strict=True)
        logits["exported .pth"] = run_torch(reference.eval())

    proto = export.to_onnx(model, variables, "NCHW")
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    logits["ONNX"] = _batched(lambda x: session.run(["logits"], {"images": x})[0], nchw, batch_size)
    artifact = jax.export.deserialize(bytearray(export.to_stablehlo(model, variables)))
    logits["jax.export"] = _batched(artifact.call, nhwc, batch_size)

    return {
        "name": weights.name,
        "model": arch.describe(),
        "published": weights.accuracy,
        "accuracy": {k: float((v.argmax(1) == labels).mean()) for k, v in logits.items()},
        "max_abs_diff": {k: float(np.abs(v - logits["torch"]).max()) for k, v in logits.items()},
        "disagreements": {
            k: int((v.argmax(1) != logits["torch"].argmax(1)).sum()) for k, v in logits.items()
        },
        "max_abs_logit": float(np.abs(logits["torch"]).max()),
    }


def to_markdown(results: list[dict], n: int, command: str) -> str:
    lines = [
        "# Published weights: jresnet, PyTorch, exported .pth, ONNX and jax.export",
        "",
        f"Generated by `{command}` on {datetime.date.today()} ({platform.processor() or 'CPU'}, "
        f"{os.cpu_count()} cores), over {n:,} test images of the JPEG copy of CIFAR-10 "
        "(JPEG quality 75: **not** official CIFAR-10 accuracies, which are the published ones).",
        "",
        "Accuracy (top-1) of each path, and in brackets the max abs logit difference from "
        "PyTorch's logits / the number of predictions that differ from PyTorch's.",
        "",
        "| weights | model | published (official test set) | " + " | ".join(PATHS) + " |",
        "|---|---|---:|" + "---:|" * len(PATHS),
    ]
    for r in results:
        cells = [
            f"{100 * r['accuracy'][p]:.2f}%"
            + ("" if p == "torch" else f" ({r['max_abs_diff'][p]:.1e} / {r['disagreements'][p]})")
            for p in PATHS
        ]
        lines.append(
            f"| `{r['name']}` | {r['model']} | {r['published']:.2f}% | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with test/<class>/*.jpg")
    parser.add_argument("--weights", default=".", help="folder with the pretrained files")
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--limit", type=int, help="evaluate a random subset of this size")
    parser.add_argument("--out", help="write the results as Markdown to this file")
    args = parser.parse_args()

    start = time.time()
    images, labels = load_test_images(args.data, args.limit)
    print(f"{len(labels):,} test images from {args.data} ({time.time() - start:.1f}s)")
    results = []
    for name in args.files:
        start = time.time()
        r = check(os.path.join(args.weights, name), images, labels, args.batch_size)
        results.append(r)
        summary = ", ".join(
            f"{p} {100 * r['accuracy'][p]:.2f}% (diff {r['max_abs_diff'][p]:.1e}, "
            f"{r['disagreements'][p]} differ)"
            for p in PATHS
        )
        print(f"{name}: {r['model']}: {summary} ({time.time() - start:.1f}s)")
    if args.out:
        # Placeholders, not this machine's paths.
        command = "python -m benchmarks.check_pretrained --data DATA --weights WEIGHTS --out OUT"
        with open(args.out, "w") as f:
            f.write(to_markdown(results, len(labels), command))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
