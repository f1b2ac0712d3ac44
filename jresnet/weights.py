"""Where weights come from: one function for every kind of source, and the settings they bring.

`load` turns a source into ``(weights_config, variables)``; training (``--config.init_from``),
evaluation (``--config.eval_only``), ``jresnet.predict``, ``jresnet.export`` and
``jresnet.convert`` all call it. A source is

* a jresnet work directory (trained, or written by ``python -m jresnet.convert``): the
  variables of its newest readable checkpoint, and the settings saved with them;
* a PyTorch checkpoint or ``.safetensors`` file (the seed's ``ckpt.pth``, akamaster's
  ``.th``, a bare state dict; `jresnet.weight_files`): the architecture is inferred from
  its keys and shapes (`jresnet.torch_layouts`), the dataset from its class count, the
  normalisation from its layout (`file_normalization`);
* the name of published weights (`jresnet.pretrained`, e.g. ``cifar10_resnet20``):
  downloaded once into the verified cache, with the architecture, dataset and
  normalisation they were trained with.

Anything else, and weights holding a NaN or an infinity, raise `WeightsError` with the
same message whichever command asked.

``weights_config`` is a `ml_collections.ConfigDict` with `SETTINGS_KEYS`: the architecture
(``model``, ``shortcut``), ``dataset`` (so the class count), ``normalization``,
``weight_init`` and ``dtype`` (the config's defaults where a file doesn't record them) and
``data_dir`` (where a trained work directory's data was; "" otherwise).

`settle` applies them to a run's config ("weights bring their own settings"): a key the
user did not set explicitly takes the weights' value; an explicit ``model``, ``shortcut``
or ``dataset`` that contradicts the weights is refused (a run never builds another model
around them); an explicit ``normalization`` is the user's choice. Which keys are explicit
is the caller's to say: ``train.py`` passes the keys given as ``--config.KEY=VALUE``
(``config_flags``' override values); a Python caller of `jresnet.main.run` passes them,
or by default the keys whose values differ from ``configs/default.py`` (`changed_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any

import ml_collections

from jresnet import checkpoint, datasets, pretrained, torch_layouts, weight_files
from jresnet.configs import default
from jresnet.errors import WeightsError

# The settings weights bring; the first three fix the variables' shapes.
ARCHITECTURE_KEYS = ("model", "shortcut", "dataset")
SETTINGS_KEYS = (*ARCHITECTURE_KEYS, "normalization", "weight_init", "dtype", "data_dir")
# What `settle` takes from the weights for a run that trains from them (fine-tuning may use
# other data; dtype and weight_init are the run's own choice) and for one that only
# evaluates them (on the data they were trained with, unless told otherwise).
INIT_KEYS = (*ARCHITECTURE_KEYS, "normalization")
EVAL_KEYS = (*INIT_KEYS, "data_dir")


def file_normalization(layout: str, shortcut: str) -> str:
    """The normalisation a PyTorch file's weights were most likely trained with.

    akamaster's layout (``module.`` prefix) and option-A models: ImageNet's statistics
    (akamaster's training script); the seed's and chenyaofo's layouts: the seed's CIFAR ones.
    ``python -m jresnet.convert --normalization`` (or ``--config.normalization``) overrides it.
    """
    return "imagenet" if layout == "akamaster" or shortcut == "A" else "cifar"


def _dataset_of(num_classes: int, source: str) -> str:
    by_classes = {d.num_classes: d.name for d in datasets.DATASETS.values()}
    if num_classes not in by_classes:
        raise WeightsError(
            f"the weights in {source} have {num_classes} classes, neither CIFAR-10 nor "
            "CIFAR-100; jresnet has no dataset for them"
        )
    return by_classes[num_classes]


def settings_of(**values: Any) -> ml_collections.ConfigDict:
    """A ``weights_config``: ``values`` for some of `SETTINGS_KEYS`, the defaults for the rest."""
    defaults = default.get_config()
    settings = {key: defaults[key] for key in SETTINGS_KEYS}
    settings["data_dir"] = ""
    settings.update(values)
    return ml_collections.ConfigDict(settings)


def _from_workdir(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    variables, saved = checkpoint.load_variables(path)
    arch = torch_layouts.infer_flax_architecture(variables)
    if (arch.model_name, arch.shortcut) != (saved.get("model"), saved.get("shortcut")):
        raise WeightsError(
            f"the checkpoint in {path} holds a {arch.describe()} but its config says "
            f"{saved.get('model')} shortcut {saved.get('shortcut')}: a damaged work directory"
        )
    recorded = {key: saved[key] for key in SETTINGS_KEYS if key in saved}
    return settings_of(**recorded), variables


def _from_file(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    state_dict = weight_files.load_state_dict_file(path)
    arch = torch_layouts.infer_architecture(state_dict)
    layout = torch_layouts.describe_layout(state_dict)
    variables = torch_layouts.torch_to_flax(state_dict)
    settings = settings_of(
        model=arch.model_name,
        shortcut=arch.shortcut,
        dataset=_dataset_of(arch.num_classes, path),
        normalization=file_normalization(layout, arch.shortcut),
    )
    return settings, variables


def _from_published(name: str, cache: str | None) -> tuple[ml_collections.ConfigDict, Any]:
    published = pretrained.get(name)
    _, variables = pretrained.load(name, cache)
    settings = settings_of(
        model=f"resnet{published.depth}",
        shortcut=published.shortcut,
        dataset=published.dataset,
        normalization=published.normalization,
    )
    return settings, variables


def load(source: str, cache: str | None = None) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """``(weights_config, {"params", "batch_stats"})`` of a work directory, file or name.

    Args:
      source: a jresnet work directory, a ``.pth``/``.th``/``.pt``/``.safetensors`` file
        (recognised by content), or a published name (`jresnet.pretrained.REGISTRY`).
      cache: where published weights are cached (default `jresnet.pretrained.cache_dir`).

    Returns:
      ``weights_config`` with `SETTINGS_KEYS` (see the module docstring) and the variables
      as nested dicts of arrays, exactly the structure of ``models.from_config(weights_config)``.

    Raises:
      WeightsError: an unknown source, an unreadable, hostile or non-ResNet file, weights
        with NaN or infinity. `jresnet.errors.CheckpointError` for a work directory whose
        checkpoints are all unreadable.
    """
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        if not os.path.isdir(checkpoint.checkpoint_dir(path)):
            raise WeightsError(
                f"{source!r} is a directory, not a weights file, and holds no checkpoints: "
                "not a jresnet work directory either (train into one, or convert weights "
                "into one with python -m jresnet.convert)"
            )
        settings, variables = _from_workdir(path)
    elif os.path.isfile(path):
        settings, variables = _from_file(path)
    elif source in pretrained.REGISTRY:
        settings, variables = _from_published(source, cache)
    else:
        raise WeightsError(
            f"{source!r} is neither a file, a work directory nor a published weights name "
            f"({', '.join(pretrained.REGISTRY)}; python -m jresnet.pretrained lists them)"
        )
    bad = checkpoint.nonfinite_leaves(variables)
    if bad:
        raise WeightsError(
            f"the weights in {source!r} hold NaN or infinite values ({len(bad)} arrays, e.g. "
            f"{', '.join(bad[:3])}); refusing to start from them"
        )
    return settings, {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def changed_keys(config: ml_collections.ConfigDict) -> frozenset[str]:
    """The top-level keys of ``config`` whose values differ from ``configs/default.py``'s."""
    defaults = default.get_config()
    return frozenset(key for key in config if key not in defaults or config[key] != defaults[key])


def _classes(dataset: str) -> int:
    return datasets.get(dataset).num_classes if dataset in datasets.DATASETS else 0


def settle(
    config: ml_collections.ConfigDict,
    weights_config: ml_collections.ConfigDict,
    explicit: Collection[str],
    source: str,
    keys: Sequence[str] = INIT_KEYS,
    flag: str = "--config.",
) -> tuple[ml_collections.ConfigDict, str]:
    """``(config with the weights' settings, the one line saying which were used)``.

    Each of ``keys`` not in ``explicit`` takes ``weights_config``'s value (``data_dir``
    only where the weights recorded one). An explicit architecture key (``model``,
    ``shortcut``, ``dataset``) that contradicts the weights raises `WeightsError` naming
    ``flag + key``; an explicit ``normalization`` or ``data_dir`` wins. ``source`` is how
    the line and the error name the weights, e.g. ``"init_from resnet20"``.
    """
    conflicts = [
        f"{flag}{key}={config[key]} but the weights are {key} {weights_config[key]}"
        + (f" ({_classes(weights_config[key])} classes)" if key == "dataset" else "")
        for key in ARCHITECTURE_KEYS
        if key in explicit and key in keys and config[key] != weights_config[key]
    ]
    if conflicts:
        raise WeightsError(
            f"{source} does not fit the requested model: {'; '.join(conflicts)}. Drop "
            f"{' and '.join(c.split('=')[0] for c in conflicts)} to use the weights' own, "
            "or choose other weights"
        )
    settled = config.copy_and_resolve_references()
    for key in keys:
        if key in explicit or (key == "data_dir" and not weights_config[key]):
            continue
        settled[key] = weights_config[key]
    line = (
        f"{source}: using its architecture {settled.model} shortcut {settled.shortcut}, "
        f"{_classes(settled.dataset)} classes ({settled.dataset}), normalization "
        f"{settled.normalization}"
    )
    if "normalization" in explicit and config.normalization != weights_config.normalization:
        line += f" (given; the weights say {weights_config.normalization})"
    if "data_dir" in keys and settled.data_dir and "data_dir" not in explicit:
        line += f", data_dir {settled.data_dir} (recorded)"
    return settled, line
