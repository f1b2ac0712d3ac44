"""The training loop: epochs of fused steps, then eval, metrics and a checkpoint per epoch.

`train_and_evaluate` sets a run up (model, optimizer, the state to start from, the training
split on the device(s)), then calls `train_epoch` and `end_epoch` for each epoch. The step
functions are in `jresnet.steps`; checkpoints in `jresnet.checkpoint`; what the user sees in
`jresnet.reporting`.

One difference from the seed, by design: the last partial batch of each (shuffled) epoch is
dropped, so every step has the same shape (390 steps per epoch on 50,000 images at batch
128, where PyTorch's DataLoader makes 391 with a last batch of 80).

A run can stop cleanly: SIGTERM (what clusters send before preemption) or a first Ctrl-C
stops it at the next call boundary, saves a checkpoint there and exits with
`errors.EXIT_INTERRUPTED`; rerunning the same command resumes exactly, inside the epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jresnet import (
    checkpoint,
    datasets,
    evaluate,
    input_pipeline,
    models,
    parallel,
    reporting,
    results,
    steps,
    weights,
)
from jresnet import workdir as workdir_lib
from jresnet.configs import checks
from jresnet.errors import (
    CheckpointError,
    ConfigError,
    InterruptedRun,
    TrainingDivergedError,
    WeightsError,
)


@dataclasses.dataclass
class WallClock:
    """A run's wall time, summed over its sessions: ``before`` seconds (the sessions up to the
    checkpoint resumed from) plus the time since ``start`` (this session's start)."""

    before: float = 0.0
    start: float = dataclasses.field(default_factory=time.time)

    def seconds(self) -> float:
        return self.before + time.time() - self.start


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The config values the loop uses, read once at the start of a run (`from_config`).

    Attributes:
      mean, std: per-channel RGB normalisation of pixels in [0, 1] (`datasets.NORMALIZATIONS`).
      augment: random crops and flips on the training batches.
      seed: the run's seed; the data order and the augmentation keys derive from it.
      batch_size: global training batch (over every device of every process).
      eval_batch_size: global eval batch.
      steps_per_call: training steps fused into one jitted call.
      num_epochs: epochs of the whole run.
      log_every_steps: progress line interval, in steps.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool
    seed: int
    batch_size: int
    eval_batch_size: int
    steps_per_call: int
    num_epochs: int
    log_every_steps: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Recipe:
        mean, std = datasets.NORMALIZATIONS[config.normalization]
        return cls(
            mean=mean,
            std=std,
            augment=bool(config.augment),
            seed=int(config.seed),
            batch_size=int(config.batch_size),
            eval_batch_size=int(config.eval_batch_size),
            steps_per_call=int(config.steps_per_call),
            num_epochs=int(config.num_epochs),
            log_every_steps=int(config.log_every_steps),
        )


@dataclasses.dataclass
class Run:
    """What stays fixed during a run: recipe, data, model, optimizer and drivers.

    ``config`` is the run's config as given: it is saved with each checkpoint and compared
    with a checkpoint's on resume; the loop itself reads only ``recipe``.
    """

    config: ml_collections.ConfigDict
    recipe: Recipe
    workdir: str
    data: input_pipeline.Splits
    mesh: Mesh
    train_images: jax.Array  # the training split on the device(s): `parallel.shard_rows`
    train_labels: jax.Array
    model: models.ResNet
    tx: Any
    learning_rate_fn: Callable[[Any], Any]
    steps_per_epoch: int
    train_key: jax.Array  # augmentation: `steps.make_train_fn`'s base_key
    order_key: jax.Array  # `input_pipeline.data_order_key(seed)`
    manager: Any
    eval_fn: Callable[..., Any]
    train_fns: dict[int, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    evaluated: bool = False  # whether eval_fn has run (compiled) in this process
    clock: WallClock = dataclasses.field(default_factory=lambda: WallClock())

    def compile(self, state: steps.TrainState, steps_per_call: int) -> float:
        """Compiles the driver of ``steps_per_call`` fused steps ahead of time; returns seconds.

        Says first what is compiled and whether a rerun will find it in JAX's persistent
        compilation cache (compiling takes seconds to minutes, in silence otherwise)."""
        reporting.info(
            f"compiling the train step, {reporting.plural(steps_per_call, 'step')} per call "
            f"({self.config.model}, batch {self.recipe.batch_size}, {self.config.dtype}, "
            f"{jax.devices()[0].platform}); {_cache_note()}"
        )
        start = time.time()
        jitted = steps.make_train_fn(
            model=self.model,
            tx=self.tx,
            learning_rate_fn=self.learning_rate_fn,
            mean=self.recipe.mean,
            std=self.recipe.std,
            augment=self.recipe.augment,
            mesh=self.mesh,
            steps_per_call=steps_per_call,
            split=steps.DeviceSplit(len(self.data.train_labels), self.recipe.batch_size),
        )
        self.train_fns[steps_per_call] = jitted.lower(
            jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
            ),
            self.train_images,
            self.train_labels,
            self.train_key,
            self.order_key,
        ).compile()
        return time.time() - start

    def calls_from(self, done: int) -> list[int]:
        """The sizes of the calls that train an epoch from its step ``done`` on, in order:
        the tail of `epoch_calls` (a stop happens between two calls, so a resumed epoch
        makes the calls an uninterrupted one makes); `epoch_calls` of the remaining steps
        when ``done`` is not between two of them (``steps_per_call`` changed on resume)."""
        calls = epoch_calls(self.steps_per_epoch, self.recipe.steps_per_call)
        boundaries = list(itertools.accumulate(calls, initial=0))
        if done in boundaries:
            return calls[boundaries.index(done) :]
        return epoch_calls(self.steps_per_epoch - done, self.recipe.steps_per_call)

    def compile_calls(self, state: steps.TrainState, first_step: int, more_epochs: bool) -> None:
        """Compiles, before training, every call size the epochs ahead need: the rest of this
        epoch from ``first_step`` and, if ``more_epochs``, whole epochs."""
        sizes = set(self.calls_from(first_step))
        if more_epochs:
            sizes |= set(self.calls_from(0))
        sizes = sorted(sizes, reverse=True)
        seconds = sum(self.compile(state, size) for size in sizes)
        reporting.info(
            f"compiled {' and '.join(map(str, sizes))} train step(s) per call in {seconds:.1f}s "
            "(ahead of time: not part of images/s)"
        )


def epoch_calls(num_steps: int, steps_per_call: int) -> list[int]:
    """How ``num_steps`` steps (an epoch) are split into calls of at most ``steps_per_call``
    fused steps: the sizes, in order.

    Equal calls, so that one compiled program serves the whole run: ``d`` steps each, ``d``
    the largest divisor of ``num_steps`` not above ``steps_per_call`` (16 steps at 10 per
    call: 2 calls of 8; 390 steps: 39 calls of 10). Where that divisor is below half of
    ``steps_per_call`` (a prime number of steps, say), as few calls as ``steps_per_call``
    allows, as equal as can be: ``q + 1`` steps first, then ``q`` (two programs). Either
    way every step sees the same batch, key and learning rate as with any other split.
    """
    if num_steps <= 0:
        return []
    divisor = max(d for d in range(1, min(steps_per_call, num_steps) + 1) if num_steps % d == 0)
    if 2 * divisor >= min(steps_per_call, num_steps):
        return [divisor] * (num_steps // divisor)
    num_calls = -(-num_steps // steps_per_call)
    size, longer = divmod(num_steps, num_calls)
    return [size + 1] * longer + [size] * (num_calls - longer)


def _cache_note() -> str:
    """Whether a rerun will find compiled programs in JAX's persistent cache."""
    cache_dir = jax.config.jax_compilation_cache_dir
    if cache_dir:
        return f"a rerun loads it from the compilation cache in {cache_dir}"
    return "set --config.compilation_cache_dir=DIR to cache it for reruns"


@dataclasses.dataclass
class EpochProgress:
    """Where an epoch stands: steps done, summed step metrics, time spent and compiling."""

    done: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    learning_rate: float = 0.0  # of the last step done
    seconds: float = 0.0
    compile_seconds: float = 0.0  # of calls compiled during the epoch (not ahead of time)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StopRequest:
    """SIGTERM or SIGINT -> stop at the next call boundary; a second signal acts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        for sig, previous in self._previous.items():  # the next signal: default action
            signal.signal(sig, previous)
        reporting.info(
            f"{self.signal_name}: stopping after the current call (send it again to stop now)"
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def requested(self) -> bool:
        """Whether to stop now; every process of a multi-process run gets the same answer."""
        stop = self.signal_name is not None
        if jax.process_count() > 1:
            stop = bool(multihost_utils.process_allgather(np.int32(stop)).max())
        return stop


def _host_means(sums: dict[str, Any], count: int) -> dict[str, float]:
    return {k: float(parallel.to_host(jnp.asarray(v))) / max(count, 1) for k, v in sums.items()}


def _check_finite(metrics: dict[str, float], finite: bool, epoch: int, step: int) -> None:
    if not (finite and np.isfinite(metrics["loss"])):
        what = "the loss" if not np.isfinite(metrics["loss"]) else "a parameter or statistic"
        raise TrainingDivergedError(
            f"{what} became NaN or infinite at epoch {epoch + 1}, step {step}: training "
            "diverged. Nothing was saved after that; the checkpoints saved so far are intact "
            "and finite. Lower --config.learning_rate or check the data."
        )


def train_epoch(
    run: Run,
    state: steps.TrainState,
    epoch: int,
    progress: EpochProgress,
    printer: reporting.Progress,
    stop: StopRequest,
) -> steps.TrainState:
    """Trains the rest of ``epoch`` from step ``progress.done`` on; updates ``progress``.

    Returns early (with ``progress.done < steps_per_epoch``) when ``stop`` is requested.
    The batches come from the split on the device (`steps.make_train_fn` with a
    `steps.DeviceSplit`: the epoch and the step inside it follow from ``state.step``); the
    host only dispatches the calls.
    One call is in flight at a time: the host waits for each call to finish before it checks
    for a stop request and dispatches the next. (Dispatching without waiting would let the
    loop run ahead of the device: a signal that arrives while the device works through
    queued calls would be seen only after all of them, e.g. at the end of the epoch.)
    """
    recipe = run.recipe
    sums = {k: jnp.asarray(v) for k, v in progress.sums.items()}
    finite = jnp.asarray(True)
    lr = None
    start = time.time()
    for size in run.calls_from(progress.done):
        if size not in run.train_fns:  # only after steps_per_call changed on resume
            seconds = run.compile(state, size)
            progress.compile_seconds += seconds
            reporting.info(f"compiled {size} train step(s) per call in {seconds:.1f}s")
        state, metrics = run.train_fns[size](
            state, run.train_images, run.train_labels, run.train_key, run.order_key
        )
        jax.block_until_ready((state, metrics))  # the call is done: a signal is seen now
        lr = metrics.pop("learning_rate")[-1]
        finite = jnp.logical_and(finite, metrics.pop("finite").all())
        for k, v in metrics.items():
            sums[k] = sums[k] + v.sum() if k in sums else v.sum()
        done_before, progress.done = progress.done, progress.done + size
        if printer.due(done_before, progress.done, run.steps_per_epoch):
            current = _host_means(sums, progress.done)
            _check_finite(current, bool(np.all(parallel.to_host(finite))), epoch, progress.done)
            current["learning_rate"] = float(parallel.to_host(lr))
            printer.update(epoch, recipe.num_epochs, progress.done, run.steps_per_epoch, current)
        if stop.requested():
            break
    current = _host_means(sums, progress.done)
    _check_finite(current, bool(np.all(parallel.to_host(finite))), epoch, progress.done)
    progress.sums = {k: float(parallel.to_host(v)) for k, v in sums.items()}
    progress.seconds += time.time() - start
    if lr is not None:
        progress.learning_rate = float(parallel.to_host(lr))
    return state


def end_epoch(
    run: Run,
    state: steps.TrainState,
    epoch: int,
    progress: EpochProgress,
    log: reporting.MetricsLog,
) -> dict[str, Any]:
    """Evaluates, saves the checkpoint (with the metrics history) and writes the record."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if not run.evaluated:  # its first call compiles it
        reporting.info(f"compiling the eval step for the first evaluation; {_cache_note()}")
        run.evaluated = True
    eval_metrics = steps.evaluate(
        run.eval_fn,
        variables,
        run.data.eval_images,
        run.data.eval_labels,
        run.recipe.eval_batch_size,
        run.mesh,
    )
    train_metrics = _host_means(progress.sums, progress.done)
    timed_seconds = progress.seconds - progress.compile_seconds
    step = int(parallel.to_host(state.step))
    record = {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        "learning_rate": progress.learning_rate,  # of the epoch's last step
        **eval_metrics,
        "images_per_s": progress.done * run.recipe.batch_size / max(timed_seconds, 1e-9),
        "epoch_time_s": progress.seconds,
        "wall_s": run.clock.seconds(),  # since the run began, over all its sessions
    }
    checkpoint.save(
        run.manager,
        step,
        state.to_dict(),
        run.config,
        metrics={"eval_accuracy": eval_metrics["eval_accuracy"]},
        meta={"history": [*log.records, record]},
    )
    log.write(record)
    return record


def _save_interrupted(
    run: Run,
    state: steps.TrainState,
    epoch: int,
    progress: EpochProgress,
    log: reporting.MetricsLog,
    stop: StopRequest,
) -> None:
    """Saves a mid-epoch checkpoint (with the epoch's progress) and ends the run."""
    step = int(parallel.to_host(state.step))
    checkpoint.save(
        run.manager,
        step,
        state.to_dict(),
        run.config,
        meta={
            "history": list(log.records),
            "epoch_progress": progress.to_json(),
            "wall_s": run.clock.seconds(),
        },
    )
    log.plot()
    raise InterruptedRun(
        f"{stop.signal_name} at step {step} (epoch {epoch + 1}, step {progress.done}/"
        f"{run.steps_per_epoch}), after the call it arrived in; a checkpoint is saved there: "
        "rerun the same command to resume from it"
    )


def _initial_state(
    run: Run, init_key: jax.Array, init_variables: dict[str, Any] | None
) -> tuple[steps.TrainState, dict[str, Any]]:
    """The state to start from, replicated over the mesh, and the checkpoint's ``meta``:
    the latest checkpoint, else ``init_from``'s weights (``init_variables`` if already
    loaded), else a fresh initialisation."""
    config = run.config
    state = steps.create_train_state(init_key, run.model, run.tx)
    sharding = parallel.replicated(run.mesh)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state.to_dict()
    )
    latest = run.manager.latest_step()
    if latest is not None and "opt_state" not in checkpoint.saved_state_keys(run.manager, latest):
        raise checkpoint.CheckpointError(
            f"{run.workdir} holds converted weights, not a training run; start training from "
            f"them with --config.init_from={run.workdir} and another --workdir"
        )
    restored = checkpoint.restore_latest(
        run.manager, target=target, config=config, move_unreadable=True
    )
    if restored is not None:
        step, state_dict, saved_config, meta = restored
        changed = checks.changed_keys(saved_config, config, checks.STEP_KEYS)
        if changed:
            raise checkpoint.CheckpointError(
                f"the checkpoint at step {step} in {run.manager.directory} was saved with "
                f"other steps ({', '.join(changed)}): resuming would reinterpret its step "
                "count. Use the checkpoint's values, or another --workdir."
            )
        reporting.info(f"Resuming from the checkpoint at step {step} in {run.manager.directory}")
        changed = checks.changed_keys(saved_config, config, checks.NUMERIC_KEYS)
        if changed:
            reporting.warn(
                "the recipe differs from the checkpoint's, so this run will not match an "
                "uninterrupted one: " + ", ".join(changed)
            )
        return steps.TrainState.from_dict(state_dict), meta
    if config.init_from:
        if init_variables is None:  # a direct call: the config must fit the weights
            settings, init_variables = weights.load(config.init_from)
            weights.settle(
                config, settings, weights.ARCHITECTURE_KEYS, f"init_from {config.init_from}"
            )
        expected = jax.tree.map(
            np.shape, {"params": state.params, "batch_stats": state.batch_stats}
        )
        if jax.tree.map(np.shape, init_variables) != expected:
            raise WeightsError(
                f"--config.init_from {config.init_from!r} does not fit --config.model="
                f"{config.model} shortcut={config.shortcut} dataset={config.dataset}: "
                "the variable names or shapes differ"
            )
        reporting.info(f"Initialised from {config.init_from}")
        state = state.replace(
            params=init_variables["params"], batch_stats=init_variables["batch_stats"]
        )
    return parallel.replicate(state, run.mesh), {}


def _position(
    run: Run, start_step: int, meta: dict[str, Any]
) -> tuple[int, EpochProgress, list[dict[str, Any]]]:
    """Where a run starts: the epoch, the progress inside it (from a mid-epoch checkpoint) and
    the metrics history up to it (from the checkpoint; else ``metrics.jsonl``)."""
    start_epoch = start_step // run.steps_per_epoch
    progress = EpochProgress(**meta.get("epoch_progress", {}))
    if start_step % run.steps_per_epoch != progress.done:
        raise checkpoint.CheckpointError(
            f"the checkpoint at step {start_step} is not at an epoch boundary of "
            f"{run.steps_per_epoch} steps: was the training split's size changed?"
        )
    history = meta.get("history")
    if history is None:  # checkpoints written before the history was saved with them
        records = reporting.read_metrics(run.workdir)
        history = [r for r in records if r["epoch"] <= start_epoch]
    return start_epoch, progress, history


def _announce(run: Run, state: steps.TrainState) -> None:
    config, data = run.config, run.data
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    reporting.info(
        f"{config.model} (shortcut {config.shortcut}, {num_params:,} params) on "
        f"{config.dataset} {config.train_split} ({len(data.train_labels):,} images), eval on "
        f"{config.eval_split} ({len(data.eval_labels):,}); "
        f"{reporting.plural(config.num_epochs, 'epoch')} x "
        f"{reporting.plural(run.steps_per_epoch, 'step')} of {config.batch_size}, in calls of "
        f"{_describe_calls(run.calls_from(0))}; {run.mesh.size} "
        f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es); "
        f"workdir {run.workdir}"
    )


def _describe_calls(calls: list[int]) -> str:
    """``[8, 8]`` -> ``"8 steps"``; ``[9, 8]`` -> ``"9 and 8 steps"``."""
    sizes = sorted(set(calls), reverse=True)
    return " and ".join(map(str, sizes)) + (" step" if sizes == [1] else " steps")


def _wall_before(meta: dict[str, Any], history: list[dict[str, Any]]) -> float:
    """The wall time of the sessions before this one, as saved with the checkpoint resumed
    from (checkpoints saved before wall times were: the sum of the epoch times)."""
    if "wall_s" in meta:  # a checkpoint saved inside an epoch
        return meta["wall_s"]
    if not history:
        return 0.0
    return history[-1].get("wall_s", sum(r.get("epoch_time_s", 0.0) for r in history))


def _finish(
    run: Run, state: steps.TrainState, log: reporting.MetricsLog, session_s: float
) -> dict[str, Any]:
    """After the last epoch: the test split, once (final model and best checkpoint), then
    ``results.json``, the test fields of the last ``metrics.jsonl`` record and the summary line.

    A finished run rerun keeps its ``results.json`` (and does not evaluate the test split
    again) unless it no longer describes this run (`results.still_valid`).
    """
    summary = log.summary(session_s)
    if not log.records:
        reporting.info(reporting.format_summary(summary))
        return summary
    config = run.config.to_dict()
    last = log.records[-1]
    try:
        outcome = results.read(run.workdir)
    except CheckpointError as e:
        reporting.warn(f"{e}; writing it again")
        outcome = None
    if results.still_valid(outcome, config, last["step"]):
        reporting.info(
            f"{results.RESULTS_FILE} already holds this run's results: kept (the test split is "
            "not evaluated again)"
        )
    else:
        best = results.best_record(log.records, run.manager.all_steps())
        if best is None:  # the best epoch's checkpoint is gone: report the final one's
            best = last
        test = None
        if run.config.test_split:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            test = evaluate.final_and_best_on_test(
                run.config,
                run.config.dataset,
                run.eval_fn,
                run.mesh,
                variables,
                last["step"],
                run.workdir,
                best,
            )
        code = results.code_version() if reporting.is_main_process() else None
        outcome = results.build(config, log.records, best, test, last.get("wall_s", 0.0), code)
        if reporting.is_main_process():
            results.write(run.workdir, outcome)
    if outcome.get("final_test_accuracy") is not None:
        log.add_to_last({key: outcome[key] for key in results.TEST_FIELDS})
    summary.update({key: outcome[key] for key in results.TEST_FIELDS})
    summary.update(
        best_eval_accuracy=outcome["best_eval_accuracy"],
        best_epoch=outcome["best_epoch"],
        wall_time_s=outcome["wall_s"],
    )
    reporting.info(reporting.format_summary(summary) + results.format_test(outcome))
    return summary


def _setup(
    config: ml_collections.ConfigDict,
    recipe: Recipe,
    workdir: str,
    data: input_pipeline.Splits,
    mesh: Mesh,
    manager: Any,
) -> Run:
    steps_per_epoch = input_pipeline.steps_per_epoch(len(data.train_labels), recipe.batch_size)
    learning_rate_fn = steps.create_learning_rate_fn(config, steps_per_epoch)
    model = models.from_config(config)
    return Run(
        config=config,
        recipe=recipe,
        workdir=workdir,
        data=data,
        mesh=mesh,
        train_images=parallel.shard_rows(data.train_images, mesh),
        train_labels=parallel.shard_rows(data.train_labels.astype(np.int32), mesh),
        model=model,
        tx=steps.create_optimizer(config, learning_rate_fn),
        learning_rate_fn=learning_rate_fn,
        steps_per_epoch=steps_per_epoch,
        train_key=jax.random.split(jax.random.key(recipe.seed))[1],
        order_key=input_pipeline.data_order_key(recipe.seed),
        manager=manager,
        eval_fn=steps.make_eval_fn(model, recipe.mean, recipe.std, mesh),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: input_pipeline.Splits | None = None,
    init_variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates each epoch.

    ``config`` must be valid (`configs.checks.validate`, which `jresnet.main` runs once per
    run, before any data is read). ``data`` holds the training and eval splits; None reads
    ``config.train_split`` and ``config.eval_split`` of ``config.dataset`` from
    ``config.data_dir`` (never downloads). ``init_variables``: ``config.init_from``'s
    variables, if the caller loaded them already (`jresnet.main.run`, which also took the
    weights' settings into ``config``); else they are loaded here, and an architecture that
    contradicts them is refused.
    Runs data-parallel over every device of every process (`jresnet.parallel`); call
    `parallel.initialize_distributed` first for several processes. Holds the work
    directory's lock (`jresnet.workdir`) while it runs.

    Returns the final summary: ``final_eval_accuracy``, ``best_eval_accuracy``,
    ``best_epoch``, ``epochs``, ``steps``, ``wall_time_s``.
    """
    start_time = time.time()
    recipe = Recipe.from_config(config)
    mesh = parallel.create_mesh()
    try:
        parallel.check_divisible(recipe.batch_size, "--config.batch_size", mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    workdir = workdir_lib.prepare(workdir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lib.locked(workdir, take=jax.process_index() == 0))
        stop = stack.enter_context(StopRequest())
        if data is None:
            data = input_pipeline.load_splits(config)
        manager = stack.enter_context(
            checkpoint.create_manager(workdir, keep=config.checkpoints_to_keep)
        )
        run = _setup(config, recipe, workdir, data, mesh, manager)
        init_key = jax.random.split(jax.random.key(recipe.seed))[0]
        state, meta = _initial_state(run, init_key, init_variables)
        start_step = int(parallel.to_host(state.step))
        start_epoch, progress, history = _position(run, start_step, meta)
        run.clock = WallClock(before=_wall_before(meta, history), start=start_time)
        log = stack.enter_context(
            contextlib.closing(
                reporting.MetricsLog(workdir, history, title=reporting.describe_run(config))
            )
        )
        _announce(run, state)
        if warning := results.protocol_warning(config):
            reporting.warn(warning)
        if config.test_split:  # a bad split fails now, not after the last epoch
            input_pipeline.split_size(config.dataset, config.test_split, config.data_dir or None)
        more_epochs = start_epoch + 1 < recipe.num_epochs
        if start_epoch < recipe.num_epochs:
            run.compile_calls(state, progress.done, more_epochs)
        printer = reporting.Progress(
            run.steps_per_epoch * recipe.num_epochs,
            start_step,
            recipe.batch_size,
            log_every_steps=recipe.log_every_steps,
        )
        for epoch in range(start_epoch, recipe.num_epochs):
            state = train_epoch(run, state, epoch, progress, printer, stop)
            if progress.done < run.steps_per_epoch:
                _save_interrupted(run, state, epoch, progress, log, stop)
            record = end_epoch(run, state, epoch, progress, log)
            printer.epoch_done(record, recipe.num_epochs)
            progress = EpochProgress()
            if stop.requested() and epoch + 1 < recipe.num_epochs:
                log.plot()
                raise InterruptedRun(
                    f"{stop.signal_name} after epoch {epoch + 1} (step {record['step']}); its "
                    "checkpoint is saved: rerun the same command to resume from it"
                )
        summary = _finish(run, state, log, time.time() - start_time)
        log.plot()
    return summary


if __name__ == "__main__":  # this module is the loop; the command that trains is elsewhere
    import sys

    print(
        "error: jresnet.train is the training loop, not a command: train with `jresnet train "
        "--workdir DIR` (or python -m jresnet train, python train.py); `jresnet train --help` "
        "lists every option",
        file=sys.stderr,
    )
    sys.exit(2)  # errors.EXIT_USAGE
