"""jresnet.reporting: metrics file, resume truncation, summary, plot."""

import json

import pytest

from jresnet import reporting
from jresnet.errors import OutputError


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


def test_a_planted_metrics_symlink_is_refused_and_its_victim_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    workdir = tmp_path / "w"
    workdir.mkdir()
    log = reporting.MetricsLog(str(workdir), [])
    (workdir / reporting.METRICS_FILE).unlink()
    (workdir / reporting.METRICS_FILE).symlink_to(victim)  # planted while the run goes on
    with pytest.raises(OutputError, match="symbolic link"):
        log.write(_record(1, 0.5))
    log.close()
    with pytest.raises(OutputError, match="symbolic link"):
        reporting.MetricsLog(str(workdir), [_record(1, 0.5)])  # a resumed run's rewrite
    with pytest.raises(OutputError, match="symbolic link"):
        (workdir / "curves.png").symlink_to(victim)
        reporting.plot_curves([_record(1, 0.5)], str(workdir / "curves.png"))
    assert victim.read_text() == "precious"
