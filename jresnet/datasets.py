"""The datasets jresnet knows: one table of names, classes, label names and archives, and
the image normalisations models are trained with.

Every module that needs to know about CIFAR-10 or CIFAR-100 (the input pipeline, data
preparation, weight conversion, prediction) reads it from `DATASETS`; every module that
normalises images reads the ``(mean, std)`` from `NORMALIZATIONS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from jresnet.errors import ConfigError

_CIFAR10_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# CIFAR-100 superclasses (coarse labels, in official order) and their five classes each.
CIFAR100_SUPERCLASSES: Mapping[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


# Per-channel RGB (mean, std) of pixels scaled to [0, 1].
NORMALIZATIONS: Mapping[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # The seed's values (kuangliu/pytorch-cifar).
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # ImageNet's, as used by akamaster/pytorch_resnet_cifar10.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # CIFAR-100's, as chenyaofo/pytorch-cifar-models trained its CIFAR-100 models with
    # (the training configs in that repository's logs/cifar100/resnet*/default.log).
    "cifar100": ((0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset.

    Attributes:
      name: the TFDS name ("cifar10").
      label_names: class names in label order (0..num_classes-1).
      coarse_label_names: CIFAR-100's 20 superclasses in label order; None for CIFAR-10.
      split_sizes: examples per split of the official release.
      archives: file names of the official archives that `jresnet.prepare_data` reads.
      url: where the official python-format archive is downloaded from.
      md5: that archive's MD5 (from the CIFAR page).
    """

    name: str
    label_names: tuple[str, ...]
    coarse_label_names: tuple[str, ...] | None
    split_sizes: Mapping[str, int]
    archives: tuple[str, ...]
    url: str
    md5: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


DATASETS: Mapping[str, Dataset] = {
    "cifar10": Dataset(
        name="cifar10",
        label_names=_CIFAR10_LABELS,
        coarse_label_names=None,
        split_sizes={"train": 50_000, "test": 10_000},
        archives=("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": Dataset(
        name="cifar100",
        # The official fine labels are the 100 class names in alphabetical order.
        label_names=tuple(sorted(n for names in CIFAR100_SUPERCLASSES.values() for n in names)),
        coarse_label_names=tuple(CIFAR100_SUPERCLASSES),
        split_sizes={"train": 50_000, "test": 10_000},
        archives=("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz"),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def get(name: str) -> Dataset:
    """The `Dataset` called ``name``; `errors.ConfigError` names the known ones."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]
