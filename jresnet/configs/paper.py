"""He et al. 2016, Sec. 4.2: the paper's CIFAR-10 recipe.

Option A shortcuts, He-normal init, 45k/5k train/validation split (the best epoch is
picked on the validation split; the test split is evaluated once, at the end), batch 128,
lr 0.1 divided by 10 at 32k and 48k iterations, stopping near 64k iterations
(182 epochs of 351 steps = 63,882 steps). For ResNet-110 add
``--config.model=resnet110 --config.warmup_steps=400`` (lr 0.01 at first).
"""

import ml_collections

from jresnet.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.shortcut = "A"
    config.weight_init = "he_normal"
    config.train_split = "train[:45000]"
    config.eval_split = "train[45000:]"
    config.test_split = "test"
    config.schedule = "multistep"
    config.lr_boundaries = (32000, 48000)
    config.num_epochs = 182
    return config
