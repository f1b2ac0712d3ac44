"""Training and evaluation: the train state, pure step functions, and the loop.

The recipe is the seed's PyTorch one, operation for operation:

* ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))`` is
  PyTorch's ``SGD(lr, momentum, weight_decay=wd)``: coupled L2 on every
  parameter (BN scale/bias and biases included), heavy-ball momentum with no
  dampening, and the first momentum buffer equal to the first gradient.
* Softmax cross-entropy averaged over the batch.
* BatchNorm running statistics as PyTorch keeps them (see `jresnet.models`).
* One difference, by design: the last partial batch of each (shuffled) epoch is
  dropped, so every step has the same shape (390 steps per epoch on 50,000
  images at batch 128, where PyTorch's DataLoader makes 391 with a last batch
  of 80).

Step functions are pure (state in, state out) and take ``axis_name``: None
under `jax.jit`; a device axis name under `jax.pmap` or `shard_map`, where
gradients, metrics and BatchNorm statistics are averaged over that axis.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jresnet import checkpoint, input_pipeline, models, parallel, reporting
from jresnet.errors import ConfigError, TrainingDivergedError

SCHEDULES = ("cosine_epoch", "cosine", "multistep", "constant")
# Config keys that change the training trajectory (a resume with other values warns).
RECIPE_KEYS = (
    "train_split",
    "batch_size",
    "num_epochs",
    "learning_rate",
    "momentum",
    "weight_decay",
    "schedule",
    "lr_boundaries",
    "warmup_steps",
    "warmup_learning_rate",
    "augment",
    "normalization",
    "seed",
)
DTYPES = ("float32", "bfloat16")


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


# --------------------------------------------------------------------------
# Learning rate and optimizer.


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (0-based).

    * ``cosine_epoch`` (the seed's ``CosineAnnealingLR(T_max=num_epochs)`` stepped
      once per epoch): ``lr * (1 + cos(pi * epoch / num_epochs)) / 2`` with
      ``epoch = step // steps_per_epoch``.
    * ``cosine``: the same per step, over ``num_epochs * steps_per_epoch`` steps.
    * ``multistep`` (the paper's): ``lr`` divided by 10 at each of
      ``lr_boundaries`` (in steps), after ``warmup_steps`` at
      ``warmup_learning_rate``.
    * ``constant``.

    Cosines are evaluated as ``lr * sin((pi - x) / 2) ** 2``, equal to
    ``lr * (1 + cos x) / 2``, so float32 keeps full relative precision near the
    end of the schedule where the rate is tiny.
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
        boundaries = jnp.asarray(tuple(config.lr_boundaries), jnp.int32)
        warmup_steps = config.warmup_steps
        warmup_lr = config.warmup_learning_rate

        def schedule(step):
            passed = jnp.sum(step >= boundaries)
            lr = base * jnp.power(0.1, passed)
            return jnp.where(step < warmup_steps, warmup_lr, lr)

    elif config.schedule == "constant":

        def schedule(step):
            return jnp.full((), base, jnp.float32) + 0 * step

    else:
        raise ConfigError(f"unknown schedule {config.schedule!r}: choose one of {SCHEDULES}")
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


# --------------------------------------------------------------------------
# Step functions.


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
      ``(new_state, metrics)`` with metrics ``loss``, ``accuracy`` (batch means)
      and ``learning_rate`` (the one this step used).
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

    grads, (logits, new_batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    # jax.grad of the mean loss; recompute the loss value cheaply from the logits.
    loss = cross_entropy_loss(logits, batch["label"])
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


def make_train_fn(
    model: models.ResNet,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    augment: bool,
    mesh: Mesh,
    steps_per_call: int = 1,
    unroll: int | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted driver: ``(state, images_uint8, labels, base_key) -> (state, metrics)``.

    Runs ``K = steps_per_call`` consecutive steps in one call:
    ``images_uint8 [K, B, 32, 32, 3]`` and ``labels [K, B]`` hold K global
    batches, sharded over ``mesh`` along B (`parallel.global_batch` with
    ``batch_axis=1``); ``state`` is replicated; metrics come back ``[K]``.
    Each step augments (or only normalises) its whole global batch from
    ``fold_in(base_key, state.step)``, so crops and flips depend neither on the
    device count nor on K; then `train_step` runs on each device's shard under
    `jax.shard_map`, averaging over the ``"batch"`` axis.

    The K steps are a `lax.scan` unrolled K times: one dispatch per K steps and
    no XLA while loop (convolutions inside XLA:CPU loops are ~20x slower; even a
    length-1 scan is a loop, so K = 1 calls the step directly). ``unroll`` (default: K)
    unrolls fewer steps, e.g. 1 for a rolled loop where loops are cheap (GPUs).
    ``state`` is donated: its buffers are reused.
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

    def run(state, images, labels, base_key):
        def one_step(state, batch):
            images, labels = batch
            if augment:
                key = jax.random.fold_in(base_key, state.step)
                x = input_pipeline.augment(key, images, mean, std)
            else:
                x = input_pipeline.normalize(images, mean, std)
            return sharded_step(state, {"image": x, "label": labels})

        if steps_per_call == 1:  # a length-1 scan would still lower to a while loop
            state, metrics = one_step(state, (images[0], labels[0]))
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(one_step, state, (images, labels), unroll=unroll or steps_per_call)

    return jax.jit(run, donate_argnums=0)


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

    ``batch_size`` is rounded up to a multiple of the device count; the last
    batch is padded and masked, so each example counts exactly once.
    """
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


# --------------------------------------------------------------------------
# Config checks.


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` with an actionable message for any unusable value."""
    problems = []
    try:
        models.create_model(config.model)
    except ValueError as e:
        problems.append(f"--config.model: {e}")
    if config.shortcut not in ("A", "B"):
        problems.append(f'--config.shortcut must be "A" or "B", got {config.shortcut!r}')
    if config.weight_init not in models.KERNEL_INITS:
        problems.append(
            f"--config.weight_init must be one of {sorted(models.KERNEL_INITS)}, "
            f"got {config.weight_init!r}"
        )
    if config.dataset not in input_pipeline.DATASETS:
        problems.append(
            f"--config.dataset must be one of {sorted(input_pipeline.DATASETS)}, "
            f"got {config.dataset!r}"
        )
    if config.normalization not in input_pipeline.NORMALIZATIONS:
        problems.append(
            f"--config.normalization must be one of {sorted(input_pipeline.NORMALIZATIONS)}, "
            f"got {config.normalization!r}"
        )
    if config.dtype not in DTYPES:
        problems.append(f"--config.dtype must be one of {DTYPES}, got {config.dtype!r}")
    if config.schedule not in SCHEDULES:
        problems.append(f"--config.schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    for key in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps", "steps_per_call"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"--config.{key} must be a positive integer, got {value!r}")
    for key in ("learning_rate", "momentum", "weight_decay"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            problems.append(f"--config.{key} must be a finite number >= 0, got {value!r}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def prepare_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and returns its absolute path; clear errors otherwise."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir {workdir!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} can't be created: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r} is not writable")
    return path


# --------------------------------------------------------------------------
# Initial weights.


def load_initial_variables(
    config: ml_collections.ConfigDict, template: Mapping[str, Any]
) -> dict[str, Any]:
    """Variables for ``--config.init_from``: a PyTorch checkpoint file or a jresnet workdir.

    ``template`` (freshly initialised variables) fixes the expected structure;
    any difference in names or shapes is an error that names them.
    """
    source = os.path.expanduser(config.init_from)
    if os.path.isdir(source):
        variables, saved = checkpoint.load_variables(source)
        checkpoint.check_compatible(saved, config, source)
    elif os.path.isfile(source):
        from jresnet import convert  # needs torch, an optional dependency

        state_dict = convert.load_torch_checkpoint(source)
        variables = convert.torch_to_flax(state_dict, shortcut=config.shortcut)
    else:
        raise ConfigError(
            f"--config.init_from {config.init_from!r} is neither a PyTorch checkpoint file "
            "nor a jresnet work directory"
        )
    expected = jax.tree.map(np.shape, dict(template))
    got = jax.tree.map(np.shape, dict(variables))
    if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
        raise ConfigError(
            f"--config.init_from {config.init_from!r} does not fit --config.model="
            f"{config.model} shortcut={config.shortcut} dataset={config.dataset}: "
            "the variable names or shapes differ"
        )
    return jax.tree.map(jnp.asarray, dict(variables))


# --------------------------------------------------------------------------
# The loop.


def _restore_or_init(
    config: ml_collections.ConfigDict,
    workdir: str,
    manager: Any,
    state: TrainState,
    mesh: Mesh,
) -> TrainState:
    """The state to start from, replicated over ``mesh``: the latest checkpoint, else
    ``init_from``'s weights, else ``state`` (freshly initialised)."""
    sharding = parallel.replicated(mesh)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state.to_dict()
    )
    latest = manager.latest_step()
    if latest is not None and "opt_state" not in checkpoint.saved_state_keys(manager, latest):
        raise checkpoint.CheckpointError(
            f"{workdir} holds converted weights, not a training run; start training from "
            f"them with --config.init_from={workdir} and another --workdir"
        )
    restored = checkpoint.restore_latest(manager, target=target, config=config)
    if restored is not None:
        step, state_dict, saved_config = restored
        reporting.info(f"Resuming from the checkpoint at step {step} in {manager.directory}")
        as_saved = lambda v: list(v) if isinstance(v, tuple) else v  # JSON has no tuples
        changed = [
            f"{key} {saved_config.get(key)!r} -> {config.get(key)!r}"
            for key in RECIPE_KEYS
            if saved_config.get(key) != as_saved(config.get(key))
        ]
        if changed:
            reporting.info(
                "warning: the recipe differs from the checkpoint's, so this run will not "
                "match an uninterrupted one: " + ", ".join(changed)
            )
        return TrainState.from_dict(state_dict)
    if config.init_from:
        variables = load_initial_variables(
            config, {"params": state.params, "batch_stats": state.batch_stats}
        )
        reporting.info(f"Initialised from {config.init_from}")
        state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    return parallel.replicate(state, mesh)


def _throughput(
    steps: int, compile_steps: int, batch_size: int, seconds: float, compile_seconds: float
) -> float:
    """Images/s of an epoch, leaving out the calls that compiled (if any others ran)."""
    if steps > compile_steps:
        steps, seconds = steps - compile_steps, seconds - compile_seconds
    return steps * batch_size / max(seconds, 1e-9)


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_finite(metrics: Mapping[str, float], epoch: int, step: int) -> None:
    if not math.isfinite(metrics["loss"]):
        raise TrainingDivergedError(
            f"loss is {metrics['loss']} at epoch {epoch + 1}, step {step}: training diverged. "
            "The checkpoints saved so far are intact; lower --config.learning_rate or check "
            "the data."
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: input_pipeline.Splits | None = None,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates each epoch.

    ``data`` holds the training and eval splits; None reads ``config.train_split`` and
    ``config.eval_split`` of ``config.dataset`` from ``config.data_dir``.

    Runs data-parallel over every device of every process (`jresnet.parallel`);
    call `parallel.initialize_distributed` first for several processes.

    Returns the final summary: ``final_eval_accuracy``, ``best_eval_accuracy``,
    ``best_epoch``, ``epochs``, ``steps``, ``wall_time_s``.
    """
    start_time = time.time()
    validate_config(config)
    mesh = parallel.create_mesh()
    try:
        parallel.check_divisible(config.batch_size, "--config.batch_size", mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    workdir = prepare_workdir(workdir)
    if config.eval_only:
        return _evaluate_only(config, workdir, mesh)

    data_dir = config.data_dir or None
    mean, std = input_pipeline.NORMALIZATIONS[config.normalization]
    if data is None:
        eval_images, eval_labels = input_pipeline.load_split(
            config.dataset, config.eval_split, data_dir
        )
        train_images, train_labels = input_pipeline.load_split(
            config.dataset, config.train_split, data_dir
        )
    else:
        train_images, train_labels = data.train_images, data.train_labels
        eval_images, eval_labels = data.eval_images, data.eval_labels
    num_train = len(train_labels)
    steps_per_epoch = input_pipeline.steps_per_epoch(num_train, config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
    tx = create_optimizer(config, learning_rate_fn)

    model = checkpoint.model_from_config(config)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(init_key, model, tx)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    manager = checkpoint.create_manager(workdir, keep=config.checkpoints_to_keep)
    state = _restore_or_init(config, workdir, manager, state, mesh)
    start_step = int(parallel.to_host(state.step))
    start_epoch = start_step // steps_per_epoch
    if start_step % steps_per_epoch:
        raise checkpoint.CheckpointError(
            f"the checkpoint at step {start_step} is not at an epoch boundary of "
            f"{steps_per_epoch} steps: was --config.batch_size or --config.train_split changed?"
        )

    log = reporting.MetricsLog(workdir, start_epoch)
    reporting.info(
        f"{config.model} (shortcut {config.shortcut}, {num_params:,} params) on {config.dataset} "
        f"{config.train_split} ({num_train:,} images), eval on {config.eval_split} "
        f"({len(eval_labels):,}); {config.num_epochs} epochs x {steps_per_epoch} steps of "
        f"{config.batch_size}; {mesh.size} {jax.devices()[0].platform} device(s) in "
        f"{jax.process_count()} process(es); workdir {workdir}"
    )
    train_fns: dict[int, Callable[..., Any]] = {}  # by steps per call; the last may be shorter

    def train_fn(k):
        if k not in train_fns:
            train_fns[k] = make_train_fn(
                model, tx, learning_rate_fn, mean, std, config.augment, mesh, k
            )
        return train_fns[k]

    eval_fn = make_eval_fn(model, mean, std, mesh)
    progress = reporting.Progress(total_steps, start_step, config.batch_size)

    def host_mean(sums, steps):
        return {k: float(parallel.to_host(v)) / steps for k, v in sums.items()}

    summary: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, config.num_epochs):
            epoch_start = time.time()
            compile_time, compile_steps = 0.0, 0
            sums = None
            batches = input_pipeline.train_batches(
                train_images, train_labels, config.batch_size, config.seed, epoch
            )
            done = 0
            for chunk in _chunks(batches, config.steps_per_call):
                stacked = [np.stack(arrays) for arrays in zip(*chunk, strict=True)]
                images, labels = parallel.global_batch(stacked, mesh, batch_axis=1)
                first_call = len(chunk) not in train_fns
                call_start = time.time()
                state, metrics = train_fn(len(chunk))(state, images, labels, train_key)
                if first_call:  # compiles: time it, and keep it out of the throughput
                    jax.block_until_ready(state)
                    compile_time += time.time() - call_start
                    compile_steps += len(chunk)
                    reporting.info(
                        f"compiled {len(chunk)} train step(s) per call and ran them in "
                        f"{time.time() - call_start:.1f}s"
                    )
                    progress.restart(int(parallel.to_host(state.step)))
                lr = metrics.pop("learning_rate")[-1]
                metrics = {k: v.sum() for k, v in metrics.items()}
                sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
                logged_before = done // config.log_every_steps
                done += len(chunk)
                if done // config.log_every_steps > logged_before and done < steps_per_epoch:
                    current = host_mean(sums, done)
                    current["learning_rate"] = float(parallel.to_host(lr))
                    _check_finite(current, epoch, done)
                    progress.update(epoch, config.num_epochs, done, steps_per_epoch, current)
            train_metrics = host_mean(sums, steps_per_epoch)
            _check_finite(train_metrics, epoch, steps_per_epoch)
            epoch_time = time.time() - epoch_start
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            eval_metrics = evaluate(
                eval_fn, variables, eval_images, eval_labels, config.eval_batch_size, mesh
            )
            step = int(parallel.to_host(state.step))
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": train_metrics["loss"],
                "train_accuracy": train_metrics["accuracy"],
                "learning_rate": float(parallel.to_host(lr)),  # of the epoch's last step
                **eval_metrics,
                # Throughput of the steps whose calls did not compile.
                "images_per_s": _throughput(
                    steps_per_epoch, compile_steps, config.batch_size, epoch_time, compile_time
                ),
                "epoch_time_s": epoch_time,
            }
            metric = {"eval_accuracy": eval_metrics["eval_accuracy"]}
            checkpoint.save(manager, step, state.to_dict(), config, metric)
            log.write(record)
            progress.epoch_done(record, config.num_epochs)
        summary = log.summary(time.time() - start_time)
        reporting.info(reporting.format_summary(summary))
        log.plot()
    finally:
        log.close()
        manager.close()
    return summary


def _evaluate_only(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """``--config.eval_only``: eval metrics of the latest checkpoint in ``workdir``.

    If ``workdir`` has no checkpoints, ``--config.init_from`` (a jresnet work
    directory or a PyTorch checkpoint file) is evaluated instead. A jresnet
    checkpoint is evaluated with its own saved model, dataset and normalisation;
    the split, data_dir and batch size come from the current config.
    """
    source = workdir
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)) and config.init_from:
        source = os.path.expanduser(config.init_from)
    if os.path.isdir(source):
        variables, saved = checkpoint.load_variables(source)
        model_config = config.copy_and_resolve_references()
        for key in (*checkpoint.ARCHITECTURE_KEYS, "weight_init", "dtype", "normalization"):
            if key in saved:
                model_config[key] = saved[key]
    else:
        model_config = config
        template = jax.eval_shape(
            lambda: checkpoint.model_from_config(config).init(
                jax.random.key(0), jnp.zeros((1, 32, 32, 3))
            )
        )
        variables = load_initial_variables(config, template)
    mean, std = input_pipeline.NORMALIZATIONS[model_config.normalization]
    eval_fn = make_eval_fn(checkpoint.model_from_config(model_config), mean, std, mesh)
    images, labels = input_pipeline.load_split(
        model_config.dataset, config.eval_split, config.data_dir or None
    )
    variables = parallel.replicate(variables, mesh)
    metrics = evaluate(eval_fn, variables, images, labels, config.eval_batch_size, mesh)
    reporting.info(
        f"{source}: {model_config.model} (shortcut {model_config.shortcut}) on "
        f"{model_config.dataset} {config.eval_split}: accuracy "
        f"{100 * metrics['eval_accuracy']:.2f}% ({metrics['eval_count']:,} images), "
        f"loss {metrics['eval_loss']:.4f}"
    )
    print(json.dumps(metrics), file=sys.stdout, flush=True)
    return metrics
