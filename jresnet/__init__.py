"""jresnet: the CIFAR ResNets of He et al. 2016 in JAX/Flax, provably equal to PyTorch."""

__version__ = "0.1.0"
