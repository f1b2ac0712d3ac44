"""Data parallelism: one code path for 1 device, N local devices and N hosts.

The driver is `jax.jit` over a one-axis `Mesh` of every device, with the step
function inside `jax.shard_map` (axis ``"batch"``): each device computes on its
shard of the global batch, and `jresnet.steps.train_step` averages gradients
and BatchNorm statistics with ``pmean`` over the axis (synchronised BatchNorm).
So N devices with a global batch give the update one device gives on that
batch.

Why jit + shard_map and not ``jax.pmap``: since JAX 0.8 ``pmap`` is itself built
on jit + shard_map and is in maintenance mode. The jit form takes global
arrays, so multi-host input (`global_batch`), Orbax's multi-process
checkpoints and augmentation of the *global* batch (random numbers that do not
depend on the device count, as ``jax_threefry_partitionable`` is on) come for
free. The step functions themselves take ``axis_name`` and run under ``pmap``
unchanged (tested).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jresnet.errors import ConfigError

BATCH_AXIS = "batch"


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until ``HOST:PORT`` accepts TCP connections; `ConfigError` after ``timeout_s``.

    JAX's own client aborts the whole process (SIGABRT, a C++ log) when it gives up, so
    non-coordinator processes check that the coordinator is reachable first.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--config.coordinator_address must be HOST:PORT, got {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"the coordinator {address} did not answer within {timeout_s:g} s ({e}). "
                    "Start process 0 first (it runs the coordinator), check the address and "
                    "port, or raise --config.coordinator_timeout_s."
                ) from e
            time.sleep(1)


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Calls `jax.distributed.initialize` when the config asks for several processes.

    ``config.coordinator_address`` (``HOST:PORT``) with ``num_processes`` and
    ``process_id`` starts an explicit cluster; ``config.distributed=True``
    alone lets JAX detect SLURM, Open MPI or a TPU pod. Gives up after
    ``config.coordinator_timeout_s`` seconds with `ConfigError`. Must run before
    any other JAX call. Returns whether it initialised.
    """
    if not (config.get("distributed") or config.get("coordinator_address")):
        return False
    timeout_s = config.get("coordinator_timeout_s", 300)
    kwargs: dict[str, Any] = {"initialization_timeout": int(timeout_s)}
    if config.get("coordinator_address"):
        kwargs["coordinator_address"] = config.coordinator_address
        if config.get("num_processes", 0) > 0:
            kwargs["num_processes"] = config.num_processes
        if config.get("process_id", -1) >= 0:
            kwargs["process_id"] = config.process_id
        if config.get("process_id", -1) > 0:
            _wait_for_coordinator(config.coordinator_address, timeout_s)
    if config.get("coordinator_bind_address"):
        kwargs["coordinator_bind_address"] = config.coordinator_bind_address
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"can't start the multi-process run: {str(e).rstrip('.')}. With "
            "--config.distributed=True, JAX must "
            "detect a cluster (SLURM, Open MPI, a TPU pod); elsewhere give "
            "--config.coordinator_address, --config.num_processes and --config.process_id."
        ) from e
    return True


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: all, every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (identical on every process) on every device of ``mesh``.

    Built from host copies with `jax.make_array_from_callback`, which works
    across processes (``jax.device_put`` of a local array onto a multi-process
    sharding gives a broken array on the CPU backend of jax 0.10).
    """
    sharding = replicated(mesh)

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def shard_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places a host array (identical on every process) over the devices of ``mesh``, split
    along its first axis: ``[N', ...]`` sharded over ``BATCH_AXIS``, where ``N'`` is ``N``
    rounded up to a multiple of the device count (zero rows at the end). Each process puts
    only the blocks of its own devices on them (`jax.make_array_from_callback`).
    """
    pad = -len(array) % mesh.size
    if pad:
        array = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
    sharding = batch_sharded(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def check_divisible(batch_size: int, what: str, mesh: Mesh) -> None:
    """Raises ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {mesh.size} devices; choose a "
            f"multiple of {mesh.size}, e.g. {mesh.size * max(batch_size // mesh.size, 1)}"
        )


def global_batch(arrays: Sequence[np.ndarray], mesh: Mesh, batch_axis: int = 0) -> list[jax.Array]:
    """Turns host arrays holding a whole global batch into batch-sharded global arrays.

    Every process passes the same global batch (each array has the batch
    dimension ``B`` at ``batch_axis``, e.g. ``[K, B, ...]`` with ``batch_axis=1``
    for K stacked steps) and uses only its own contiguous block of
    ``B / process_count`` examples, which lands on its local devices.
    """
    spec = PartitionSpec(*([None] * batch_axis), BATCH_AXIS)
    sharding = NamedSharding(mesh, spec)
    count, index = jax.process_count(), jax.process_index()
    out = []
    for array in arrays:
        rows = array.shape[batch_axis] // count
        block = np.arange(index * rows, (index + 1) * rows)
        local = array if count == 1 else np.take(array, block, axis=batch_axis)
        out.append(jax.make_array_from_process_local_data(sharding, local, array.shape))
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array's value as numpy."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)
