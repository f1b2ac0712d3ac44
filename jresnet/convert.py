"""The ``python -m jresnet.convert`` command: any weights source -> a work directory or a file.

    python -m jresnet.convert SOURCE OUT_DIR [--shortcut A|B] [--dataset cifar10|cifar100]
        [--normalization cifar|imagenet|cifar100] [--cache_dir DIR]
    python -m jresnet.convert SOURCE OUT.pth|OUT.pt|OUT.th|OUT.safetensors
        [--layout seed|chenyaofo]

``SOURCE`` is anything `jresnet.weights.load` resolves: a PyTorch or safetensors file, a
published weights name (`jresnet.pretrained`) or a jresnet work directory. An ``OUT``
ending in a weights extension gets a state dict that the seed's PyTorch model (or
akamaster's option-A one) loads with ``strict=True`` (`jresnet.weight_files`); any other
``OUT`` is a work directory with a step-0 checkpoint that `jresnet.checkpoint.load_model`,
``--config.eval_only`` and ``--config.init_from`` read, its config recording the
architecture, dataset and normalisation (inferred, or as ``--shortcut``, ``--dataset``,
``--normalization`` say; a value that contradicts the weights is refused).

Writing a work directory takes its lock (`jresnet.workdir`), so of two conversions into
the same new directory one writes and the other is refused; an unfinished save left by a
killed conversion is removed. An existing output file is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from jresnet import checkpoint, errors, weight_files, weights
from jresnet import workdir as workdir_lib
from jresnet.configs import default
from jresnet.errors import ConfigError, OutputError
from jresnet.torch_layouts import KEY_NAMES, flax_to_torch, infer_flax_architecture, num_values


def _settled_config(
    source: str,
    settings: Any,
    shortcut: str | None,
    dataset: str | None,
    normalization: str | None,
) -> Any:
    """The default config with the weights' settings, and the options given as overrides."""
    config = default.get_config()
    given = {"shortcut": shortcut, "dataset": dataset, "normalization": normalization}
    for key, value in given.items():
        if value is not None:
            config[key] = value
    explicit = {key for key, value in given.items() if value is not None}
    config, _ = weights.settle(config, settings, explicit, source, weights.INIT_KEYS, flag="--")
    config.weight_init, config.dtype = settings.weight_init, settings.dtype
    config.init_from = os.path.abspath(source) if os.path.exists(source) else source
    return config


def _finished_steps(out_dir: str) -> list[str]:
    """Checkpoint steps in ``out_dir``; an unfinished Orbax save (``<step>.orbax-checkpoint-tmp``)
    does not count."""
    path = checkpoint.checkpoint_dir(out_dir)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(
            f"{path} exists and is not a directory: {out_dir} is not a jresnet work directory; "
            "choose another output directory"
        )
    return sorted(n for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


@contextlib.contextmanager
def _output_lock(path: str) -> Iterator[None]:
    """The work directory's lock (`jresnet.workdir.locked`), refusals as `OutputError`."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(workdir_lib.locked(path))
        except ConfigError as e:
            raise OutputError(str(e).replace("--workdir", "the output directory")) from None
        yield


def to_workdir(
    source: str,
    out_dir: str,
    cache: str | None = None,
    shortcut: str | None = None,
    dataset: str | None = None,
    normalization: str | None = None,
) -> dict[str, Any]:
    """Writes the weights of ``source`` as a step-0 checkpoint of the work directory ``out_dir``.

    Returns a summary (architecture, config, parameter count, checkpoint path). Holds the
    work directory's lock while writing; nothing is left in ``out_dir`` if it fails.
    """
    settings, variables = weights.load(source, cache)
    config = _settled_config(source, settings, shortcut, dataset, normalization)
    existed = os.path.isdir(out_dir)
    try:
        path = workdir_lib.prepare(out_dir)
    except ConfigError as e:
        raise OutputError(str(e).replace("--workdir", "the output directory")) from e
    created = [] if existed else [path]
    try:
        with _output_lock(path):
            steps = _finished_steps(path)
            if steps:
                created = []
                raise OutputError(
                    f"{checkpoint.checkpoint_dir(path)} already holds checkpoints "
                    f"({', '.join(steps)}); choose an empty output directory"
                )
            checkpoint.remove_unfinished(path)  # a killed conversion's leftovers: unlocked
            if not os.path.isdir(checkpoint.checkpoint_dir(path)):
                created.insert(0, checkpoint.checkpoint_dir(path))
            saved = checkpoint.save_pretrained(path, variables, config)
    except BaseException:
        for p in created:  # the checkpoint directory first, out_dir last
            shutil.rmtree(p, ignore_errors=True)
        raise
    return {
        "architecture": infer_flax_architecture(variables),
        "config": config,
        "num_params": num_values(variables["params"]),
        "num_batch_stats": num_values(variables["batch_stats"]),
        "path": saved,
    }


def to_file(
    source: str, out_path: str, cache: str | None = None, layout: str = "seed"
) -> dict[str, Any]:
    """Writes the weights of ``source`` as a PyTorch state dict file (or ``.safetensors``).

    ``out_path`` ending in ``.pth``/``.pt``/``.th`` gives a ``torch.save`` file, in
    ``.safetensors`` a safetensors file; ``layout`` "seed" (which the seed's ``ResNet20``
    and akamaster's option-A models load with ``strict=True``) or "chenyaofo". An
    existing ``out_path`` is never overwritten.
    """
    weight_files.check_output_path(out_path)  # before any weights are read
    settings, variables = weights.load(source, cache)
    state_dict = flax_to_torch(variables, layout=layout)
    weight_files.save_state_dict_file(state_dict, out_path)
    return {
        "architecture": infer_flax_architecture(variables),
        "config": settings,
        "num_tensors": len(state_dict),
        "path": out_path,
    }


# --------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.convert",
        description="Convert CIFAR ResNet weights between PyTorch/safetensors files and jresnet "
        "work directories. SOURCE is a .pth/.th/.pt or .safetensors file, a published weights "
        "name from `python -m jresnet.pretrained`, or a jresnet work directory. OUT ending in "
        ".pth/.pt/.th/.safetensors is written as a state dict file; any other OUT is a work "
        "directory.",
    )
    parser.add_argument("source", metavar="SOURCE", help="weights file, pretrained name or workdir")
    parser.add_argument("out", metavar="OUT", help="work directory, or .pth/.safetensors file")
    parser.add_argument("--shortcut", choices=("A", "B"), help="default: inferred from the keys")
    parser.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100"),
        help="default: from the number of classes (10 or 100)",
    )
    parser.add_argument(
        "--normalization",
        choices=("cifar", "imagenet", "cifar100"),
        help="input normalisation the weights were trained with; default: the work directory's "
        "or published weights' own, for files imagenet for akamaster's layout (module. prefix "
        "or option A) and cifar otherwise",
    )
    parser.add_argument(
        "--layout",
        choices=sorted(KEY_NAMES),
        default="seed",
        help="key names of the state dict written to a file (default: seed)",
    )
    parser.add_argument("--cache_dir", help="where published weights are cached")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.out.lower().endswith(weight_files.EXTENSIONS):
        if args.shortcut or args.dataset or args.normalization:
            raise ConfigError(
                "--shortcut, --dataset and --normalization apply to weights converted into a "
                "work directory; a state dict file records none of them"
            )
        summary = to_file(args.source, args.out, args.cache_dir, args.layout)
        config = summary["config"]
        print(
            f"Wrote {summary['path']}: {summary['architecture'].describe()}, "
            f"{summary['num_tensors']} tensors in the {args.layout} layout. Its inputs are "
            f"NCHW images normalised with {config.normalization!r}."
        )
        return 0
    if os.path.isdir(os.path.expanduser(args.source)) and os.path.isdir(
        checkpoint.checkpoint_dir(os.path.expanduser(args.source))
    ):
        raise ConfigError(
            f"{args.source} is a work directory already. To write its weights as a file, "
            "give an OUT ending in .pth or .safetensors"
        )
    summary = to_workdir(
        args.source, args.out, args.cache_dir, args.shortcut, args.dataset, args.normalization
    )
    arch, config = summary["architecture"], summary["config"]
    print(
        f"Converted {args.source}: {arch.describe()}, {summary['num_params']:,} parameters, "
        f"{summary['num_batch_stats']:,} BN statistics.\n"
        f"Wrote {summary['path']} (step 0) with config model={config.model} "
        f"shortcut={config.shortcut} dataset={config.dataset} "
        f"normalization={config.normalization}.\n"
        f"Evaluate it (with its saved model and normalisation): python train.py --workdir "
        f"{args.out} --config.eval_only=True [--config.data_dir=DIR]\n"
        f"or in Python: model, variables = jresnet.checkpoint.load_model({args.out!r})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit code (`jresnet.errors`)."""
    return errors.run_cli(lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
