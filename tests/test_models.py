"""jresnet.models: architecture, parameter counts, initialisation, and parity with PyTorch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import models, torch_layouts
from tests.conftest import random_normal

# He et al. 2016 CIFAR ResNets as PyTorch counts them (sum of p.numel()).
PARAM_COUNTS = {
    ("B", 20): 272_474,
    ("B", 32): 466_906,
    ("B", 44): 661_338,
    ("B", 56): 855_770,
    ("B", 110): 1_730_714,
    ("B", 1202): 19_424_026,
    ("A", 20): 269_722,
    ("A", 32): 464_154,
    ("A", 44): 658_586,
    ("A", 56): 853_018,
    ("A", 110): 1_727_962,
    ("A", 1202): 19_421_274,
}
# ResNet-1202 takes seconds to trace: its cases run with the slow tests.
CASES = [
    pytest.param(s, d, id=f"resnet{d}{s}", marks=[pytest.mark.slow] if d == 1202 else [])
    for s, d in sorted(PARAM_COUNTS, key=lambda c: (c[1], c[0]))
]


def abstract_variables(model: models.ResNet, size: int = 32) -> dict:
    """Shapes of the model's variables, without allocating or initialising them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def nhwc(x_nchw) -> jax.Array:
    return jnp.asarray(x_nchw.numpy().transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------
# Architecture (no torch needed).


@pytest.mark.parametrize(("shortcut", "depth"), CASES)
def test_param_count_matches_table(shortcut: str, depth: int) -> None:
    model = models.create_model(f"resnet{depth}", shortcut=shortcut)
    assert count(abstract_variables(model)["params"]) == PARAM_COUNTS[shortcut, depth]


def test_named_constructors_and_depth_of() -> None:
    model = models.ResNet56(shortcut="A", num_classes=100)
    assert model.blocks_per_stage == 9
    assert model.num_classes == 100
    assert models.depth_of(model) == 56
    assert models.create_model("ResNet-20").blocks_per_stage == 3
    assert models.create_model("resnet8").blocks_per_stage == 1


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "resnet", "vgg16", "resnet-x", "20"])
def test_create_model_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        models.create_model(name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"shortcut": "C"}, "shortcut"), ({"weight_init": "xavier"}, "weight_init")],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    model = models.create_model("resnet8", **kwargs)
    with pytest.raises(ValueError, match=match):
        abstract_variables(model)


def test_variable_names_and_shapes() -> None:
    variables = abstract_variables(models.create_model("resnet8", shortcut="B"))
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"conv1", "bn1", "layer1_0", "layer2_0", "layer3_0", "linear"}
    assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert set(params["layer2_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn",
    }  # fmt: skip
    assert params["layer2_0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert params["layer3_0"]["conv1"]["kernel"].shape == (3, 3, 32, 64)
    assert set(params["bn1"]) == {"scale", "bias"}
    assert set(stats["layer3_0"]["shortcut_bn"]) == {"mean", "var"}
    assert params["linear"]["kernel"].shape == (64, 10)
    option_a = abstract_variables(models.create_model("resnet8", shortcut="A"))["params"]
    assert "shortcut_conv" not in option_a["layer2_0"]


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = random_normal((2, 8, 8, 16), seed=1)
    y = models.option_a_shortcut(x, planes=32)
    assert y.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., :8], 0)
    np.testing.assert_array_equal(y[..., 24:], 0)


def test_logits_shape_and_dtype() -> None:
    model = models.create_model("resnet8", num_classes=100)
    x = jnp.ones((3, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (3, 100)
    assert logits.dtype == jnp.float32


# --------------------------------------------------------------------------
# Initialisation.


def _conv_kernels(params: dict) -> list[np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [np.asarray(v) for path, v in flat if path[-1].key == "kernel" and v.ndim == 4]


def test_pytorch_init_distribution() -> None:
    model = models.create_model("resnet8", shortcut="B", weight_init="pytorch")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    for kernel in _conv_kernels(params):
        bound = 1 / math.sqrt(math.prod(kernel.shape[:3]))  # fan_in = kh * kw * in
        assert np.abs(kernel).max() <= bound
        if kernel.size >= 9000:  # enough samples for a tight std estimate
            assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    for kernel in jax.tree.leaves(params["linear"]):
        assert np.abs(kernel).max() <= 1 / math.sqrt(64)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    bn_values = {"scale": 1, "mean": 0, "var": 1}
    bn_checked = 0
    for path, value in flat:
        names = [p.key for p in path]
        if "bn" in names[-2]:  # bn1, bn2, shortcut_bn
            expected = bn_values.get(names[-1], 0)  # bias: 0
            np.testing.assert_array_equal(value, expected, err_msg="/".join(names))
            bn_checked += 1
    assert bn_checked == 4 * 9  # 7 BN layers + 2 shortcut BNs in ResNet-8 option B


def test_he_normal_init_distribution() -> None:
    model = models.create_model("resnet8", shortcut="A", weight_init="he_normal")
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    checked = 0
    for kernel in _conv_kernels(params):
        if kernel.size >= 9000:
            fan_in = math.prod(kernel.shape[:3])
            assert kernel.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
            assert abs(kernel.mean()) < 0.05 * math.sqrt(2 / fan_in)
            checked += 1
    assert checked == 3  # layer2_0.conv2, layer3_0.conv1, layer3_0.conv2
    # The classifier bias keeps PyTorch's default in both inits.
    assert np.abs(params["linear"]["bias"]).max() <= 1 / math.sqrt(64)


_JAXLIB = tuple(int(part) for part in jax.lib.__version__.split(".")[:2])


# Seen on jaxlib 0.11.2 and 0.12.0.1 (not 0.10.2, which CI runs): XLA:CPU gives NaN logits
# for the jitted bf16 eval forward pass (finite without jit); the smallest trigger found is
# the stride-2 stage followed by the spatial mean. Not a jresnet bug we could fix; recorded
# here so that the failure is visible, not silent.
@pytest.mark.xfail(
    _JAXLIB >= (0, 11) and jax.default_backend() == "cpu",
    reason="XLA:CPU of jaxlib >= 0.11 gives NaN for the jitted bf16 forward pass",
    strict=False,
)
def test_bfloat16_forward_close_to_float32() -> None:
    x = random_normal((4, 32, 32, 3), seed=2)
    f32 = models.create_model("resnet8")
    variables = jax.jit(f32.init)(jax.random.key(0), x)
    bf16 = models.create_model("resnet8", dtype=jnp.bfloat16)
    bf16_variables = jax.eval_shape(bf16.init, jax.random.key(0), x)
    assert jax.tree.structure(bf16_variables) == jax.tree.structure(variables)
    ref = jax.jit(f32.apply)(variables, x)
    out = jax.jit(bf16.apply)(variables, x)
    assert out.dtype == jnp.float32
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(out - ref).max()) < 0.05 * scale
    np.testing.assert_array_equal(jnp.argmax(out, -1), jnp.argmax(ref, -1))


# --------------------------------------------------------------------------
# Parity with the PyTorch reference (jresnet.testing.torch_reference).


@pytest.mark.parametrize(("shortcut", "depth"), CASES)
def test_param_count_matches_torch(shortcut: str, depth: int) -> None:
    torch = pytest.importorskip("torch")
    from jresnet.testing.torch_reference import torch_resnet

    with torch.device("meta"):  # shapes only: no memory, no init
        reference = torch_resnet(depth, shortcut)
    assert sum(p.numel() for p in reference.parameters()) == PARAM_COUNTS[shortcut, depth]


def _random_torch_model(shortcut: str, depth: int = 20, seed: int = 0):
    torch = pytest.importorskip("torch")
    from jresnet.testing.torch_reference import randomize_batchnorm, torch_resnet

    torch.manual_seed(seed)
    reference = torch_resnet(depth, shortcut)
    randomize_batchnorm(reference)
    x = torch.randn(8, 3, 32, 32)
    return reference, x


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_eval_logits_match_torch(shortcut: str) -> None:
    torch = pytest.importorskip("torch")
    reference, x = _random_torch_model(shortcut)
    reference.eval()
    with torch.no_grad():
        expected = reference(x).numpy()
    variables = torch_layouts.torch_to_flax(reference.state_dict())
    model = models.create_model("resnet20", shortcut=shortcut)
    logits = np.asarray(model.apply(variables, nhwc(x), train=False))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def _batchnorm_sizes(depth: int, batch: int) -> dict[str, int]:
    """Values per channel that each BN layer of the PyTorch model sees at 32x32 input."""
    sizes = {"bn1": batch * 32 * 32}
    for stage, side in ((1, 32), (2, 16), (3, 8)):
        for i in range((depth - 2) // 6):
            for bn in ("bn1", "bn2", "shortcut.1"):
                sizes[f"layer{stage}.{i}.{bn}"] = batch * side * side
    return sizes


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_train_forward_and_running_stats_match_torch(shortcut: str) -> None:
    """One train-mode step: same logits, and the same running mean and *unbiased* variance."""
    torch = pytest.importorskip("torch")
    reference, x = _random_torch_model(shortcut, seed=1)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    variables = torch_layouts.torch_to_flax(before)
    reference.train()  # PyTorch's default momentum 0.1
    with torch.no_grad():
        expected = reference(x).numpy()
    after = {k: v.numpy() for k, v in reference.state_dict().items()}

    model = models.create_model("resnet20", shortcut=shortcut)
    logits, updates = model.apply(variables, nhwc(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)
    ours = torch_layouts.flax_to_torch({"params": variables["params"], **updates})

    sizes = _batchnorm_sizes(20, batch=x.shape[0])
    checked = 0
    for key, value in after.items():
        if not key.endswith(("running_mean", "running_var")):
            continue
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        assert not np.allclose(value, before[key].numpy()), f"{key} did not change"
        if key.endswith("running_var"):
            # The tolerance is tight enough to tell the unbiased update from the
            # biased one (what flax.linen.BatchNorm would store).
            n = sizes[key.removesuffix(".running_var")]
            old = before[key].numpy()
            biased = 0.9 * old + (value - 0.9 * old) * (n - 1) / n
            assert np.abs(ours[key] - value).max() < np.abs(biased - value).max() / 10, key
        checked += 1
    assert checked == 2 * sum(1 for k in after if k.endswith("running_var"))


def test_option_a_shortcut_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    from jresnet.testing.torch_reference import option_a

    x = torch.randn(2, 16, 8, 8)
    expected = option_a(32)(x).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(models.option_a_shortcut(nhwc(x), 32), expected)
