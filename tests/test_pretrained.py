"""jresnet.pretrained: the registry, the verified download cache, and load()."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import os
import re
import threading

import jax
import numpy as np
import pytest

from jresnet import convert, datasets, pretrained
from jresnet.errors import WeightsError

try:
    import torch

    from jresnet.testing.torch_reference import randomize_batchnorm, torch_resnet
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(directory):
    """An HTTP server on 127.0.0.1 serving ``directory``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused, as offline)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _QuietHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}"


def weights_for(content: bytes, base_url: str, **overrides) -> pretrained.Weights:
    """A `Weights` entry named like torch.hub files: ``tiny-<sha256[:8]>.pth``."""
    digest = hashlib.sha256(content).hexdigest()
    fields = dict(
        name="tiny",
        depth=8,
        shortcut="A",
        dataset="cifar10",
        normalization="imagenet",
        accuracy=50.0,
        url=f"{base_url}/tiny-{digest[:8]}.pth",
        source="https://example.invalid/tiny",
    )
    fields.update(overrides)
    return pretrained.Weights(**fields)


def cache_files(cache) -> list[str]:
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


# --------------------------------------------------------------------------
# The registry.


def test_registry_entries_are_consistent() -> None:
    entries = pretrained.list()
    assert len(entries) == 14 and len({w.name for w in entries}) == 14
    for w in entries:
        assert re.fullmatch(r"[0-9a-f]{8}", w.hash_prefix), w
        assert w.url.startswith(w.source) and w.url.endswith(w.file_name)
        assert w.sha256 is None or w.sha256.startswith(w.hash_prefix)
        assert w.shortcut == ("A" if "akamaster" in w.source else "B")
        assert w.num_classes == datasets.get(w.dataset).num_classes
        mean, std = datasets.NORMALIZATIONS[w.normalization]
        assert len(mean) == len(std) == 3
    assert pretrained.get("resnet20").num_params() == 269_722  # option A
    assert pretrained.get("cifar10_resnet20").num_params() == 272_474  # option B, the seed's
    assert pretrained.get("cifar100_resnet20").num_params() == 272_474 + 64 * 90 + 90


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(WeightsError, match="cifar100_resnet56"):
        pretrained.get("resnet21")


def test_cache_dir_default_env_and_override(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(pretrained.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.cache_dir() == str(tmp_path / "home/.cache/jresnet/weights")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "env"))
    assert pretrained.cache_dir() == str(tmp_path / "env")
    assert pretrained.cache_dir(tmp_path / "arg") == str(tmp_path / "arg")


# --------------------------------------------------------------------------
# Download and verification, against a server on 127.0.0.1.


def test_download_verifies_caches_and_then_works_offline(tmp_path) -> None:
    content = np.random.default_rng(0).bytes(10_000)
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    with serve(served) as url:
        weights = weights_for(content, url)
        (served / weights.file_name).write_bytes(content)
        path = pretrained.fetch(weights, cache)
    assert path == str(cache / weights.file_name)
    assert (cache / weights.file_name).read_bytes() == content
    assert cache_files(cache) == [weights.file_name]  # no partial files left
    # The server is gone: the verified cached copy is used.
    assert pretrained.fetch(weights, cache) == path
    full = dataclasses.replace(weights, sha256=hashlib.sha256(content).hexdigest())
    assert pretrained.fetch(full, cache) == path


def test_corrupt_download_is_deleted_and_reported(tmp_path) -> None:
    content = np.random.default_rng(0).bytes(10_000)
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    with serve(served) as url:
        weights = weights_for(content, url)
        (served / weights.file_name).write_bytes(content[:-1] + b"!")  # one byte differs
        with pytest.raises(WeightsError, match="failed verification and was deleted"):
            pretrained.fetch(weights, cache)
    assert cache_files(cache) == []


def test_cached_file_with_the_wrong_full_hash_is_deleted(tmp_path) -> None:
    content = b"weights"
    weights = weights_for(content, closed_port_url(), sha256="0" * 64)
    (tmp_path / weights.file_name).write_bytes(content)
    with pytest.raises(WeightsError, match="expected 0000000000"):
        pretrained.fetch(weights, tmp_path)
    assert cache_files(tmp_path) == []


def test_a_wrong_file_in_an_unwritable_cache_keeps_the_verification_message(
    tmp_path, monkeypatch
) -> None:
    content = b"weights"
    weights = weights_for(content, closed_port_url(), sha256="0" * 64)
    (tmp_path / weights.file_name).write_bytes(content)

    def read_only(path):  # the tests may run as root, who removes files from 0o555 dirs
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(pretrained.os, "remove", read_only)
    with pytest.raises(WeightsError) as caught:
        pretrained.fetch(weights, tmp_path)
    message = str(caught.value)
    assert "failed verification" in message and "expected 0000000000" in message
    assert "could not be deleted (Permission denied)" in message
    assert cache_files(tmp_path) == [weights.file_name]


def test_http_404_names_the_url_and_the_cache_path(tmp_path) -> None:
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    with serve(served) as url:
        weights = weights_for(b"never served", url)
        with pytest.raises(WeightsError, match="HTTP 404") as info:
            pretrained.fetch(weights, cache)
    assert weights.url in str(info.value)
    assert str(cache / weights.file_name) in str(info.value)
    assert cache_files(cache) == []


def test_offline_names_the_url_and_the_cache_path(tmp_path) -> None:
    weights = weights_for(b"anything", closed_port_url())
    with pytest.raises(WeightsError, match="offline") as info:
        pretrained.fetch(weights, tmp_path / "cache")
    assert weights.url in str(info.value)
    assert f"put it at {tmp_path / 'cache' / weights.file_name}" in str(info.value)


# --------------------------------------------------------------------------
# load() and the command line, with state dicts built here.


def akamaster_file(path, num_classes: int = 10) -> dict:
    """Saves a random option-A ResNet-8 as akamaster does; returns its state dict."""
    torch.manual_seed(0)
    reference = torch_resnet(8, "A", num_classes)
    randomize_batchnorm(reference)
    state_dict = reference.state_dict()
    prefixed = {
        f"module.{k}": v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }
    torch.save({"state_dict": prefixed, "best_prec1": 50.0}, path)
    return state_dict


@requires_torch
def test_load_gives_the_model_and_logits_of_the_file(tmp_path, monkeypatch) -> None:
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    state_dict = akamaster_file(served / "staging.th")
    content = (served / "staging.th").read_bytes()
    with serve(served) as url:
        weights = weights_for(content, url)
        (served / weights.file_name).write_bytes(content)
        monkeypatch.setitem(pretrained.REGISTRY, "tiny", weights)
        model, variables = pretrained.load("tiny", cache)

    assert (model.blocks_per_stage, model.shortcut, model.num_classes) == (1, "A", 10)
    assert model.normalization == "imagenet"
    reference = torch_resnet(8, "A")
    reference.load_state_dict(state_dict)
    reference.eval()
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@requires_torch
def test_load_refuses_a_file_of_another_architecture(tmp_path, monkeypatch) -> None:
    akamaster_file(tmp_path / "staging.th", num_classes=100)
    content = (tmp_path / "staging.th").read_bytes()
    weights = weights_for(content, closed_port_url())
    (tmp_path / weights.file_name).write_bytes(content)  # placed in the cache by hand
    monkeypatch.setitem(pretrained.REGISTRY, "tiny", weights)
    with pytest.raises(WeightsError, match="100 classes"):
        pretrained.load("tiny", tmp_path)


@requires_torch
def test_cli_converts_a_published_name(tmp_path, monkeypatch, capsys) -> None:
    from jresnet import checkpoint

    akamaster_file(tmp_path / "staging.th")
    content = (tmp_path / "staging.th").read_bytes()
    weights = weights_for(content, closed_port_url(), normalization="cifar")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / weights.file_name).write_bytes(content)
    monkeypatch.setitem(pretrained.REGISTRY, "tiny", weights)
    out = tmp_path / "work"
    assert convert.main(["tiny", str(out), "--cache_dir", str(cache)]) == 0
    config = checkpoint.load_config(out)
    assert (config.model, config.shortcut, config.normalization) == ("resnet8", "A", "cifar")

    capsys.readouterr()
    assert convert.main(["no_such_name", str(tmp_path / "other")]) == 2
    assert "neither a file, a work directory nor a published weights name" in (
        capsys.readouterr().err
    )


@pytest.mark.slow  # traces every model, ResNet-1202 included
def test_main_prints_every_name(capsys) -> None:
    assert pretrained.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    for w in pretrained.list():
        assert f"| `{w.name}` | {w.depth} | {w.shortcut} |" in out
    assert "| `cifar100_resnet20` | 20 | B | 278,324 | cifar100 | cifar100 | 68.83% |" in out
