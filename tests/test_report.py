"""`taper report`: success curves read back from a run folder's metrics."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from taper import report
from taper.cli import main
from taper.config import Config


def fake_run(path, suite, tasks, success):
    """A run folder with config.json and eval rows success[step_index][task]."""
    path.mkdir()
    (path / "config.json").write_text(Config(suite=suite).to_json())
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"kind": "train", "step": 5, "loss/critic": 1.0}) + "\n")
        for k, row in enumerate(success):
            for i, (task, value) in enumerate(zip(tasks, row)):
                f.write(json.dumps({"kind": "eval", "step": 10 * (k + 1), "task": task,
                                    "task_id": i, "success": value, "return": 100 * value}) + "\n")
    return path


def test_curves_and_table_read_the_eval_rows(tmp_path):
    run = fake_run(tmp_path / "a", "mt10-rand", ["t0", "t1"], [[0.0, 0.2], [0.6, 1.0]])
    steps, tasks, success, returns = report.eval_curves(run)
    assert steps == [10, 20] and tasks == ["t0", "t1"]
    np.testing.assert_array_equal(success, [[0.0, 0.2], [0.6, 1.0]])
    np.testing.assert_array_equal(returns, [[0.0, 20.0], [60.0, 100.0]])
    table = report.markdown_table(run)
    assert "| 10 | 0 | 20 | 10.0 | 10.0 |" in table and "| 20 | 60 | 100 | 80.0 | 80.0 |" in table


def test_cli_plots_runs_of_one_suite_and_refuses_mixed_suites(tmp_path):
    a = fake_run(tmp_path / "a", "mt10-rand", ["t0", "t1"], [[0.0, 0.2]])
    b = fake_run(tmp_path / "b", "mt10-rand", ["t0", "t1"], [[0.4, 0.2]])
    c = fake_run(tmp_path / "c", "gym:Pendulum-v1", ["Pendulum-v1"], [[0.0]])
    png = tmp_path / "curves.png"
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["report", str(a), str(c), "--plot", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "Pendulum-v1" in bad.output


def test_a_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        report.eval_curves(tmp_path)


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "a", "mt10-rand", ["t0"], [[0.5]])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", str(run), "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert "plots need matplotlib: pip install" in result.output
    assert result.output.count("Error") == 1 and not (tmp_path / "c.png").exists()
