"""A PyTorch reproduction of the seed's CIFAR-10 training, the benchmark's reference.

The seed (kuangliu/pytorch-cifar adapted to ResNet-20) trains, eagerly and in NCHW:

* ResNet-20 with option B shortcuts (`jresnet.testing.torch_reference`, the network the
  parity tests check jresnet against): ``conv1`` 3x3/16 without bias, ``bn1``, three
  stages ``layer1..3`` of 3 `BasicBlock` each (16/32/64 planes; stages 2 and 3 start
  with stride 2; a 1x1 convolution + BatchNorm shortcut where the shape changes),
  ``avg_pool2d`` over the whole map and a ``linear`` classifier;
* on a ``Dataset`` that applies torchvision's ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()`` and ``Normalize(mean, std)`` to each
  sample, batched by ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``;
* with ``SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)`` and cross-entropy.

torchvision can't be installed next to this torch, so the four transforms are
re-implemented here, per sample, with torchvision's semantics and random draws
(``torch.randint`` for the crop offsets, ``torch.rand(1) < 0.5`` for the flip), so
DataLoader's per-worker seeding applies to them as it does to torchvision's.

``channels_last=True`` gives the variant with model and inputs in
``torch.channels_last`` memory format.

Standalone use (a few steps on random data, or on arrays from an ``.npz``)::

    python benchmarks/torch_seed.py --steps 20 [--channels-last] [--data train.npz]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from jresnet.testing import torch_reference

SEED_MEAN = (0.4914, 0.4822, 0.4465)
SEED_STD = (0.2023, 0.1994, 0.2010)
BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


# --------------------------------------------------------------------------------------------
# Model.


def resnet20() -> nn.Module:
    """The seed's ResNet-20, option B (272,474 parameters): the parity tests' reference."""
    return torch_reference.torch_resnet(20, "B")


# --------------------------------------------------------------------------------------------
# Per-sample transforms (torchvision semantics, on HWC uint8 numpy images).


class RandomCrop:
    """``RandomCrop(size, padding)``: zero-pad every side, crop ``size`` at a uniform offset."""

    def __init__(self, size: int, padding: int) -> None:
        self.size = size
        self.padding = padding

    def __call__(self, image: np.ndarray) -> np.ndarray:
        p = self.padding
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))  # constant fill 0
        height, width = padded.shape[:2]
        # torchvision's RandomCrop.get_params draws the row, then the column.
        top = int(torch.randint(0, height - self.size + 1, size=(1,)).item())
        left = int(torch.randint(0, width - self.size + 1, size=(1,)).item())
        return padded[top : top + self.size, left : left + self.size]


class RandomHorizontalFlip:
    """``RandomHorizontalFlip(p)``: mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if torch.rand(1) < self.p:
            return image[:, ::-1]
        return image


class ToTensor:
    """``ToTensor()``: HWC uint8 in 0..255 to a CHW float32 tensor in [0, 1]."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return tensor.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class Normalize:
    """``Normalize(mean, std)``: per channel ``(x - mean) / std`` of a CHW tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.sub_(self.mean).div_(self.std)


class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x


def train_transform() -> Compose:
    """The seed's training transform."""
    return Compose(
        [
            RandomCrop(32, padding=4),
            RandomHorizontalFlip(),
            ToTensor(),
            Normalize(SEED_MEAN, SEED_STD),
        ]
    )


def test_transform() -> Compose:
    """The seed's test transform."""
    return Compose([ToTensor(), Normalize(SEED_MEAN, SEED_STD)])


class CifarArrays(torch.utils.data.Dataset):
    """CIFAR from in-memory arrays: uint8 ``[N, 32, 32, 3]`` images and int ``[N]`` labels."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | np.ndarray, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def train_loader(
    images: np.ndarray, labels: np.ndarray, num_workers: int = 2
) -> torch.utils.data.DataLoader:
    """The seed's training loader: batch 128, shuffled, 2 worker processes."""
    dataset = CifarArrays(images, labels, train_transform())
    return torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers
    )


# --------------------------------------------------------------------------------------------
# Training.


class SeedTrainer:
    """The seed's model, loss and optimizer, and its training step.

    Args:
      channels_last: put the model (and each input batch) in ``torch.channels_last``.
      seed: ``torch.manual_seed`` for the initial weights.
    """

    def __init__(self, channels_last: bool = False, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.channels_last = channels_last
        self.model = resnet20()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=LEARNING_RATE,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
        )

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input batch in the trainer's memory format."""
        if self.channels_last:
            return inputs.to(memory_format=torch.channels_last)
        return inputs

    def step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; returns ``(loss, outputs)`` (still tensors: no host sync)."""
        self.model.train()
        inputs = self.prepare(inputs)
        self.optimizer.zero_grad()
        outputs = self.model(inputs)
        loss = self.criterion(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return loss, outputs

    def train_batches(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[float, int, int]]:
        """The seed's epoch loop body: per batch, yields ``(loss, correct, total)``.

        As the seed does for its progress bar, ``loss.item()`` and the count of correct
        predictions are read back after every step.
        """
        for inputs, targets in batches:
            loss, outputs = self.step(inputs, targets)
            _, predicted = outputs.max(1)
            yield loss.item(), int(predicted.eq(targets).sum().item()), targets.size(0)

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised NCHW batch in inference mode (BN running statistics)."""
        self.model.eval()
        return self.model(self.prepare(inputs))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--data", help=".npz with uint8 'images' [N,32,32,3] and 'labels' [N]")
    args = parser.parse_args()

    trainer = SeedTrainer(channels_last=args.channels_last)
    print(f"ResNet-20 option B, {count_parameters(trainer.model):,} parameters")
    if args.data:
        with np.load(args.data) as data:
            images, labels = data["images"], data["labels"]
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.steps * BATCH_SIZE, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, len(images))
    loader = train_loader(images, labels)
    start = time.perf_counter()
    seen = correct_sum = 0
    loss = float("nan")
    for i, (batch_loss, correct, total) in enumerate(trainer.train_batches(iter(loader))):
        loss = batch_loss
        seen += total
        correct_sum += correct
        if i + 1 >= args.steps:
            break
    elapsed = time.perf_counter() - start
    print(
        f"{i + 1} steps, last loss {loss:.4f}, accuracy {correct_sum / seen:.3f}, "
        f"{seen / elapsed:.1f} img/s (including DataLoader start-up)"
    )


if __name__ == "__main__":
    _main()
