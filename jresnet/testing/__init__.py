"""Reference code for checking jresnet, shared by the tests and the benchmarks.

* `jresnet.testing.torch_reference`: the CIFAR ResNets in PyTorch (NCHW), the network
  the parity tests compare jresnet against; needs the optional ``torch`` dependency
  (extras ``test`` and ``bench``), so it is not imported here.
* `jresnet.testing.stablehlo_loops`: finds convolutions inside XLA while loops of a
  lowered JAX program.
* `jresnet.testing.driver_setup`: a small network and recipe for checks of the fused
  training drivers.
* `jresnet.testing.tiny_data`: writes tiny CIFAR datasets in TFDS format from arrays.
"""
