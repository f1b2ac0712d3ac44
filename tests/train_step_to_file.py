"""Run by tests/test_xla_setup.py in a subprocess: one train step's update, to an .npz.

Usage: python tests/train_step_to_file.py OUT.npz [--with-cpu-flags]
"""

import sys

from jresnet import xla_setup

if "--with-cpu-flags" in sys.argv:
    assert xla_setup.configure_cpu_flags(), "the flag was not added"

import jax
import numpy as np

from jresnet import datasets, models, parallel, steps
from jresnet.configs import default


def main() -> None:
    config = default.get_config()
    lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=10)
    tx = steps.create_optimizer(config, lr_fn)
    model = models.create_model("resnet8")
    mean, std = datasets.NORMALIZATIONS["cifar"]
    mesh = parallel.create_mesh()
    step = steps.make_train_fn(
        model=model, tx=tx, learning_rate_fn=lr_fn, mean=mean, std=std, augment=True, mesh=mesh
    )
    init = steps.create_train_state(jax.random.key(0), model, tx)
    init_params = jax.tree.map(np.asarray, init.params)
    state = parallel.replicate(init, mesh)
    rng = np.random.default_rng(0)
    for _ in range(1):
        batch = (
            rng.integers(0, 256, (1, 32, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, (1, 32)).astype(np.int32),
        )
        state, _ = step(state, *parallel.global_batch(batch, mesh, batch_axis=1), jax.random.key(1))
    update = jax.tree.map(lambda new, old: np.asarray(new) - old, state.params, init_params)
    leaves = jax.tree_util.tree_leaves_with_path(update)
    np.savez(sys.argv[1], **{jax.tree_util.keystr(k): v for k, v in leaves})


if __name__ == "__main__":
    main()
