"""PyTorch reference implementations of the CIFAR ResNets (NCHW), for parity checks.

The network jresnet's tests compare against (same weights, same inputs: logits,
train-mode outputs, BatchNorm statistics, training steps) and the benchmarks train
as the seed did. Users can run the same checks: build ``torch_resnet(depth, shortcut)``,
copy its weights with `jresnet.torch_layouts.torch_to_flax`, and compare outputs. Needs
``torch``, an optional dependency of jresnet (extras ``test`` and ``bench``).

Two layouts, with the state-dict keys `jresnet.convert` reads and writes:

* option B, the seed's (kuangliu/pytorch-cifar style): where the shape changes
  the shortcut is ``nn.Sequential(Conv2d 1x1 stride s, BatchNorm2d)``, so its
  keys are ``layerK.i.shortcut.0.weight`` and ``layerK.i.shortcut.1.*``;
* option A, akamaster's: a parameter-free shortcut that subsamples by 2 and
  zero-pads ``planes // 4`` channels on each side.

Everything else is shared: ``conv1`` (3x3, 16 filters, no bias), ``bn1``,
``layer1..3`` of `BasicBlock` (``conv1, bn1, conv2, bn2``), global average
pooling and ``linear``. Layers use PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LambdaLayer(nn.Module):
    """Wraps a parameter-free function of the input as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def option_a(planes: int) -> LambdaLayer:
    pad = planes // 4
    return LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = option_a(planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with ``blocks_per_stage`` basic blocks in each of 3 stages."""

    def __init__(self, blocks_per_stage: int, shortcut: str = "B", num_classes: int = 10) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1, shortcut)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2, shortcut)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2, shortcut)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self.in_planes, planes, stride if i == 0 else 1, shortcut))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images ``[N, 3, H, W]`` -> logits ``[N, num_classes]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.shape[-1])
        return self.linear(out.flatten(1))


def torch_resnet(depth: int, shortcut: str = "B", num_classes: int = 10) -> ResNet:
    """The PyTorch CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
    return ResNet((depth - 2) // 6, shortcut, num_classes)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Gives every BatchNorm non-trivial weight, bias and running statistics, in place."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
