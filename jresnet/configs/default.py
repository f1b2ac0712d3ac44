"""The seed's recipe (kuangliu/pytorch-cifar adapted to ResNet-20).

ResNet-20 with option B shortcuts, batch 128, SGD lr 0.1 with momentum 0.9 and
coupled weight decay 1e-4, 200 epochs of cosine annealing stepped once per
epoch, random crop (padding 4) + horizontal flip, the seed's normalisation.

Override any key from the command line, e.g.
``python train.py --workdir ckpt/ --config.num_epochs=5 --config.train_split='train[:2048]'``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Model.
    config.model = "resnet20"  # resnet<6n+2>: resnet20, resnet32, ..., resnet1202
    config.shortcut = "B"  # "A": zero-padding identity (paper); "B": 1x1 conv + BN (seed)
    config.weight_init = "pytorch"  # "pytorch" (seed) or "he_normal" (paper)
    config.dtype = "float32"  # computation dtype: "float32" or "bfloat16"

    # Data (TFDS; see `python -m jresnet.prepare_data` for offline preparation).
    config.dataset = "cifar10"  # "cifar10" or "cifar100"
    config.data_dir = ""  # TFDS data dir; "" means TFDS's default (~/tensorflow_datasets)
    config.train_split = "train"  # any TFDS split string, e.g. "train[:45000]"
    config.eval_split = "test"  # TFDS split evaluated after every epoch; picks the best epoch
    config.test_split = ""  # TFDS split evaluated once at the end (final, best); "" = none
    config.normalization = "cifar"  # "cifar": the seed's; "imagenet": akamaster's; "cifar100"
    config.augment = True  # random crop with 4-pixel zero padding + horizontal flip

    # Optimisation.
    config.batch_size = 128  # global batch, images per step
    config.eval_batch_size = 1000  # images per eval step (only memory and speed depend on it)
    config.num_epochs = 200  # passes over train_split
    config.learning_rate = 0.1  # initial (peak) SGD learning rate
    config.momentum = 0.9  # PyTorch-style heavy ball, no dampening
    config.weight_decay = 1e-4  # coupled L2, added to the gradient of every parameter
    config.schedule = "cosine_epoch"  # "cosine_epoch" | "cosine" | "multistep" | "constant"
    config.lr_boundaries = (32000, 48000)  # multistep: steps where lr is divided by 10
    config.warmup_steps = 0  # multistep: steps at warmup_learning_rate first (ResNet-110)
    config.warmup_learning_rate = 0.01  # multistep: learning rate during warmup_steps

    # Several processes (jax.distributed); all started with the same --workdir.
    config.distributed = False  # True: let JAX detect the cluster (SLURM, Open MPI, TPU pods)
    config.coordinator_address = ""  # "HOST:PORT" of process 0, for an explicit cluster
    config.coordinator_bind_address = ""  # address the coordinator listens on, "" = JAX's default
    config.num_processes = 0  # with coordinator_address: total number of processes
    config.process_id = -1  # with coordinator_address: this process's index, 0..N-1
    config.coordinator_timeout_s = 300  # give up (with a message) if the cluster doesn't form

    # Run.
    # JAX's persistent compilation cache: a restart (resume) skips the ~15 s
    # compile of the fused train step. "" disables it.
    config.compilation_cache_dir = "~/.cache/jresnet/jax"
    config.seed = 0  # PRNG seed of initialisation, data order and augmentation
    config.checkpoints_to_keep = 3  # latest checkpoints kept, besides the best one
    config.eval_only = False  # evaluate the latest checkpoint in --workdir and exit
    # Weights to start from (or, with eval_only and no checkpoints in --workdir, to evaluate):
    # a jresnet workdir, a .pth/.th/.pt/.safetensors file or a published name (python -m
    # jresnet.pretrained). They bring their model, shortcut, dataset and normalization
    # unless given as --config.KEY (see jresnet/weights.py).
    config.init_from = ""
    config.log_every_steps = 50  # progress line interval when stderr is not a terminal
    # At most this many training steps fused into one jitted call (an unrolled lax.scan;
    # each epoch is split into equal calls, see train.epoch_calls): no per-step
    # dispatch, about 10 s more compile time. Same numbers as 1 within float32
    # rounding; see benchmarks/RESULTS.md for the speed.
    config.steps_per_call = 10
    return config
