"""The CIFAR ResNets of He et al. 2016, Sec. 4.2, in Flax linen.

Conventions
-----------
* Inputs are float NHWC ``[N, 32, 32, 3]`` (already normalised); outputs are
  logits ``[N, num_classes]``. PyTorch code is NCHW: `jresnet.convert`
  transposes weights between the two.
* Every layer has exactly PyTorch's semantics, so converted PyTorch weights give
  the same logits (see ``tests/test_models.py``):

  - 3x3 convolutions pad ``((1, 1), (1, 1))`` explicitly. XLA's ``"SAME"`` would
    pad a stride-2 convolution ``(0, 1)``, unlike PyTorch's ``padding=1``.
  - No convolution bias; the classifier ``Dense`` has one.
  - 3x3 convolutions go through `jresnet.conv.conv_general_dilated`: lax's, except
    that on CPU the input gradient of the stride-2 ones is computed by phases (faster;
    equal up to float rounding).
  - `BatchNorm` uses ``epsilon=1e-5`` and ``momentum=0.9`` in Flax's convention
    (``new = 0.9 * old + 0.1 * batch``), i.e. PyTorch's ``momentum=0.1``, and
    updates the running variance with the *unbiased* batch variance as PyTorch
    does (Flax's own ``nn.BatchNorm`` uses the biased one).

* Variables are ``{"params", "batch_stats"}``. ``train=True`` normalises with
  batch statistics and needs ``mutable=["batch_stats"]``.
* ``axis_name``: when the model runs under ``jax.pmap``/``shard_map`` with a named
  device axis, BatchNorm averages its batch statistics over that axis
  (synchronised BatchNorm, like PyTorch's ``SyncBatchNorm``). ``None`` (default)
  means per-device statistics, correct under plain ``jax.jit``.

Parameter names mirror PyTorch's: ``conv1``, ``bn1``, ``layer{1,2,3}_{i}`` with
``conv1``/``bn1``/``conv2``/``bn2`` and, for option B, ``shortcut_conv``/``shortcut_bn``
(PyTorch ``shortcut.0``/``shortcut.1``), and ``linear``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jresnet import conv, datasets

Shortcut = Literal["A", "B"]
WeightInit = Literal["pytorch", "he_normal"]
Array = jax.Array

STAGE_WIDTHS = (16, 32, 64)
DEPTHS = (20, 32, 44, 56, 110, 1202)


def _torch_default_kernel_init() -> Callable[..., Array]:
    """PyTorch's default conv/linear weight init: kaiming_uniform(a=sqrt(5)).

    That is U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + 5)),
    so b = 1 / sqrt(fan_in): variance scaling with scale 1/3, uniform.
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _he_normal_kernel_init() -> Callable[..., Array]:
    """He et al. 2015 (the paper's init): N(0, 2 / fan_in), untruncated."""
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _torch_default_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


KERNEL_INITS: dict[str, Callable[[], Callable[..., Array]]] = {
    "pytorch": _torch_default_kernel_init,
    "he_normal": _he_normal_kernel_init,
}


class BatchNorm(nn.Module):
    """BatchNorm over the last (channel) axis with PyTorch's exact semantics.

    Normalises with the biased batch variance (as PyTorch and Flax both do) and
    updates the running variance with the unbiased one, ``var * n / (n - 1)``
    where ``n`` is the number of values per channel over the whole (global,
    when ``axis_name`` is set) batch -- PyTorch's ``BatchNorm2d`` and
    ``SyncBatchNorm`` behaviour. Statistics are computed in float32 whatever
    ``dtype`` is; variance is two-pass (mean first), not ``E[x^2] - E[x]^2``.

    Attributes:
      momentum: Flax convention, ``running = momentum * running + (1 - momentum) *
        batch``. PyTorch's ``momentum=0.1`` is ``0.9`` here.
      epsilon: added to the variance, PyTorch's ``eps``.
      axis_name: device axis to average batch statistics over, or None.
      dtype: dtype of the output.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        # Statistics in float32 at least (float64 when the model runs in float64).
        stat_dtype = jnp.promote_types(self.dtype, jnp.float32)
        if train:
            xf = x.astype(stat_dtype)
            reduce_axes = tuple(range(x.ndim - 1))
            count = math.prod(x.shape[:-1])
            mean = jnp.mean(xf, axis=reduce_axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axis=reduce_axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                unbiased_var = var * (count / jnp.maximum(count - 1, 1))
                running_mean.value = m * running_mean.value + (1 - m) * mean
                running_var.value = m * running_var.value + (1 - m) * unbiased_var
        else:
            mean, var = running_mean.value, running_var.value
        mul = jax.lax.rsqrt(var + self.epsilon) * scale
        y = (x.astype(stat_dtype) - mean) * mul + bias
        return y.astype(self.dtype)


def _conv3x3(features: int, stride: int, weight_init: WeightInit, dtype: Any, name: str) -> nn.Conv:
    # `conv.conv_general_dilated` is lax's, with a cheaper input gradient for stride 2 on CPU.
    return nn.Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=KERNEL_INITS[weight_init](),
        dtype=dtype,
        conv_general_dilated=conv.conv_general_dilated,
        name=name,
    )


def option_a_shortcut(x: Array, planes: int) -> Array:
    """The paper's option A: subsample by 2, zero-pad ``planes // 4`` channels per side.

    ``x`` is NHWC ``[N, H, W, planes // 2]``; the result is ``[N, H/2, W/2, planes]``.
    Equal to akamaster's ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``.
    """
    pad = planes // 4
    return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Attributes:
      planes: output channels.
      stride: stride of the first convolution (1 or 2).
      shortcut: "A" (parameter-free zero padding) or "B" (1x1 conv + BN) where
        the shape changes; identity elsewhere in both.
    """

    planes: int
    stride: int = 1
    shortcut: Shortcut = "B"
    weight_init: WeightInit = "pytorch"
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        norm = functools.partial(BatchNorm, axis_name=self.axis_name, dtype=self.dtype)
        out = _conv3x3(self.planes, self.stride, self.weight_init, self.dtype, "conv1")(x)
        out = nn.relu(norm(name="bn1")(out, train))
        out = _conv3x3(self.planes, 1, self.weight_init, self.dtype, "conv2")(out)
        out = norm(name="bn2")(out, train)

        residual = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            if self.shortcut == "A":
                residual = option_a_shortcut(x, self.planes)
            else:
                residual = nn.Conv(
                    self.planes,
                    (1, 1),
                    strides=(self.stride, self.stride),
                    padding="VALID",
                    use_bias=False,
                    kernel_init=KERNEL_INITS[self.weight_init](),
                    dtype=self.dtype,
                    name="shortcut_conv",
                )(x)
                residual = norm(name="shortcut_bn")(residual, train)
        return nn.relu(out + residual.astype(out.dtype))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6 * blocks_per_stage + 2``.

    3x3 conv (16) - BN - ReLU, three stages of ``blocks_per_stage`` basic blocks
    with 16/32/64 filters on 32x32/16x16/8x8 maps (stages 2 and 3 start with
    stride 2), global average pooling, and a Dense layer to ``num_classes``.

    Attributes:
      blocks_per_stage: ``n`` in the paper (3 for ResNet-20).
      num_classes: number of logits.
      shortcut: "B" (default, the seed's: 1x1 conv + BN projection where the
        shape changes) or "A" (the paper's and akamaster's: zero padding).
      weight_init: "pytorch" (default: PyTorch's kaiming_uniform(a=sqrt(5)) for conv
        and linear weights, as the seed) or "he_normal" (the paper's
        N(0, 2/fan_in)). Linear bias is PyTorch's default in both; BN scale 1,
        bias 0.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters, BN
        statistics and logits stay float32 (float64 if dtype is float64).
      axis_name: device axis for synchronised BatchNorm, or None.
      normalization: the name of the input normalisation its weights were trained with
        (a key of the normalisation table: "cifar", "imagenet", "cifar100"), or None if
        unknown. Not used by ``__call__`` (inputs arrive normalised); it travels with the
        model so that `jresnet.predict.predict` can normalise uint8 images for it.
    """

    blocks_per_stage: int
    num_classes: int = 10
    shortcut: Shortcut = "B"
    weight_init: WeightInit = "pytorch"
    dtype: Any = jnp.float32
    axis_name: str | None = None
    normalization: str | None = None

    def setup_checks(self) -> None:
        if self.shortcut not in ("A", "B"):
            raise ValueError(f'shortcut must be "A" or "B", got {self.shortcut!r}')
        if self.weight_init not in KERNEL_INITS:
            raise ValueError(
                f"weight_init must be one of {sorted(KERNEL_INITS)}, got {self.weight_init!r}"
            )
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps NHWC images ``[N, H, W, 3]`` to float32 logits ``[N, num_classes]``."""
        self.setup_checks()
        if x.ndim != 4:
            raise ValueError(f"expected NHWC input [N, 32, 32, 3], got shape {x.shape}")
        x = x.astype(self.dtype)
        x = _conv3x3(STAGE_WIDTHS[0], 1, self.weight_init, self.dtype, "conv1")(x)
        x = nn.relu(BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name="bn1")(x, train))
        for stage, planes in enumerate(STAGE_WIDTHS, start=1):
            for i in range(self.blocks_per_stage):
                stride = 2 if stage > 1 and i == 0 else 1
                x = BasicBlock(
                    planes,
                    stride,
                    self.shortcut,
                    self.weight_init,
                    self.dtype,
                    self.axis_name,
                    name=f"layer{stage}_{i}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        fan_in = x.shape[-1]
        x = nn.Dense(
            self.num_classes,
            kernel_init=KERNEL_INITS[self.weight_init](),
            bias_init=_torch_default_bias_init(fan_in),
            dtype=self.dtype,
            name="linear",
        )(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def _named(depth: int) -> Callable[..., ResNet]:
    n = (depth - 2) // 6

    def constructor(
        num_classes: int = 10,
        shortcut: Shortcut = "B",
        dtype: Any = jnp.float32,
        axis_name: str | None = None,
        weight_init: WeightInit = "pytorch",
    ) -> ResNet:
        return ResNet(
            blocks_per_stage=n,
            num_classes=num_classes,
            shortcut=shortcut,
            weight_init=weight_init,
            dtype=dtype,
            axis_name=axis_name,
        )

    constructor.__name__ = constructor.__qualname__ = f"ResNet{depth}"
    constructor.__doc__ = (
        f"ResNet-{depth} for CIFAR ({n} blocks per stage). See `ResNet` for the arguments."
    )
    return constructor


ResNet20 = _named(20)
ResNet32 = _named(32)
ResNet44 = _named(44)
ResNet56 = _named(56)
ResNet110 = _named(110)
ResNet1202 = _named(1202)


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Builds a model from its name, e.g. ``create_model("resnet20", shortcut="A")``.

    Any depth ``6n + 2`` is accepted (``resnet8`` is handy in tests).
    """
    key = name.lower().replace("-", "")
    depth_str = key.removeprefix("resnet")
    if not key.startswith("resnet") or not depth_str.isdigit():
        raise ValueError(
            f"unknown model {name!r}: expected 'resnet<depth>' with depth = 6n + 2, "
            f"e.g. one of {', '.join(f'resnet{d}' for d in DEPTHS)}"
        )
    depth = int(depth_str)
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"unknown model {name!r}: CIFAR ResNet depth must be 6n + 2 with n >= 1 "
            f"(8, 14, 20, 32, ...), got {depth}"
        )
    return ResNet(blocks_per_stage=(depth - 2) // 6, **kwargs)


def depth_of(model: ResNet) -> int:
    """Number of weighted layers, ``6 * blocks_per_stage + 2``."""
    return 6 * model.blocks_per_stage + 2


def from_config(config: Mapping[str, Any], axis_name: str | None = None) -> ResNet:
    """The model a run's config (or a checkpoint's saved config) describes.

    Reads ``model``, ``dataset`` (for the class count), ``shortcut`` and, if present,
    ``weight_init``, ``dtype`` and ``normalization``.
    """
    return create_model(
        config["model"],
        num_classes=datasets.get(config["dataset"]).num_classes,
        shortcut=config["shortcut"],
        weight_init=config.get("weight_init", "pytorch"),
        dtype=jnp.dtype(config.get("dtype", "float32")),
        axis_name=axis_name,
        normalization=config.get("normalization"),
    )
