"""The train state and the pure step functions: one SGD step, one eval batch, and their
jitted, data-parallel drivers.

The recipe is the seed's PyTorch one, operation for operation:

* ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))`` is
  PyTorch's ``SGD(lr, momentum, weight_decay=wd)``: coupled L2 on every
  parameter (BN scale/bias and biases included), heavy-ball momentum with no
  dampening, and the first momentum buffer equal to the first gradient.
* Softmax cross-entropy averaged over the batch.
* BatchNorm running statistics as PyTorch keeps them (see `jresnet.models`).

Step functions are pure (state in, state out) and take ``axis_name``: None
under `jax.jit`; a device axis name under `jax.pmap` or `shard_map`, where
gradients, metrics and BatchNorm statistics are averaged over that axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jresnet import input_pipeline, models, parallel
from jresnet.errors import ConfigError


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: a pytree, so it passes through jit/pmap.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: model parameters, float32.
      batch_stats: BatchNorm running means and (unbiased) variances.
      opt_state: optax state (the momentum buffer).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "opt_state": self.opt_state,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainState:
        return cls(
            step=d["step"],
            params=d["params"],
            batch_stats=d["batch_stats"],
            opt_state=d["opt_state"],
        )


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (0-based).

    * ``cosine_epoch`` (the seed's ``CosineAnnealingLR(T_max=num_epochs)`` stepped
      once per epoch): ``lr * (1 + cos(pi * epoch / num_epochs)) / 2`` with
      ``epoch = step // steps_per_epoch``.
    * ``cosine``: the same per step, over ``num_epochs * steps_per_epoch`` steps.
    * ``multistep`` (the paper's): ``lr * 0.1 ** (number of lr_boundaries <= step)``,
      after ``warmup_steps`` at ``warmup_learning_rate`` (`optax.piecewise_constant_schedule`).
    * ``constant``: ``lr``.

    Cosines are evaluated as ``lr * sin((pi - x) / 2) ** 2``, equal to
    ``lr * (1 + cos x) / 2``, so float32 keeps full relative precision near the
    end of the schedule where the rate is tiny (optax's ``cosine_decay_schedule``
    computes ``1 + cos x``, which loses it, and has no per-epoch variant).
    """
    base = config.learning_rate
    num_epochs = config.num_epochs
    total_steps = num_epochs * steps_per_epoch

    if config.schedule == "cosine_epoch":

        def schedule(step):
            epoch = step // steps_per_epoch
            return base * jnp.square(jnp.sin(0.5 * jnp.pi * (num_epochs - epoch) / num_epochs))

    elif config.schedule == "cosine":

        def schedule(step):
            return base * jnp.square(jnp.sin(0.5 * jnp.pi * (total_steps - step) / total_steps))

    elif config.schedule == "multistep":
        # optax's piecewise schedule scales at step >= boundary, as PyTorch's MultiStepLR.
        scales = {int(b): 0.1 for b in config.lr_boundaries}
        if config.warmup_steps > 0:  # warm-up rate first, then the base rate
            scales[config.warmup_steps] = base / config.warmup_learning_rate
            return optax.piecewise_constant_schedule(config.warmup_learning_rate, scales)
        return optax.piecewise_constant_schedule(base, scales)

    elif config.schedule == "constant":
        return optax.constant_schedule(base)

    else:
        raise ConfigError(f"unknown schedule {config.schedule!r}")
    return schedule


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """PyTorch's ``SGD(lr, momentum, weight_decay)``: coupled L2, then heavy-ball momentum."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=False),
    )


def create_train_state(
    key: jax.Array, model: models.ResNet, tx: optax.GradientTransformation
) -> TrainState:
    """Initialises parameters (from ``key``), BN statistics and optimizer state."""
    variables = jax.jit(model.init, static_argnames="train")(
        key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )


def all_finite(tree: Any) -> jax.Array:
    """Bool scalar: no leaf of ``tree`` holds a NaN or an infinity."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; ``logits [B, C]`` float, ``labels [B]`` int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a batch; pure, so it runs under jit, pmap and shard_map alike.

    Args:
      state: the current `TrainState`.
      batch: ``"image"`` float NHWC ``[B, 32, 32, 3]`` (normalised, augmented)
        and ``"label"`` int ``[B]``; under ``axis_name``, this device's shard.
      model: the network; its ``axis_name`` is replaced by this one.
      tx: the optimizer; ``learning_rate_fn`` only feeds the metrics.
      axis_name: device axis to average gradients, metrics and BatchNorm batch
        statistics over (synchronised BatchNorm), or None for one device.

    Returns:
      ``(new_state, metrics)`` with metrics ``loss``, ``accuracy`` (batch means),
      ``learning_rate`` (the one this step used) and ``finite`` (bool: every value of
      ``new_state`` is finite).
    """
    model = model.clone(axis_name=axis_name)

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = cross_entropy_loss(logits, batch["label"])
        return loss, (logits, new_model_state["batch_stats"])

    (loss, (logits, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
    metrics = {"loss": loss, "accuracy": accuracy}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    metrics["learning_rate"] = learning_rate_fn(state.step)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        batch_stats=new_batch_stats,
        opt_state=new_opt_state,
    )
    # Under jit, NaN weights can still give finite logits and loss: check the state itself.
    metrics["finite"] = all_finite(new_state)
    return new_state, metrics


def eval_step(
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    model: models.ResNet,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """Sums of loss and correct predictions over the real (``mask``-ed) examples of a batch.

    ``batch``: ``"image"`` float NHWC, ``"label"`` int ``[B]``, ``"mask"`` ``[B]``
    (1 for real examples, 0 for padding). Returns ``loss_sum``, ``correct`` and
    ``count``, summed over ``axis_name`` when given, so that a whole split's
    metrics are exact whatever the batch and device count.
    """
    logits = model.apply(dict(variables), batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    sums = {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, axis=-1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """The training split on the device(s), where the driver of `make_train_fn` reads its
    batches from (`parallel.shard_rows` places it).

    Attributes:
      num_examples: the split's real rows (padding rows follow them on the devices).
      batch_size: the global batch; an epoch is ``num_examples // batch_size`` steps.

    The order of the rows comes with each call (its ``order_key``), not from here: the
    compiled driver is the same for every seed.
    """

    num_examples: int
    batch_size: int


def _fused(
    one_step: Callable[..., Any],
    state: TrainState,
    xs: Any,
    steps_per_call: int,
    unroll: int | None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``steps_per_call`` applications of ``one_step(state, x)`` as a `lax.scan` over ``xs``
    (None: no per-step input), unrolled ``unroll`` (default: all) times; metrics ``[K]``.

    Unrolled fully, there is no XLA while loop: convolutions inside XLA:CPU loops are far
    slower (see ``benchmarks/RESULTS.md``), and even a length-1 scan is a loop, so K = 1
    calls the step directly.
    """
    if steps_per_call == 1:
        state, metrics = one_step(state, jax.tree.map(lambda x: x[0], xs))
        return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(one_step, state, xs, length=steps_per_call, unroll=unroll or steps_per_call)


def _gather_rows(
    images: jax.Array, labels: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Under `jax.shard_map`: this device's block of the global batch ``split[index]``.

    ``images [R, ...]`` and ``labels [R]`` are this device's block of rows of the split
    (rows ``d*R .. d*R + R - 1`` on device ``d``); ``index [B]`` (the same on every device)
    are rows of the whole split. Each device takes the rows it holds (zeros elsewhere), a
    ``psum`` adds those contributions up, exactly (one is non-zero per row; int32, which every
    backend's all-reduce takes, also across processes), and device ``d`` keeps rows
    ``d*B/D .. (d+1)*B/D - 1`` of the batch. On one device this is a plain gather.
    """
    rows = images.shape[0]
    device = jax.lax.axis_index(parallel.BATCH_AXIS)
    local = index - device * rows
    mine = (local >= 0) & (local < rows)
    local = jnp.where(mine, local, 0)
    batch_images = jnp.where(mine[:, None, None, None], images[local], 0).astype(jnp.int32)
    batch_labels = jnp.where(mine, labels[local], 0).astype(jnp.int32)
    batch_images, batch_labels = jax.lax.psum((batch_images, batch_labels), parallel.BATCH_AXIS)
    block = index.shape[0] // jax.lax.axis_size(parallel.BATCH_AXIS)
    start = device * block
    batch_images = jax.lax.dynamic_slice_in_dim(batch_images, start, block)
    batch_labels = jax.lax.dynamic_slice_in_dim(batch_labels, start, block)
    return batch_images.astype(images.dtype), batch_labels.astype(labels.dtype)


def make_train_fn(
    *,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    augment: bool,
    mesh: Mesh,
    steps_per_call: int = 1,
    unroll: int | None = None,
    split: DeviceSplit | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted driver: ``(state, images_uint8, labels, base_key) -> (state, metrics)``;
    with a `DeviceSplit`, ``(state, images_uint8, labels, base_key, order_key)``.

    Runs ``K = steps_per_call`` consecutive steps in one call; ``state`` is replicated and
    donated (its buffers are reused); metrics come back ``[K]``. Where the batches come from:

    * ``split=None`` (the benchmarks and checks): the call brings them.
      ``images_uint8 [K, B, 32, 32, 3]`` and ``labels [K, B]`` hold K global batches,
      sharded over ``mesh`` along B (`parallel.global_batch` with ``batch_axis=1``).
    * A `DeviceSplit` (training): ``images_uint8 [N', 32, 32, 3]`` and ``labels [N']`` are
      the whole training split (``split.num_examples`` real rows, then padding), sharded
      over ``mesh`` along the rows (`parallel.shard_rows`); they go to the device(s) once
      per run and are not donated. The K steps run from optimizer step ``s = state.step``
      on, all inside one epoch of ``steps_per_epoch = num_examples // batch_size`` steps:
      epoch ``e = s // steps_per_epoch``. Inside the call, the epoch's order is
      ``input_pipeline.epoch_permutation(order_key, e, num_examples)`` (``order_key``:
      ``input_pipeline.data_order_key(seed)``, an argument, so that one compiled driver
      serves every seed) and each step's
      global batch is the next ``batch_size`` entries of it, gathered from the devices that
      hold them (`_gather_rows`): the batches `input_pipeline.train_batches` makes on the
      host, whatever the device or process count, and a function of the step alone, so a
      run resumed mid-epoch continues exactly. The host does no per-call work beyond the
      dispatch.

    Each step augments (or only normalises) its whole global batch from
    ``fold_in(base_key, state.step)``, so crops and flips depend neither on the device
    count nor on K; then `train_step` runs on each device's shard under `jax.shard_map`,
    averaging over the ``"batch"`` axis. The K steps are a `lax.scan` unrolled ``unroll``
    (default: K) times (`_fused`): one dispatch per K steps and, unrolled fully, no XLA
    while loop; ``unroll=1`` gives a rolled loop, for where loops are cheap (GPUs).
    """
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        learning_rate_fn=learning_rate_fn,
        axis_name=parallel.BATCH_AXIS,
    )
    # check_vma=False gives shard_map pmap's semantics, which train_step is written
    # for: gradients are per-device and averaged by its explicit pmean. With
    # check_vma=True, gradients of replicated (invariant) parameters would come
    # back already summed over the axis, and the pmean would not average them.
    sharded_step = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(P(), P(parallel.BATCH_AXIS)),
        out_specs=(P(), P()),
        check_vma=False,
    )

    def global_step(state, images, labels, base_key):
        if augment:
            key = jax.random.fold_in(base_key, state.step)
            x = input_pipeline.augment(key, images, mean, std)
        else:
            x = input_pipeline.normalize(images, mean, std)
        return sharded_step(state, {"image": x, "label": labels})

    if split is None:

        def run(state, images, labels, base_key):
            def one_step(state, batch):
                return global_step(state, *batch, base_key)

            return _fused(one_step, state, (images, labels), steps_per_call, unroll)

        return jax.jit(run, donate_argnums=0)

    steps_per_epoch = input_pipeline.steps_per_epoch(split.num_examples, split.batch_size)
    gather = jax.shard_map(
        _gather_rows,
        mesh=mesh,
        in_specs=(P(parallel.BATCH_AXIS), P(parallel.BATCH_AXIS), P()),
        out_specs=(P(parallel.BATCH_AXIS), P(parallel.BATCH_AXIS)),
        check_vma=False,
    )

    def run_on_split(state, split_images, split_labels, base_key, order_key):
        epoch = state.step // steps_per_epoch
        order = input_pipeline.epoch_permutation(order_key, epoch, split.num_examples)

        def one_step(state, _):
            start = (state.step % steps_per_epoch) * split.batch_size
            index = jax.lax.dynamic_slice(order, (start,), (split.batch_size,))
            images, labels = gather(split_images, split_labels, index)
            return global_step(state, images, labels, base_key)

        return _fused(one_step, state, None, steps_per_call, unroll)

    return jax.jit(run_on_split, donate_argnums=0)


def make_eval_fn(
    model: models.ResNet,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    mesh: Mesh,
) -> Callable[..., dict[str, jax.Array]]:
    """The jitted driver: ``(variables, images_uint8, labels, mask) -> sums`` over the mesh."""
    step = functools.partial(eval_step, model=model, axis_name=parallel.BATCH_AXIS)
    sharded_step = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(parallel.BATCH_AXIS)), out_specs=P(), check_vma=False
    )

    def run(variables, images, labels, mask):
        x = input_pipeline.normalize(images, mean, std)
        return sharded_step(variables, {"image": x, "label": labels, "mask": mask})

    return jax.jit(run)


def evaluate(
    eval_fn: Callable[..., dict[str, jax.Array]],
    variables: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mesh: Mesh,
) -> dict[str, float]:
    """Loss and accuracy over every example of a split, on every device of ``mesh``.

    ``batch_size`` is capped at the split's size and rounded up to a multiple of the
    device count; the last batch is padded and masked, so each example counts once.
    """
    # No bigger than the split: a huge --config.eval_batch_size must not pad it to that size.
    batch_size = min(batch_size, max(len(labels), 1))
    batch_size = -(-batch_size // mesh.size) * mesh.size
    totals = None
    for batch in input_pipeline.eval_batches(images, labels, batch_size):
        sums = eval_fn(variables, *parallel.global_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(parallel.to_host(v)) for k, v in totals.items()}
    count = max(totals["count"], 1.0)
    return {
        "eval_loss": totals["loss_sum"] / count,
        "eval_accuracy": totals["correct"] / count,
        "eval_count": int(totals["count"]),
    }
