"""A PyTorch reproduction of the seed's CIFAR-10 training, the benchmark's reference.

The seed (kuangliu/pytorch-cifar adapted to ResNet-20) trains, eagerly and in NCHW:

* ResNet-20 with option B shortcuts (`jresnet.testing.torch_reference`, the network the
  parity tests check jresnet against): ``conv1`` 3x3/16 without bias, ``bn1``, three
  stages ``layer1..3`` of 3 `BasicBlock` each (16/32/64 planes; stages 2 and 3 start
  with stride 2; a 1x1 convolution + BatchNorm shortcut where the shape changes),
  ``avg_pool2d`` over the whole map and a ``linear`` classifier;
* on a ``Dataset`` that applies torchvision's ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()`` and ``Normalize(mean, std)`` to each
  sample, batched by ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``;
* with ``SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)`` and cross-entropy.

torchvision can't be installed next to this torch, so the four transforms are
re-implemented here, per sample, with torchvision's semantics and random draws
(``torch.randint`` for the crop offsets, ``torch.rand(1) < 0.5`` for the flip), so
DataLoader's per-worker seeding applies to them as it does to torchvision's.

``channels_last=True`` gives the variant with model and inputs in
``torch.channels_last`` memory format.

The seed's whole run (`train`): 200 epochs of ``CosineAnnealingLR(T_max=200)`` stepped once
per epoch, evaluating on the test split after each (batches of 100, as the seed's test
loader), on the splits of a TFDS data dir read by `jresnet.input_pipeline.load_split` (the
same data a jresnet run reads). Unlike the seed, it resumes exactly: after every epoch it
saves ``<workdir>/checkpoint.pt`` atomically (`benchmarks.torch_checkpoint`) with the model,
optimizer, scheduler, epoch, the records so far and every RNG state (torch, numpy, Python and
the DataLoader's own generator, which the seed leaves to torch's global one), and rerunning
the same command continues from it and ends with bit-identical parameters. It writes
``<workdir>/metrics.jsonl`` with the fields of jresnet's (`jresnet.reporting`), one JSON
line per epoch, rewritten from the checkpoint's history on resume, and ``<workdir>/config.json``.
The seed's DataLoader keeps the last partial batch (391 steps per epoch on 50,000 images,
where jresnet drops it and makes 390).

Command lines::

    python -m benchmarks.torch_seed train --workdir W --data_dir DIR     # the seed's run
    python -m benchmarks.torch_seed evaluate --weights W.safetensors --data_dir DIR   # a file
    python -m benchmarks.torch_seed smoke --steps 20 [--channels_last] [--data train.npz]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import torch_checkpoint
from jresnet import errors, input_pipeline, reporting, safe_files, weight_files
from jresnet import workdir as workdir_lib
from jresnet.errors import CheckpointError, ConfigError, WeightsError
from jresnet.testing import torch_reference

SEED_MEAN = (0.4914, 0.4822, 0.4465)
SEED_STD = (0.2023, 0.1994, 0.2010)
BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


# --------------------------------------------------------------------------------------------
# Model.


def resnet20() -> nn.Module:
    """The seed's ResNet-20, option B (272,474 parameters): the parity tests' reference."""
    return torch_reference.torch_resnet(20, "B")


# --------------------------------------------------------------------------------------------
# Per-sample transforms (torchvision semantics, on HWC uint8 numpy images).


class RandomCrop:
    """``RandomCrop(size, padding)``: zero-pad every side, crop ``size`` at a uniform offset."""

    def __init__(self, size: int, padding: int) -> None:
        self.size = size
        self.padding = padding

    def __call__(self, image: np.ndarray) -> np.ndarray:
        p = self.padding
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))  # constant fill 0
        height, width = padded.shape[:2]
        # torchvision's RandomCrop.get_params draws the row, then the column.
        top = int(torch.randint(0, height - self.size + 1, size=(1,)).item())
        left = int(torch.randint(0, width - self.size + 1, size=(1,)).item())
        return padded[top : top + self.size, left : left + self.size]


class RandomHorizontalFlip:
    """``RandomHorizontalFlip(p)``: mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if torch.rand(1) < self.p:
            return image[:, ::-1]
        return image


class ToTensor:
    """``ToTensor()``: HWC uint8 in 0..255 to a CHW float32 tensor in [0, 1]."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return tensor.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class Normalize:
    """``Normalize(mean, std)``: per channel ``(x - mean) / std`` of a CHW tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.sub_(self.mean).div_(self.std)


class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x


def train_transform() -> Compose:
    """The seed's training transform."""
    return Compose(
        [
            RandomCrop(32, padding=4),
            RandomHorizontalFlip(),
            ToTensor(),
            Normalize(SEED_MEAN, SEED_STD),
        ]
    )


def test_transform() -> Compose:
    """The seed's test transform."""
    return Compose([ToTensor(), Normalize(SEED_MEAN, SEED_STD)])


class CifarArrays(torch.utils.data.Dataset):
    """CIFAR from in-memory arrays: uint8 ``[N, 32, 32, 3]`` images and int ``[N]`` labels."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | np.ndarray, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def train_loader(
    images: np.ndarray,
    labels: np.ndarray,
    num_workers: int = 2,
    batch_size: int = BATCH_SIZE,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """The seed's training loader: batch 128, shuffled, 2 worker processes, last partial batch
    kept. ``generator`` (default: torch's global one) draws the order and the workers' seeds."""
    dataset = CifarArrays(images, labels, train_transform())
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=generator,
    )


# --------------------------------------------------------------------------------------------
# Training.


class SeedTrainer:
    """The seed's model, loss and optimizer, and its training step.

    Args:
      channels_last: put the model (and each input batch) in ``torch.channels_last``.
      seed: ``torch.manual_seed`` for the initial weights.
      depth: ``6n + 2`` layers (20, the seed's; 8 for tests).
      learning_rate, momentum, weight_decay: the seed's SGD.
      device: where the model lives and each batch goes ("cpu", "cuda").
    """

    def __init__(
        self,
        channels_last: bool = False,
        seed: int = 0,
        depth: int = 20,
        learning_rate: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        device: str = "cpu",
    ) -> None:
        torch.manual_seed(seed)
        self.channels_last = channels_last
        self.device = device
        self.model = torch_reference.torch_resnet(depth, "B").to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
        )

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input batch on the trainer's device, in its memory format."""
        inputs = inputs.to(self.device)
        if self.channels_last:
            return inputs.to(memory_format=torch.channels_last)
        return inputs

    def step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; returns ``(loss, outputs)`` (still tensors: no host sync)."""
        self.model.train()
        inputs, targets = self.prepare(inputs), targets.to(self.device)
        self.optimizer.zero_grad()
        outputs = self.model(inputs)
        loss = self.criterion(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return loss, outputs

    def train_batches(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[float, int, int]]:
        """The seed's epoch loop body: per batch, yields ``(loss, correct, total)``.

        As the seed does for its progress bar, ``loss.item()`` and the count of correct
        predictions are read back after every step.
        """
        for inputs, targets in batches:
            loss, outputs = self.step(inputs, targets)
            _, predicted = outputs.max(1)
            correct = predicted.eq(targets.to(self.device)).sum().item()
            yield loss.item(), int(correct), targets.size(0)

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised NCHW batch in inference mode (BN running statistics)."""
        self.model.eval()
        return self.model(self.prepare(inputs))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# The seed's whole run: epochs, evaluation, cosine schedule; resumable exactly.

EVAL_BATCH_SIZE = 100  # the seed's test DataLoader
NUM_EPOCHS = 200
DATASET = "cifar10"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
CHECKPOINT_FORMAT = 1
# Record fields that measure time rather than training: they differ between equal runs.
TIMING_FIELDS = ("images_per_s", "epoch_time_s")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A seed run; the defaults are the seed's recipe.

    ``data_dir`` is a TFDS data dir holding cifar10 in array_record format ("" means TFDS's
    default); the splits are TFDS split strings. ``depth`` is ``6n + 2``.
    """

    data_dir: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    depth: int = 20
    batch_size: int = BATCH_SIZE
    eval_batch_size: int = EVAL_BATCH_SIZE
    num_epochs: int = NUM_EPOCHS
    learning_rate: float = LEARNING_RATE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    num_workers: int = 2
    seed: int = 0
    channels_last: bool = False


# What a resume may change: where the data is read from. Anything else changes the run.
RESUMABLE_CHANGES = ("data_dir",)


def check_config(config: RunConfig) -> None:
    """Raises `ConfigError` for values the run can't use."""
    positive = ("batch_size", "eval_batch_size", "num_epochs")
    for key in positive:
        if getattr(config, key) <= 0:
            raise ConfigError(f"--{key} must be positive, got {getattr(config, key)}")
    if config.num_workers < 0 or config.seed < 0:
        raise ConfigError("--num_workers and --seed must be non-negative")
    if config.depth < 8 or (config.depth - 2) % 6:
        raise ConfigError(
            f"--depth must be 6n + 2 with n >= 1 (20 is ResNet-20), got {config.depth}"
        )


def _changed_keys(saved: Mapping[str, Any], config: RunConfig) -> list[str]:
    current = dataclasses.asdict(config)
    keys = sorted(set(saved) | set(current))
    return [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}"
        for key in keys
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
    ]


def eval_tensors(split: str, data_dir: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``split`` of the TFDS data dir as the seed's test pass takes it: `normalized_nchw`
    inputs ``[N, 3, 32, 32]`` and int64 targets ``[N]``."""
    images, labels = input_pipeline.load_split(DATASET, split, data_dir or None)
    return normalized_nchw(images), torch.from_numpy(labels.astype(np.int64))


def normalized_nchw(images: np.ndarray) -> torch.Tensor:
    """The seed's test transform on a whole split: uint8 ``[N, 32, 32, 3]`` -> float32
    ``[N, 3, 32, 32]`` normalised (the same operations as `test_transform` per image)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    x = x.div(255)
    mean = torch.as_tensor(SEED_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(SEED_STD, dtype=torch.float32)[:, None, None]
    return x.sub_(mean).div_(std).contiguous()


def evaluate(
    trainer: SeedTrainer, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, Any]:
    """The seed's test pass in eval mode: mean cross-entropy per image, accuracy, count."""
    loss_sum = 0.0
    correct = 0
    for start in range(0, len(labels), batch_size):
        targets = labels[start : start + batch_size]
        outputs = trainer.predict(images[start : start + batch_size])
        loss_sum += float(nn.functional.cross_entropy(outputs, targets, reduction="sum"))
        correct += int(outputs.max(1)[1].eq(targets).sum())
    count = len(labels)
    return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count, "eval_count": count}


def evaluate_weights(
    path: str, data_dir: str = "", split: str = "test", depth: int = 20
) -> dict[str, Any]:
    """A seed-layout weights file evaluated by the seed's PyTorch model, as its user would.

    The file (``.safetensors`` or a PyTorch file, read without unpickling by
    `jresnet.weight_files`) goes into the seed's ResNet of ``depth`` layers (option B) with
    ``load_state_dict(strict=True)``; `evaluate` then runs the seed's test pass on ``split``
    of the TFDS data dir (batches of `EVAL_BATCH_SIZE`). Returns eval loss, accuracy, count.

    Raises:
      WeightsError: an unreadable file, or one whose names or shapes are not the model's.
      DataError: the data dir or the split can't be read.
    """
    trainer = SeedTrainer(depth=depth)
    state = {k: torch.as_tensor(v) for k, v in weight_files.load_state_dict_file(path).items()}
    try:
        trainer.model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # torch lists every missing, unexpected or misshapen key
        message = f"{path} is not a seed-layout ResNet-{depth} (option B): {error}"
        raise WeightsError(message) from error
    return evaluate(trainer, *eval_tensors(split, data_dir), EVAL_BATCH_SIZE)


def train_epoch(trainer: SeedTrainer, loader: torch.utils.data.DataLoader) -> dict[str, Any]:
    """One pass over ``loader`` (the seed's loop): mean batch loss, accuracy, the epoch's
    learning rate, steps, images and seconds (DataLoader start-up included)."""
    start = time.perf_counter()
    learning_rate = trainer.optimizer.param_groups[0]["lr"]
    loss_sum = 0.0
    correct = total = steps = 0
    for loss, batch_correct, batch_total in trainer.train_batches(iter(loader)):
        loss_sum += loss
        correct += batch_correct
        total += batch_total
        steps += 1
    return {
        "train_loss": loss_sum / max(steps, 1),
        "train_accuracy": correct / max(total, 1),
        "learning_rate": learning_rate,
        "steps": steps,
        "images": total,
        "seconds": time.perf_counter() - start,
    }


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(config: RunConfig, workdir: str) -> list[dict[str, Any]]:
    """Runs (or resumes) the seed's training in ``workdir``; returns every epoch's record.

    Writes ``checkpoint.pt`` after every epoch (atomically), ``metrics.jsonl`` (rewritten from
    the checkpoint's history on resume, then one line per epoch) and ``config.json``. A second
    run in the same ``workdir`` is refused while one holds it (`jresnet.workdir.locked`).

    Raises:
      ConfigError: bad values, or a checkpoint saved with another config (keys named).
      CheckpointError: an unreadable checkpoint (left in place).
      DataError: the data dir or a split can't be read.
    """
    check_config(config)
    path = workdir_lib.prepare(workdir)
    with workdir_lib.locked(path):
        checkpoint_path = os.path.join(path, CHECKPOINT_FILE)
        torch_checkpoint.remove_leftovers(checkpoint_path)
        saved = torch_checkpoint.load(checkpoint_path)
        if saved is not None:
            if saved.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{checkpoint_path} is not a checkpoint of this script")
            changed = _changed_keys(saved["config"], config)
            if changed:
                raise ConfigError(
                    f"the checkpoint in {path} was saved by another run; rerun with its "
                    "settings or choose another --workdir:\n  " + "\n  ".join(changed)
                )
        safe_files.write_bytes(
            os.path.join(path, CONFIG_FILE),
            json.dumps(dataclasses.asdict(config), indent=2).encode(),
        )
        train_images, train_labels = input_pipeline.load_split(
            DATASET, config.train_split, config.data_dir or None
        )
        eval_inputs, eval_targets = eval_tensors(config.eval_split, config.data_dir)

        random.seed(config.seed)
        np.random.seed(config.seed)  # noqa: NPY002 (the global state the seed's code sees)
        trainer = SeedTrainer(
            channels_last=config.channels_last,
            seed=config.seed,
            depth=config.depth,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            trainer.optimizer, T_max=config.num_epochs
        )
        generator = torch.Generator().manual_seed(config.seed)
        loader = train_loader(
            train_images, train_labels, config.num_workers, config.batch_size, generator
        )
        history: list[dict[str, Any]] = []
        if saved is not None:
            trainer.model.load_state_dict(saved["model"])
            trainer.optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch_checkpoint.restore_rng_states(saved["rng"], generator)
            history = [dict(r) for r in saved["history"]]
            _info(f"resuming {path} after epoch {saved['epoch']}/{config.num_epochs}")
        metrics_path = os.path.join(path, reporting.METRICS_FILE)
        safe_files.write_bytes(
            metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode()
        )

        for epoch in range(len(history), config.num_epochs):
            trained = train_epoch(trainer, loader)
            scheduler.step()  # the seed steps its cosine once per epoch
            evaluated = evaluate(trainer, eval_inputs, eval_targets, config.eval_batch_size)
            record = {
                "epoch": epoch + 1,
                "step": (history[-1]["step"] if history else 0) + trained["steps"],
                "train_loss": trained["train_loss"],
                "train_accuracy": trained["train_accuracy"],
                "learning_rate": trained["learning_rate"],
                **evaluated,
                "images_per_s": trained["images"] / max(trained["seconds"], 1e-9),
                "epoch_time_s": trained["seconds"],
            }
            history.append(record)
            torch_checkpoint.save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": dataclasses.asdict(config),
                    "epoch": epoch + 1,
                    "model": trainer.model.state_dict(),
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "rng": torch_checkpoint.rng_states(generator),
                },
                checkpoint_path,
            )
            safe_files.append_bytes(metrics_path, (json.dumps(record) + "\n").encode())
            _info(
                f"epoch {record['epoch']}/{config.num_epochs} done: loss "
                f"{record['train_loss']:.4f} train acc {100 * record['train_accuracy']:.2f}% "
                f"eval acc {100 * record['eval_accuracy']:.2f}% (loss {record['eval_loss']:.4f}) "
                f"lr {record['learning_rate']:.4g} {record['images_per_s']:,.0f} img/s "
                f"epoch {record['epoch_time_s']:.1f}s"
            )
        return history


def load_trained_model(workdir: str) -> nn.Module:
    """The model of ``workdir``'s checkpoint (eval mode), read with ``weights_only=True``."""
    path = os.path.join(workdir, CHECKPOINT_FILE)
    saved = torch_checkpoint.load(path)
    if saved is None:
        raise CheckpointError(f"no {CHECKPOINT_FILE} in {workdir}")
    model = torch_reference.torch_resnet(saved["config"]["depth"], "B")
    model.load_state_dict(saved["model"])
    return model.eval()


# --------------------------------------------------------------------------------------------
# Command lines.


def _config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(RunConfig):
        if field.type in ("bool", bool):
            parser.add_argument(
                f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default
            )
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(f"--{field.name}", type=kind, default=field.default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.torch_seed", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="the seed's run (200 epochs), resumable exactly")
    run.add_argument("--workdir", required=True)
    _config_flags(run)
    check = commands.add_parser(
        "evaluate",
        help="a seed-layout weights file in the seed's model (strict=True), on a test split; "
        "prints the metrics as JSON",
    )
    check.add_argument("--weights", required=True, help=".safetensors, .pth, .pt or .th file")
    check.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's)")
    check.add_argument("--split", default="test")
    check.add_argument("--depth", type=int, default=20, help="6n + 2 layers (20: ResNet-20)")
    smoke = commands.add_parser("smoke", help="a few steps, for a speed check")
    smoke.add_argument("--steps", type=int, default=20)
    smoke.add_argument("--channels_last", action="store_true")
    smoke.add_argument("--data", help=".npz with uint8 'images' [N,32,32,3] and 'labels' [N]")
    return parser


def _smoke(args: argparse.Namespace) -> None:
    trainer = SeedTrainer(channels_last=args.channels_last)
    print(f"ResNet-20 option B, {count_parameters(trainer.model):,} parameters")
    if args.data:
        with np.load(args.data) as data:
            images, labels = data["images"], data["labels"]
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.steps * BATCH_SIZE, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, len(images))
    loader = train_loader(images, labels)
    start = time.perf_counter()
    seen = correct_sum = 0
    loss = float("nan")
    for i, (batch_loss, correct, total) in enumerate(trainer.train_batches(iter(loader))):
        loss = batch_loss
        seen += total
        correct_sum += correct
        if i + 1 >= args.steps:
            break
    elapsed = time.perf_counter() - start
    print(
        f"{i + 1} steps, last loss {loss:.4f}, accuracy {correct_sum / seen:.3f}, "
        f"{seen / elapsed:.1f} img/s (including DataLoader start-up)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def job() -> None:
        if args.command == "smoke":
            _smoke(args)
            return
        if args.command == "evaluate":
            metrics = evaluate_weights(args.weights, args.data_dir, args.split, args.depth)
            print(json.dumps(metrics))
            return
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        config = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
        history = train(config, args.workdir)
        if history:
            best = max(history, key=lambda r: r["eval_accuracy"])
            _info(
                f"{history[-1]['epoch']}/{config.num_epochs} epochs: final eval accuracy "
                f"{100 * history[-1]['eval_accuracy']:.2f}%, best "
                f"{100 * best['eval_accuracy']:.2f}% (epoch {best['epoch']})"
            )

    return errors.run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
