"""Every ```python block of README.md runs as written.

Hermetic and offline: each block runs in a fresh namespace in a temporary directory, with
HOME and the weights cache there. The published weights a block loads by name
(``pretrained.load("cifar10_resnet20")``) are a file this test writes: a ResNet-20 of the
same architecture with random weights, registered under the same name with a URL where
nothing listens, so a download attempt would fail. Their values are not the published ones
(the blocks only need the shapes); tests/test_pretrained.py checks loading itself.
"""

import dataclasses
import hashlib
import re

import pytest

from jresnet import pretrained
from tests.conftest import REPO

BLOCKS = re.findall(r"^```python\n(.*?)^```$", (REPO / "README.md").read_text(), re.M | re.S)


def _published_weights_offline(cache, monkeypatch) -> None:
    """Writes each published ResNet-20 a block loads into ``cache`` and registers it."""
    torch = pytest.importorskip("torch")
    from jresnet.testing import torch_reference

    for name in ("cifar10_resnet20",):
        weights = pretrained.REGISTRY[name]
        torch.manual_seed(0)
        staging = cache / "staging.pt"
        torch.save(
            torch_reference.torch_resnet(weights.depth, weights.shortcut).state_dict(), staging
        )
        digest = hashlib.sha256(staging.read_bytes()).hexdigest()
        file_name = f"{name}-{digest[:8]}.pt"
        staging.rename(cache / file_name)
        url = f"http://127.0.0.1:9/{file_name}"  # the discard port: nothing answers
        monkeypatch.setitem(
            pretrained.REGISTRY, name, dataclasses.replace(weights, url=url, sha256=None)
        )


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_block_runs_as_written(block, tmp_path, monkeypatch):
    home, cache = tmp_path / "home", tmp_path / "weights"
    home.mkdir()
    cache.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.chdir(tmp_path)
    if "pretrained.load(" in block:
        _published_weights_offline(cache, monkeypatch)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert list(home.iterdir()) == []
