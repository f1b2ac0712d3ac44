"""ResNet-20's facts the report rests on: its FLOP count and its convolutions.

Checked against the model itself by tests/test_benchmarks.py.
"""

from __future__ import annotations

import dataclasses

from benchmarks.configs import BATCH


def resnet20_macs() -> int:
    """Multiply-accumulates of one ResNet-20 (option B) forward pass on a 32x32 image."""
    macs = 32 * 32 * 16 * 3 * 9  # conv1
    size, in_planes = 32, 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            s = stride if block == 0 else 1
            size_out = size // s
            macs += size_out * size_out * planes * in_planes * 9  # conv1
            macs += size_out * size_out * planes * planes * 9  # conv2
            if s != 1 or in_planes != planes:
                macs += size_out * size_out * planes * in_planes  # 1x1 shortcut
            size, in_planes = size_out, planes
    return macs + 64 * 10  # linear


TRAIN_FLOP_PER_IMAGE = 3 * 2 * resnet20_macs()  # forward + backward = 3x forward, 2 FLOP/MAC


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One distinct convolution of ResNet-20 (option B) at batch 128; ``count``: how many."""

    label: str
    size: int  # input height = width
    c_in: int
    c_out: int
    kernel: int  # 3 (padding 1) or 1 (no padding)
    stride: int
    count: int
    has_dx: bool = True  # the first convolution's input gradient is never computed

    def flop(self) -> float:
        """FLOP of one pass (forward, input gradient or weight gradient): 2 per MAC."""
        out = self.size // self.stride
        return 2.0 * BATCH * out * out * self.c_out * self.c_in * self.kernel**2


RESNET20_CONVS = (
    ConvShape("conv1 3x3 3->16, 32x32", 32, 3, 16, 3, 1, 1, has_dx=False),
    ConvShape("3x3 16->16, 32x32", 32, 16, 16, 3, 1, 6),
    ConvShape("3x3 16->32 stride 2, 32x32", 32, 16, 32, 3, 2, 1),
    ConvShape("1x1 16->32 stride 2 (shortcut)", 32, 16, 32, 1, 2, 1),
    ConvShape("3x3 32->32, 16x16", 16, 32, 32, 3, 1, 5),
    ConvShape("3x3 32->64 stride 2, 16x16", 16, 32, 64, 3, 2, 1),
    ConvShape("1x1 32->64 stride 2 (shortcut)", 16, 32, 64, 1, 2, 1),
    ConvShape("3x3 64->64, 8x8", 8, 64, 64, 3, 1, 5),
)
CONV_PASSES = ("fwd", "dx", "dw")  # forward, input gradient, weight gradient


def conv_totals(ms: dict[str, dict[str, float]]) -> dict[str, float]:
    """Count-weighted sums over ResNet-20's convolutions: ms per training step, per pass.

    ``ms`` maps each `ConvShape` label to ``{pass: milliseconds}``; the result has one
    total per pass in `CONV_PASSES` and their sum under "all".
    """
    totals = {
        name: sum(shape.count * ms[shape.label].get(name, 0.0) for shape in RESNET20_CONVS)
        for name in CONV_PASSES
    }
    totals["all"] = sum(totals.values())
    return totals
