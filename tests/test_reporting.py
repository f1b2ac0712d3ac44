"""jresnet.reporting: console, metrics file, resume truncation, summary, plot, TensorBoard."""

import errno
import io
import json
import os
import subprocess
import sys

import pytest

from jresnet import errors, reporting
from jresnet.configs import default
from tests.conftest import REPO


def _record(epoch, eval_accuracy):
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "train_loss": 2.0 / epoch,
        "train_accuracy": 0.1 * epoch,
        "learning_rate": 0.1,
        "eval_loss": 2.5 / epoch,
        "eval_accuracy": eval_accuracy,
        "images_per_s": 100.0,
        "epoch_time_s": 1.0,
    }


def test_format_duration():
    assert reporting.format_duration(0) == "0:00:00"
    assert reporting.format_duration(3725.2) == "1:02:05"


def test_metrics_log_writes_jsonl_tensorboard_and_summary(tmp_path):
    log = reporting.MetricsLog(str(tmp_path), [])
    for epoch, accuracy in [(1, 0.3), (2, 0.6), (3, 0.5)]:
        log.write(_record(epoch, accuracy))
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    summary = log.summary(wall_time_s=12.0)
    assert summary["final_eval_accuracy"] == 0.5
    assert summary["best_eval_accuracy"] == 0.6 and summary["best_epoch"] == 2
    assert "best 60.00% (epoch 2)" in reporting.format_summary(summary)


def test_the_tensorboard_writer_does_not_import_pytorch(tmp_path):
    pytest.importorskip("torch")  # what tensorboardX would import
    code = (
        "import sys\nfrom jresnet import reporting\n"
        f"reporting.MetricsLog({str(tmp_path)!r}, []).close()\n"
        "print('torch' in sys.modules)\nimport torch\nprint(torch.tensor(1).item())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "1"]  # not imported, and importable after
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_rewrites_the_file_from_the_checkpoints_history(tmp_path):
    log = reporting.MetricsLog(str(tmp_path), [])
    for epoch in (1, 2, 3):
        log.write(_record(epoch, 0.1 * epoch))
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "trunc')  # killed mid-write
    history = reporting.read_metrics(str(tmp_path))[:2]  # what the resumed checkpoint holds
    resumed = reporting.MetricsLog(str(tmp_path), history)
    resumed.close()
    assert reporting.read_metrics(str(tmp_path)) == history


def test_plot_writes_a_png(tmp_path):
    path = reporting.plot_curves([_record(1, 0.3), _record(2, 0.5)], str(tmp_path / "c.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (what the live bar draws on)."""

    def isatty(self) -> bool:
        return True


def _progress_metrics():
    return {"loss": 1.5, "accuracy": 0.25, "learning_rate": 0.1}


def test_progress_on_a_terminal_redraws_one_bar_then_prints_one_line_per_epoch(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = reporting.Progress(total_steps=32, start_step=0, batch_size=128, log_every_steps=50)
    assert progress.live
    assert all(progress.due(done, done + 4, 16) for done in (0, 4, 8))  # every call
    assert not progress.due(12, 16, 16)  # the epoch's end has its own line
    for done in (4, 8, 12):
        progress.update(0, 2, done, 16, _progress_metrics())
    reporting.info("a message while the bar is shown")
    progress.update(0, 2, 12, 16, _progress_metrics())
    progress.epoch_done(_record(1, 0.5), num_epochs=2)
    out = terminal.getvalue()
    lines = out.split("\n")
    assert lines[0].count("\r") >= 3 and "12/16" in lines[0] and "a message" in lines[0]
    assert "loss 1.5000" in lines[0] and "img/s" in lines[0] and "ETA" in lines[0]
    assert lines[0].rstrip().endswith("a message while the bar is shown")  # bar cleared first
    assert "epoch 1/2 done" in lines[1] and lines[1].startswith("\r")  # replaces the bar
    assert lines[2] == ""  # nothing after the epoch's line


def test_progress_through_a_pipe_prints_plain_lines_every_log_every_steps():
    pipe = io.StringIO()
    progress = reporting.Progress(32, 0, 128, log_every_steps=8, stream=pipe)
    assert not progress.live
    shown = [done for done in (4, 8, 12) if progress.due(done - 4, done, 16)]
    assert shown == [8]
    progress.update(0, 2, 8, 16, _progress_metrics())
    progress.epoch_done(_record(1, 0.5), num_epochs=2)
    lines = pipe.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/2 step 8/16 loss 1.5000 acc 25.00% lr 0.1 ")
    assert lines[1].startswith("epoch 1/2 done")
    assert "\r" not in pipe.getvalue()


def test_bar_fits_the_terminal_width():
    text = reporting._bar_text(0, 200, 5, 390, _progress_metrics(), 650.0, "1:00:00", 60)
    assert len(text) <= 59 and text.startswith("epoch 1/200")


def test_counts_are_singular_for_one():
    assert reporting.plural(1, "epoch") == "1 epoch"
    assert reporting.plural(2, "epoch") == "2 epochs"
    summary = {"epochs": 1, "steps": 1, "wall_time_s": 1.0}
    summary |= {"final_eval_accuracy": 0.5, "best_eval_accuracy": 0.5, "best_epoch": 1}
    assert reporting.format_summary(summary).startswith("Finished 1 epoch (1 step):")


def test_tensorboard_tags_are_grouped_in_percent_against_the_global_step(tmp_path):
    log = reporting.MetricsLog(str(tmp_path), [])
    scalars = []
    log._writer.add_scalar = lambda tag, value, step: scalars.append((tag, value, step))
    log.write(_record(2, 0.5))
    log.close()
    written = {tag: (value, step) for tag, value, step in scalars}
    assert written["eval/accuracy"] == (50.0, 20)  # % as on the console; x: global step
    assert written["train/accuracy"] == (pytest.approx(20.0), 20)
    assert written["train/loss"] == (1.0, 20)
    assert written["eval/loss"] == (1.25, 20)
    assert written["train/learning_rate"] == (0.1, 20)
    assert all("/" in tag for tag in written)


def test_curves_are_rewritten_after_an_epoch_when_due(tmp_path):
    log = reporting.MetricsLog(str(tmp_path), [], title="resnet8 seed 0", plot_every_s=0)
    log.write(_record(1, 0.3))
    first = (tmp_path / "curves.png").read_bytes()
    log.write(_record(2, 0.5))
    log.close()
    assert (tmp_path / "curves.png").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png",
        "metrics.jsonl",
        "tensorboard",
    ]  # no temporary file left


def test_quick_epochs_redraw_no_curves_until_the_end(tmp_path):
    log = reporting.MetricsLog(str(tmp_path), [], plot_every_s=3600)
    log.write(_record(1, 0.3))
    log.write(_record(2, 0.5))
    assert not (tmp_path / "curves.png").exists()  # not due yet
    log.plot()  # the end of the run (or its interruption) draws them at once
    log.close()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_have_a_title_integer_epochs_log_loss_percent_and_learning_rate():
    records = [_record(1, 0.3), _record(2, 0.5), _record(3, 0.6)]
    records[0]["eval_loss"] = 13.9  # a first epoch's outlier must not squash the axis
    fig = reporting.curves_figure(records, title="resnet8 (shortcut B) ... seed 0")
    ax_loss, ax_acc, ax_lr = fig.axes
    assert fig._suptitle.get_text() == "resnet8 (shortcut B) ... seed 0"
    assert ax_loss.get_yscale() == "log"
    assert "%" in ax_acc.get_ylabel() and max(ax_acc.lines[1].get_ydata()) == 60.0
    assert "learning rate" in ax_lr.get_ylabel()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_describe_run_names_model_recipe_and_seed():
    config = default.get_config()
    text = reporting.describe_run(config)
    for part in ("resnet20", "shortcut B", "cifar10", "batch 128", "lr 0.1", "seed 0"):
        assert part in text


def test_a_full_disk_while_appending_metrics_is_one_error_and_a_rerun_recovers(
    tmp_path, monkeypatch
):
    log = reporting.MetricsLog(str(tmp_path), [])
    log.write(_record(1, 0.3))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_full)
        with pytest.raises(errors.OutputError, match=r"no space left.*rerun"):
            log.write(_record(2, 0.5))
    log.close()
    # The checkpoint of epoch 2 holds both records: the resumed run rewrites the file.
    history = [_record(1, 0.3), _record(2, 0.5)]
    reporting.MetricsLog(str(tmp_path), history).close()
    assert reporting.read_metrics(str(tmp_path)) == history
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_drawing_curves_is_one_error_and_leaves_no_partial_file(
    tmp_path, monkeypatch
):
    from matplotlib.figure import Figure

    def half_then_disk_full(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", half_then_disk_full)
    with pytest.raises(errors.OutputError, match="curves"):
        reporting.plot_curves([_record(1, 0.3)], str(tmp_path / "curves.png"))
    assert list(tmp_path.iterdir()) == []


def test_a_planted_metrics_symlink_is_refused_and_its_victim_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    workdir = tmp_path / "w"
    workdir.mkdir()
    log = reporting.MetricsLog(str(workdir), [])
    (workdir / reporting.METRICS_FILE).unlink()
    (workdir / reporting.METRICS_FILE).symlink_to(victim)  # planted while the run goes on
    with pytest.raises(errors.OutputError, match="symbolic link"):
        log.write(_record(1, 0.5))
    log.close()
    with pytest.raises(errors.OutputError, match="symbolic link"):
        reporting.MetricsLog(str(workdir), [_record(1, 0.5)])  # a resumed run's rewrite
    with pytest.raises(errors.OutputError, match="symbolic link"):
        (workdir / "curves.png").symlink_to(victim)
        reporting.plot_curves([_record(1, 0.5)], str(workdir / "curves.png"))
    assert victim.read_text() == "precious"
