"""jresnet's CPU benchmark suite; run ``python -m benchmarks.run`` from the repository root.

* `benchmarks.run`: the command: one worker process per configuration and round.
* `benchmarks.configs`: the configurations, and how long each measurement runs.
* `benchmarks.resnet20`: ResNet-20's FLOP count and convolution inventory.
* `benchmarks.workers`: a worker process (`benchmarks.jax_workers`,
  `benchmarks.torch_workers` measure; `benchmarks.data` feeds them).
* `benchmarks.report`: ``RESULTS.md`` and ``RESULTS.json`` from the collected runs.
* `benchmarks.machine`: the machine, the package versions, the background load.
* `benchmarks.timing`: timing helpers.
* `benchmarks.torch_seed`: the seed's training in PyTorch, the reference; its whole
  200-epoch run, resumable exactly (`benchmarks.torch_checkpoint`: its checkpoint file).
* `benchmarks.seed_recipe`: snapshots of the two 200-epoch runs and ``results/README.md``.
* `benchmarks.weight_gradient`: ways to write a 3x3 weight gradient on XLA:CPU.
"""
