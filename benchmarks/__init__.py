"""jresnet's benchmark; run ``python -m benchmarks.run --data-dir DIR`` from the repository root.

* `benchmarks.run`: the command: one worker process per configuration and round, the
  ``cpu`` or the ``gpu`` profile.
* `benchmarks.configs`: the configurations of each profile, and how long each measurement runs.
* `benchmarks.workers`: a worker process (`benchmarks.jax_workers`,
  `benchmarks.torch_workers` measure; `benchmarks.data` feeds them).
* `benchmarks.report`: the report (``RESULTS.md``, ``GPU_RESULTS.md``) and its ``.json``.
* `benchmarks.machine`: the machine, the package versions, the background load.
* `benchmarks.gpu`: what only a GPU has: its name and memory, its datasheet.
* `benchmarks.timing`: timing helpers.
* `benchmarks.resnet20`: ResNet-20's FLOP count and convolution inventory.
* `benchmarks.torch_seed`: the seed's training in PyTorch, the reference; its whole
  200-epoch run, resumable exactly (`benchmarks.torch_checkpoint`: its checkpoint file).
* `benchmarks.seed_recipe`: snapshots of the two 200-epoch runs and ``results/README.md``.
* `benchmarks.weight_gradient`: ways to write a 3x3 weight gradient on XLA:CPU.
* `benchmarks.check_pretrained`: published weights in jresnet, PyTorch, ``.pth`` and ONNX.
"""
