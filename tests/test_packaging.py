"""pyproject.toml: every extra installs on every supported Python, and agrees with
constraints.txt (the README installs everything with ``-c constraints.txt``)."""

import importlib
import re

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from jresnet import cli
from tests.conftest import REPO

# The jax releases jresnet is tested with, and the oldest Python each supports (their
# Requires-Python): jax 0.10.2 needs 3.11, jax 0.11 and 0.12 need 3.12.
TESTED_JAX = {"0.10.2": "3.11", "0.11.2": "3.12", "0.12.0.1": "3.12"}
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")


def _project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _requirements(extra: str | None, python: str) -> list[Requirement]:
    """The requirements pip installs for ``.[extra]`` (or the plain package) on ``python``."""
    project = _project()
    listed = project["dependencies"] + project["optional-dependencies"].get(extra, [])
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    environment["extra"] = extra or ""
    requirements = [Requirement(r) for r in listed]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def _supported_pythons() -> list[str]:
    requires = SpecifierSet(_project()["requires-python"])
    return [p for p in PYTHONS if requires.contains(f"{p}.0")]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name] = str(requirement.specifier).removeprefix("==")
    return pins


def test_supported_pythons_are_those_a_tested_jax_supports():
    oldest = min(TESTED_JAX.values(), key=Version)
    assert _supported_pythons() == [p for p in PYTHONS if Version(p) >= Version(oldest)]


@pytest.mark.parametrize("extra", [None, *sorted(_project()["optional-dependencies"])])
def test_every_extra_allows_a_tested_jax_on_every_supported_python(extra):
    for python in _supported_pythons():
        specifier = SpecifierSet()
        for requirement in _requirements(extra, python):
            if requirement.name == "jax":
                specifier &= requirement.specifier
        installable = [v for v, oldest in TESTED_JAX.items() if Version(python) >= Version(oldest)]
        assert list(specifier.filter(installable)), (extra, python, str(specifier))


@pytest.mark.parametrize("extra", [None, *sorted(_project()["optional-dependencies"])])
def test_constraints_satisfy_every_extra(extra):
    pins = _constraints()
    for python in _supported_pythons():
        for requirement in _requirements(extra, python):
            if requirement.name in pins:
                assert requirement.specifier.contains(pins[requirement.name]), requirement


def test_missing_package_messages_name_an_install_command_that_works_from_a_clone():
    """``pip install 'jresnet[export]'`` needs an index that has jresnet; none has."""
    extras = set(_project()["optional-dependencies"])
    named = []
    for path in sorted((REPO / "jresnet").rglob("*.py")):
        text = path.read_text()
        assert "jresnet[" not in text, path
        named += re.findall(r"pip install -e '\.\[(\w+)\]'", text)
    assert named, "no missing-package message found"
    assert set(named) <= extras


def test_console_script_is_the_cli_main():
    module, _, function = _project()["scripts"]["jresnet"].partition(":")
    assert getattr(importlib.import_module(module), function) is cli.main
