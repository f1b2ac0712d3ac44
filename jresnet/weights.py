"""Where a run's weights come from: one function for every kind of source.

`load` turns ``--config.init_from`` (fine-tuning) or the target of ``--config.eval_only``
into ``(model_config, variables)``:

* a jresnet work directory (trained, or written by ``python -m jresnet.convert``): the
  variables of its newest readable checkpoint, and the architecture, dtype and
  normalisation saved with them;
* a PyTorch checkpoint or ``.safetensors`` file (the seed's ``ckpt.pth``, akamaster's
  ``.th``, a bare state dict): converted by `jresnet.convert` with the current config's
  shortcut option;
* the name of published weights (`jresnet.pretrained`, e.g. ``cifar10_resnet20``):
  downloaded once into the verified cache, with the architecture, dataset and
  normalisation they were trained with.

Weights holding a NaN or an infinity are refused: a run must not start from them.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from jresnet import checkpoint, convert, pretrained
from jresnet.configs.checks import ARCHITECTURE_KEYS
from jresnet.errors import ConfigError

# Saved keys a jresnet checkpoint's variables come with, besides the architecture.
_MODEL_KEYS = (*ARCHITECTURE_KEYS, "weight_init", "dtype", "normalization")


def load(
    source: str, config: ml_collections.ConfigDict
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """``(model_config, {"params", "batch_stats"})`` from a work directory or a PyTorch file.

    ``model_config`` is ``config`` with the model keys (architecture, weight_init, dtype,
    normalisation) a work directory was saved with; for a PyTorch file it is ``config``.
    """
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        variables, saved = checkpoint.load_variables(path)
        model_config = config.copy_and_resolve_references()
        for key in _MODEL_KEYS:
            if key in saved:
                model_config[key] = saved[key]
    elif os.path.isfile(path):
        state_dict = convert.load_state_dict_file(path)
        variables = convert.torch_to_flax(state_dict, shortcut=config.shortcut)
        model_config = config
    elif source in pretrained.REGISTRY:
        published = pretrained.get(source)
        _, variables = pretrained.load(source)
        model_config = config.copy_and_resolve_references()
        model_config.model = f"resnet{published.depth}"
        model_config.shortcut = published.shortcut
        model_config.dataset = published.dataset
        model_config.normalization = published.normalization
    else:
        raise ConfigError(
            f"{source!r} is neither a jresnet work directory, a PyTorch or safetensors file, "
            f"nor the name of published weights ({', '.join(pretrained.REGISTRY)})"
        )
    bad = checkpoint.nonfinite_leaves(variables)
    if bad:
        raise ConfigError(
            f"the weights in {source!r} hold NaN or infinite values ({len(bad)} arrays, e.g. "
            f"{', '.join(bad[:3])}); refusing to start from them"
        )
    return model_config, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
