"""benchmarks/run.py: the model facts its report rests on, checked against the model itself.

The benchmark's timings are not tested (no timing asserts); what is tested is that the
FLOP count and the inventory of ResNet-20's convolutions it weights its per-step
totals by are ResNet-20's, and that the totals add up as the report says.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from jresnet import models

RUN_PY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "run.py")


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _conv_kernels(model: models.ResNet) -> collections.Counter:
    """(kernel, c_in, c_out) -> how many convolution kernels of that shape the model has."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    kernels = collections.Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
        if len(leaf.shape) == 4 and path[-1].key == "kernel":
            kh, _, c_in, c_out = leaf.shape
            kernels[(kh, c_in, c_out)] += 1
    return kernels


def test_convolution_inventory_is_resnet20s(run):
    inventory = collections.Counter()
    for shape in run.RESNET20_CONVS:
        inventory[(shape.kernel, shape.c_in, shape.c_out)] += shape.count
    assert inventory == _conv_kernels(models.ResNet20())
    assert sum(shape.count for shape in run.RESNET20_CONVS) == 21


def test_convolution_flops_add_up_to_the_model_macs(run):
    conv_macs = sum(s.count * s.flop() / 2 / run.BATCH for s in run.RESNET20_CONVS)
    assert conv_macs + 64 * 10 == run.resnet20_macs()
    # 40.81 M MACs per image forward, as the issue and the report state.
    assert round(run.resnet20_macs() / 1e6, 2) == 40.81


def test_conv_totals_weight_each_convolution_by_its_count(run):
    ms = {
        shape.label: {"fwd": 1.0, "dw": 3.0, **({"dx": 2.0} if shape.has_dx else {})}
        for shape in run.RESNET20_CONVS
    }
    totals = run.conv_totals(ms)
    assert totals["fwd"] == 21.0
    assert totals["dx"] == 2.0 * 20  # the first convolution has no input gradient
    assert totals["dw"] == 63.0
    assert totals["all"] == 21.0 + 40.0 + 63.0


def test_convolution_report_shows_totals_beside_the_whole_step(run):
    ms = {shape.label: {"fwd": 1.0, "dx": 1.0, "dw": 1.0} for shape in run.RESNET20_CONVS}
    runs = {"convs-jax": [{"ms": ms}, {"ms": ms}], "convs-torch-cl": [{"error": "exit 1"}]}
    img = {"step-jax-fused": {"median": 640.0}}
    text = "\n".join(run.render_convs(runs, img))
    assert "| **per training step: all convolutions** | **63.0** |" in text
    assert "| whole step (section 1), ms | 200.0 |" in text
    assert "torch channels_last" not in text  # a configuration with no result is left out
