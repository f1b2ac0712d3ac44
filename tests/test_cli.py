"""The ``jresnet`` command (jresnet.cli, the console script's function), ``python -m
jresnet``, ``jresnet train``/``eval`` (jresnet.train_command) and the root train.py."""

import subprocess
import sys

import pytest

from jresnet import cli, errors, train_command
from jresnet.configs import default
from tests.conftest import REPO


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == errors.EXIT_OK
    out = capsys.readouterr().out
    for name in ("train", "eval", "predict", "convert", "export", "pretrained", "prepare"):
        assert f"\n  {name} " in out
    assert set(cli.COMMANDS) >= {"summarize"}


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert cli.main([]) == errors.EXIT_USAGE
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_suggests_the_closest(capsys):
    assert cli.main(["trian"]) == errors.EXIT_USAGE
    assert "did you mean 'train'?" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_a_help_listing_its_options(name, capsys):
    assert cli.main([name, "--help"]) == errors.EXIT_OK
    out = capsys.readouterr().out
    assert "usage:" in out and "--" in out


def test_a_command_whose_module_is_missing_says_so(monkeypatch, capsys):
    command = cli.Command("jresnet.no_such_module", "main", "")
    monkeypatch.setitem(cli.COMMANDS, "ghost", command)
    assert cli.main(["ghost"]) == errors.EXIT_USAGE
    assert "`jresnet ghost` needs jresnet.no_such_module" in capsys.readouterr().err


def test_train_help_lists_every_config_key_with_default_and_comment(capsys):
    assert cli.main(["train", "--help"]) == errors.EXIT_OK
    out = capsys.readouterr().out
    for key in default.get_config():
        assert f"--config.{key}=" in out
    assert "--config.batch_size=128\n      global batch, images per step" in out
    assert "--workdir" in out


def test_help_shows_the_values_of_the_given_config_file(capsys):
    argv = ["--config=jresnet/configs/paper.py", "--help"]
    assert train_command.main(argv) == errors.EXIT_OK
    out = capsys.readouterr().out
    assert "--config.shortcut=A\n" in out and "--config.num_epochs=182\n" in out


def test_parse_takes_overrides_and_relative_config_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the README's relative path, outside the repository
    argv = ["--workdir=w", "--config=jresnet/configs/paper.py", "--config.num_epochs=3"]
    config, workdir, verbosity_given = train_command.parse(argv)
    assert (config.shortcut, config.num_epochs, workdir) == ("A", 3, "w")
    assert not verbosity_given


def test_eval_is_train_with_eval_only(monkeypatch):
    seen = []

    def parse(argv, prog):
        seen.append(list(argv))
        raise train_command._UsageError("stop")

    monkeypatch.setattr(train_command, "parse", parse)
    assert cli.main(["eval", "--workdir=w"]) == errors.EXIT_USAGE
    assert seen == [["--workdir=w", "--config.eval_only=True"]]


def test_bad_key_is_one_line_with_exit_2(capsys):
    assert cli.main(["train", "--config.batchsize=3"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: no such config key 'batchsize'") and err.count("\n") == 1
    assert 'Did you mean "batch_size"' in err


def _run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_python_m_jresnet_and_train_py_from_another_directory(tmp_path):
    result = _run([sys.executable, "-m", "jresnet", "train", "--help"], tmp_path)
    assert result.returncode == 0 and "--config.steps_per_call=10" in result.stdout
    result = _run([sys.executable, str(REPO / "train.py"), "--help"], tmp_path)
    assert result.returncode == 0 and "--config.steps_per_call=10" in result.stdout


def test_python_m_jresnet_train_points_to_the_command(tmp_path):
    """``python -m jresnet.train`` used to exit 0 printing nothing."""
    result = _run([sys.executable, "-m", "jresnet.train", "--help"], tmp_path)
    assert result.returncode == errors.EXIT_USAGE
    assert "jresnet train --workdir DIR" in result.stderr
