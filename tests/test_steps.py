"""jresnet.steps: schedules, optimizer and steps against PyTorch; the fused driver."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jresnet import input_pipeline, models, parallel, steps
from jresnet.configs import default
from jresnet.testing import driver_setup

torch = pytest.importorskip("torch")

from jresnet import torch_layouts  # noqa: E402  (needs torch)
from jresnet.testing import stablehlo_loops, torch_reference  # noqa: E402
from tests.conftest import random_normal  # noqa: E402


def _config(**overrides):
    config = default.get_config()
    config.update(overrides)
    return config


def _torch_lrs(scheduler_factory, base_lr, num_calls, steps_between=1):
    """Learning rates PyTorch uses, sampled once per optimizer step."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    scheduler = scheduler_factory(opt)
    lrs = []
    for call in range(num_calls):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (call + 1) % steps_between == 0:
            scheduler.step()
    return np.array(lrs)


def test_cosine_epoch_schedule_matches_torch_cosine_annealing_stepped_per_epoch():
    epochs, steps_per_epoch = 20, 3
    lr_fn = steps.create_learning_rate_fn(
        _config(schedule="cosine_epoch", num_epochs=epochs), steps_per_epoch
    )
    expected = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        0.1,
        epochs * steps_per_epoch,
        steps_between=steps_per_epoch,
    )
    ours = np.array([lr_fn(s) for s in range(epochs * steps_per_epoch)])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
    assert ours[0] == pytest.approx(0.1) and ours[steps_per_epoch - 1] == pytest.approx(0.1)


def test_seed_schedule_values_for_200_epochs():
    lr_fn = steps.create_learning_rate_fn(_config(), steps_per_epoch=390)
    for epoch in (0, 1, 50, 100, 199):
        expected = 0.05 * (1 + np.cos(np.pi * epoch / 200))
        assert float(lr_fn(epoch * 390 + 17)) == pytest.approx(expected, rel=1e-5)


def test_cosine_per_step_schedule_matches_torch():
    epochs, steps_per_epoch = 4, 5
    total = epochs * steps_per_epoch
    lr_fn = steps.create_learning_rate_fn(
        _config(schedule="cosine", num_epochs=epochs), steps_per_epoch
    )
    expected = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total), 0.1, total
    )
    np.testing.assert_allclose([lr_fn(s) for s in range(total)], expected, rtol=1e-5, atol=1e-7)


def test_multistep_schedule_matches_torch_with_warmup():
    config = _config(schedule="multistep", lr_boundaries=(30, 45), warmup_steps=4, num_epochs=6)
    lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=10)
    expected = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 45], gamma=0.1),
        0.1,
        60,
    )
    expected[:4] = 0.01  # the paper's warm-up for ResNet-110
    np.testing.assert_allclose([lr_fn(s) for s in range(60)], expected, rtol=1e-5)


def test_paper_schedule_boundaries():
    from jresnet.configs import paper

    lr_fn = steps.create_learning_rate_fn(paper.get_config(), steps_per_epoch=351)
    assert float(lr_fn(31999)) == pytest.approx(0.1)
    assert float(lr_fn(32000)) == pytest.approx(0.01)
    assert float(lr_fn(48000)) == pytest.approx(0.001)


def _torch_sgd_run(torch_model, images_nchw, labels, lrs):
    """The seed's loop: SGD(momentum=0.9, weight_decay=1e-4), one lr per step."""
    opt = torch.optim.SGD(torch_model.parameters(), lr=lrs[0], momentum=0.9, weight_decay=1e-4)
    torch_model.train()
    for x, y, lr in zip(images_nchw, labels, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch_model(x), y)
        loss.backward()
        opt.step()


@pytest.fixture
def float64():
    """Runs a test with jax_enable_x64, so both frameworks compute in float64."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _sgd_steps_both(shortcut, num_steps, dtype):
    """Our train_step and PyTorch's SGD loop from the same weights on the same batches.

    Returns ``(ours, theirs)``: variables as nested dicts of numpy arrays.
    """
    torch.manual_seed(0)
    torch_model = torch_reference.torch_resnet(8, shortcut).to(getattr(torch, dtype))
    variables = torch_layouts.torch_to_flax(torch_model.state_dict(), shortcut=shortcut)

    rng = np.random.default_rng(0)
    batch = 16
    images = rng.normal(size=(num_steps, batch, 32, 32, 3)).astype(dtype)
    labels = rng.integers(0, 10, size=(num_steps, batch))
    config = _config(schedule="cosine_epoch", num_epochs=4, shortcut=shortcut)
    lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=1)  # lr changes every step
    tx = steps.create_optimizer(config, lr_fn)

    model = models.create_model("resnet8", shortcut=shortcut, dtype=jnp.dtype(dtype))
    as_jax = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
    params = as_jax(variables["params"])
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=as_jax(variables["batch_stats"]),
        opt_state=tx.init(params),
    )
    step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, tx=tx, learning_rate_fn=lr_fn))
    for x, y in zip(images, labels, strict=True):
        state, _ = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(y)})
    assert int(state.step) == num_steps

    _torch_sgd_run(
        torch_model,
        torch.from_numpy(images.transpose(0, 1, 4, 2, 3).copy()),
        torch.from_numpy(labels),
        [float(lr_fn(s)) for s in range(num_steps)],
    )
    ours = {"params": state.params, "batch_stats": state.batch_stats}
    theirs = {k: v.double().numpy() for k, v in torch_model.state_dict().items()}
    ours_as_torch = torch_layouts.flax_to_torch(jax.tree.map(np.asarray, ours))
    return ours_as_torch, theirs


def _max_abs_diff(ours, theirs):
    return {
        key: float(np.max(np.abs(np.asarray(ours[key], np.float64) - theirs[key])))
        for key in theirs
        if not key.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_three_sgd_steps_equal_pytorch_in_float64(shortcut, float64):
    """Same weights, same batches, no augmentation: params and BN statistics agree after 3 steps.

    In float64 both are exact to ~6e-8 (the float32 round trip of the
    converter); in float32 rounding alone is amplified by lr 0.1 to ~1e-4 after
    3 steps, which would hide real differences of that size.
    """
    diffs = _max_abs_diff(*_sgd_steps_both(shortcut, num_steps=3, dtype="float64"))
    assert max(diffs.values()) < 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_one_sgd_step_equals_pytorch_in_float32(shortcut):
    diffs = _max_abs_diff(*_sgd_steps_both(shortcut, num_steps=1, dtype="float32"))
    assert max(diffs.values()) < 5e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_optimizer_is_coupled_weight_decay_then_momentum():
    """Two steps on a quadratic-free toy: update = -lr * (m * buf + g + wd * p)."""
    config = _config(weight_decay=0.5, momentum=0.9)
    tx = steps.create_optimizer(config, optax.constant_schedule(0.1))
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.3, 0.1])}
    opt_state = tx.init(p)
    buf = np.zeros(2)
    p_np = np.array([1.0, -2.0])
    for _ in range(2):
        updates, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, updates)
        buf = 0.9 * buf + (np.array([0.3, 0.1]) + 0.5 * p_np)
        p_np = p_np - 0.1 * buf
    np.testing.assert_allclose(p["w"], p_np, rtol=1e-6)


def test_eval_step_counts_only_masked_examples():
    model = models.create_model("resnet8")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    x = random_normal((4, 32, 32, 3), seed=1)
    labels = jnp.array([0, 1, 2, 3])
    full = steps.eval_step(
        variables, {"image": x, "label": labels, "mask": jnp.ones(4)}, model=model
    )
    half = steps.eval_step(
        variables, {"image": x, "label": labels, "mask": jnp.array([1, 1, 0, 0])}, model=model
    )
    assert float(full["count"]) == 4 and float(half["count"]) == 2
    logits = model.apply(variables, x[:2])
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:2]).sum()
    assert float(half["loss_sum"]) == pytest.approx(float(expected_loss), rel=1e-5)


def _fresh_state(args):
    """The state every driver test starts from, new (drivers donate it) and replicated over
    the mesh of ``args`` (`driver_setup.resnet8`)."""
    state = steps.create_train_state(jax.random.key(0), args["model"], args["tx"])
    return parallel.replicate(state, args["mesh"])


@pytest.mark.slow
def test_several_steps_per_call_equal_single_steps():
    """K fused steps (unrolled scan) = K calls of one step, augmentation included."""
    # 2 steps per epoch: the learning rate changes inside a call of 4 steps.
    args = driver_setup.resnet8(steps_per_epoch=2, devices=jax.devices()[:1])
    mesh = args["mesh"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (4, 8)).astype(np.int32)
    key = jax.random.key(3)

    def run(steps_per_call):
        fn = steps.make_train_fn(**args, steps_per_call=steps_per_call)
        state = _fresh_state(args)
        losses = []
        for start in range(0, 4, steps_per_call):
            chunk = (images[start : start + steps_per_call], labels[start : start + steps_per_call])
            state, metrics = fn(state, *parallel.global_batch(chunk, mesh, batch_axis=1), key)
            losses.extend(np.asarray(metrics["loss"]))
        return state, np.array(losses)

    single, single_losses = run(1)
    fused, fused_losses = run(4)
    assert int(fused.step) == int(single.step) == 4
    np.testing.assert_allclose(fused_losses, single_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_split_driver_takes_the_batches_train_batches_makes():
    """The driver that reads the split on the device gathers, from ``state.step``, the
    batches `input_pipeline.train_batches` makes on the host: across an epoch boundary, one
    or several steps per call, it trains like the driver fed with those batches."""
    n, batch_size, seed = 26, 8, 5  # 3 steps per epoch, 2 examples dropped each epoch
    args = driver_setup.resnet8(steps_per_epoch=3, devices=jax.devices()[:1])
    mesh = args["mesh"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    key = jax.random.key(3)

    fed = steps.make_train_fn(**args)
    state = _fresh_state(args)
    fed_losses = []
    for epoch in range(2):
        for batch in input_pipeline.train_batches(images, labels, batch_size, seed, epoch):
            batch = parallel.global_batch([x[None] for x in batch], mesh, batch_axis=1)
            state, metrics = fed(state, *batch, key)
            fed_losses.append(float(metrics["loss"][0]))

    def split_run(calls):  # calls: steps per call, in order (within epochs of 3 steps)
        device_split = steps.DeviceSplit(n, batch_size)
        drivers = {
            size: steps.make_train_fn(**args, steps_per_call=size, split=device_split)
            for size in set(calls)
        }
        split = parallel.shard_rows(images, mesh), parallel.shard_rows(labels, mesh)
        order_key = input_pipeline.data_order_key(seed)
        split_state = _fresh_state(args)
        losses = []
        for size in calls:
            split_state, metrics = drivers[size](split_state, *split, key, order_key)
            losses.extend(np.asarray(metrics["loss"]).tolist())
        return split_state, losses

    for calls in ([1] * 6, [2, 1, 1, 2]):  # [1, 2] per epoch: resumes mid-epoch
        split_state, losses = split_run(calls)
        assert int(split_state.step) == 6
        np.testing.assert_allclose(losses, fed_losses, rtol=1e-5)
        for a, b in zip(
            jax.tree.leaves(split_state.params), jax.tree.leaves(state.params), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _rolled_scan_of_a_convolution() -> str:
    def f(x, w):
        step = lambda c, _: (jax.lax.conv(c, w, (1, 1), "SAME"), None)
        return jax.lax.scan(step, x, None, length=1)[0]

    return jax.jit(f).lower(jnp.zeros((1, 2, 8, 8)), jnp.zeros((2, 2, 3, 3))).as_text()


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_train_driver_has_no_convolution_in_a_while_loop(steps_per_call):
    """Convolutions inside an XLA:CPU while loop run far slower (benchmarks/RESULTS.md).

    (The random-bit generator has small while loops of its own; they are fine.)"""
    assert (
        stablehlo_loops.convolutions_in_while_loops(_rolled_scan_of_a_convolution()) == 1
    )  # detector works
    args = driver_setup.resnet8(steps_per_epoch=2, devices=jax.devices()[:1])
    fn = steps.make_train_fn(**args, steps_per_call=steps_per_call)
    split_fn = steps.make_train_fn(
        **args, steps_per_call=steps_per_call, split=steps.DeviceSplit(40, 8)
    )
    state = jax.eval_shape(
        lambda: steps.create_train_state(jax.random.key(0), args["model"], args["tx"])
    )
    images = jax.ShapeDtypeStruct((steps_per_call, 8, 32, 32, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((steps_per_call, 8), jnp.int32)
    split_images = jax.ShapeDtypeStruct((40, 32, 32, 3), jnp.uint8)
    split_labels = jax.ShapeDtypeStruct((40,), jnp.int32)
    for hlo in (
        fn.lower(state, images, labels, jax.random.key(1)).as_text(),
        split_fn.lower(
            state, split_images, split_labels, jax.random.key(1), jax.random.key(2)
        ).as_text(),
    ):
        assert stablehlo_loops.convolutions_in_while_loops(hlo) == 0
        assert hlo.count("stablehlo.convolution") >= steps_per_call * 7  # forward convs, each step
