"""`taper report`: the paper's tables and the figures' numbers, read back from run folders."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from taper import report
from taper.cli import main
from taper.config import Config

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(path, success, tasks=("t0", "t1"), train=(), **settings):
    """A run folder: config.json from `settings`, eval rows success[point][task] at steps
    10, 20, ..., and the given train rows."""
    path.mkdir(parents=True)
    settings = {"suite": "mt10-rand", "steps_per_env": 10 * max(len(success), 1),
                "eval_every": 10, **settings}
    (path / "config.json").write_text(Config(**settings).to_json())
    with open(path / "metrics.jsonl", "w") as f:
        for row in train:
            f.write(json.dumps({"kind": "train", **row}) + "\n")
        for k, row in enumerate(success):
            for i, (task, value) in enumerate(zip(tasks, row)):
                f.write(json.dumps({"kind": "eval", "step": 10 * (k + 1), "task": task,
                                    "task_id": i, "success": value, "return": 1.0}) + "\n")
            f.write(json.dumps({"kind": "eval_mean", "step": 10 * (k + 1)}) + "\n")
    return path


def groups_of(*paths):
    return report.group_runs([report.load_run(p) for p in report.find_runs(paths)])


def invoke(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)])


S0 = [[0.0, 0.2], [0.6, 1.0]]
S1 = [[0.2, 0.2], [0.2, 0.4]]


def test_find_runs_walks_a_sweep_folder_and_skips_other_folders(tmp_path):
    a = fake_run(tmp_path / "sweep" / "taper_ta-per_s0", S0)
    b = fake_run(tmp_path / "sweep" / "taper_ta-per_s1", S1, seed=1)
    (tmp_path / "sweep" / "notes").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    (tmp_path / "sweep" / "taper_ta-per_s0" / "tensorboard").mkdir()
    assert report.find_runs([tmp_path / "sweep"]) == [a, b]
    assert report.find_runs([b, tmp_path / "sweep"]) == [b, a]
    with pytest.raises(ValueError, match="notes.*holds no run folder"):
        report.find_runs([tmp_path / "sweep" / "notes"])


def test_a_point_cut_short_is_not_a_point_and_a_missing_file_is_a_clear_error(tmp_path):
    run = fake_run(tmp_path / "a", S0)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "eval", "step": 30, "task": "t0", "task_id": 0,
                            "success": 1.0, "return": 1.0}) + "\n")
    loaded = report.load_run(run)
    assert loaded.steps == (10, 20) and loaded.tasks == ("t0", "t1")
    np.testing.assert_array_equal(loaded.success, S0)
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        report.load_run(tmp_path)


def test_tables_1_and_2_and_per_task_follow_the_paper_protocol(tmp_path):
    fake_run(tmp_path / "s0", S0)
    fake_run(tmp_path / "s1", S1, seed=1)
    [group] = groups_of(tmp_path)
    runs = np.array([S0, S1])                                  # (seeds, points, tasks)
    seed_means = runs.mean(axis=2)                             # task mean per seed and point
    best = int(np.argmax(seed_means.mean(axis=0)))
    b = report.best_point(group)
    assert (b.step, b.seeds) == (10 * (best + 1), 2)
    assert b.mean == pytest.approx(seed_means.mean(axis=0)[best])
    assert b.std == pytest.approx(np.std(seed_means[:, best]))
    steps, mean, std, seeds = report.across_tasks(group)
    np.testing.assert_allclose(mean, runs.mean(axis=0).mean(axis=1))
    np.testing.assert_allclose(std, runs.mean(axis=0).std(axis=1))
    assert steps == (10, 20) and list(seeds) == [2, 2]

    result = invoke(tmp_path)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"| mt10-rand | taper | ta-per | {100 * b.mean:.1f} ± {100 * b.std:.1f} | 20 | 2 |  |" \
        in text
    for s, m, d in zip(steps, mean, std):
        assert f"| {s} | {100 * m:.1f} ± {100 * d:.1f} |" in text
    per_task, spread = runs[:, best].mean(axis=0), runs[:, best].std(axis=0)
    assert f"| t1 | {100 * per_task[1]:.1f} ± {100 * spread[1]:.1f} |" in text
    assert "Methods × samplers" not in text

    rows = list(csv.DictReader(io.StringIO(invoke(tmp_path, "--format", "csv").output)))
    assert [r["table"] for r in rows] == ["1", "2", "2", "per-task", "per-task"]
    assert float(rows[0]["success_mean"]) == pytest.approx(100 * b.mean)
    assert [float(r["success_std"]) for r in rows[1:3]] == pytest.approx(100 * std)
    assert [float(r["success_mean"]) for r in rows[3:]] == pytest.approx(100 * per_task)
    assert {r["std_across"] for r in rows} == {"seeds", "tasks"}


def test_an_incomplete_run_counts_only_where_it_reached_and_is_named(tmp_path):
    fake_run(tmp_path / "s0", [[0.2, 0.2], [0.4, 0.4], [1.0, 1.0]])
    fake_run(tmp_path / "s1", [[0.6, 0.6]], seed=1, steps_per_env=30)
    [group] = groups_of(tmp_path)
    steps, mean, std, seeds = report.success_curve(group)
    assert steps == (10, 20, 30) and list(seeds) == [2, 1, 1]
    np.testing.assert_allclose(mean, [0.4, 0.4, 1.0])
    np.testing.assert_allclose(std, [0.2, 0.0, 0.0])
    assert report.best_point(group) == report.Best(10, pytest.approx(0.4), pytest.approx(0.2), 2)
    assert [run.cfg.seed for run in group.incomplete] == [1]
    text = invoke(tmp_path).output
    assert "seed 1: 1 of 3 points" in text
    assert "| 20 | 40.0 ± 0.0 (1 of 2 seeds) |" in text and "| 10 | 40.0 ± 0.0 |" in text

    fake_run(tmp_path / "s2", [], seed=2, steps_per_env=30)
    [group] = groups_of(tmp_path)
    assert report.best_point(group) is None
    assert list(report.across_tasks(group)[3]) == [2, 1, 1]
    text = invoke(tmp_path).output
    assert "| no point reached by every seed |  | 3 | seed 1: 1 of 3 points; seed 2: 0 of 3" \
        in text and "Per task" not in text


def test_a_run_without_evaluations_yet_is_reported_as_such(tmp_path):
    fake_run(tmp_path / "s0", [])
    result = invoke(tmp_path, "--plots", tmp_path / "figs", "--format", "csv")
    assert result.exit_code == 0, result.output
    [row] = csv.DictReader(io.StringIO(result.output.split("figure:")[0]))
    assert (row["table"], row["success_mean"], row["seeds"]) == ("1", "", "1")


def test_runs_differing_in_more_than_the_seed_are_not_pooled(tmp_path):
    a = fake_run(tmp_path / "a", S0)
    b = fake_run(tmp_path / "b", S1, seed=1, lr=1e-4)
    c = fake_run(tmp_path / "c", S1)
    result = invoke(a, b)
    assert result.exit_code == 2 and "lr 0.0003 vs 0.0001" in result.output
    result = invoke(a, c)
    assert result.exit_code == 2 and "both have seed 0" in result.output


def test_methods_cross_samplers_when_the_runs_span_them(tmp_path):
    fake_run(tmp_path / "a", S0, method="taper", sampler="ta-per")
    fake_run(tmp_path / "b", S1, method="taper", sampler="uniform")
    fake_run(tmp_path / "c", S1, method="mtsac", sampler="uniform")
    groups = groups_of(tmp_path)
    assert [g.key[1:] for g in groups] == [("taper", "ta-per"), ("taper", "uniform"),
                                           ("mtsac", "uniform")]
    text = report.markdown(groups)
    cross = text[text.index("Methods × samplers"):]
    b = report.best_point(groups[2])
    assert "| method | ta-per | uniform |" in cross
    assert f"| mtsac |  | {100 * b.mean:.1f} ± {100 * b.std:.1f} (1) |" in cross


def test_train_curves_average_quota_and_alpha_over_seeds(tmp_path):
    rows0 = [{"step": 5, "quota/0": 10, "quota/1": 20},
             {"step": 10, "quota/0": 12, "quota/1": 18, "alpha/0": 0.5, "alpha/1": 0.25}]
    rows1 = [{"step": 5, "quota/0": 14, "quota/1": 16},
             {"step": 10, "quota/0": 16, "quota/1": 14, "alpha/0": 0.3, "alpha/1": 0.15}]
    fake_run(tmp_path / "a", S0, train=rows0)
    fake_run(tmp_path / "b", S1, train=rows1, seed=1)
    steps, alpha = report.per_task_train_metric(tmp_path / "a", "alpha")
    assert steps == (5, 10)
    np.testing.assert_array_equal(alpha, [[np.nan, np.nan], [0.5, 0.25]])
    [group] = groups_of(tmp_path)
    steps, quota = report.train_metric_curves(group, "quota")
    np.testing.assert_allclose(quota, [[12, 18], [14, 16]])
    np.testing.assert_allclose(report.train_metric_curves(group, "alpha")[1][1], [0.4, 0.2])


def test_plots_are_written_and_a_single_point_run_shows_in_each(tmp_path, monkeypatch):
    fake_run(tmp_path / "a", S0, train=[{"step": 5, "quota/0": 10, "quota/1": 22}])
    fake_run(tmp_path / "b", [[0.5, 0.5]], method="mtsac", sampler="uniform")
    figures = []
    save = report._save
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: figures.append(fig) or
                        save(plt, fig, path))
    result = invoke(tmp_path, "--plots", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["success.png", "tasks_mt10-rand.png", "train_mt10-rand_mtsac_uniform.png",
                     "train_mt10-rand_taper_ta-per.png"]
    for name in names:
        data = (tmp_path / "figs" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000
    assert f"figure: {tmp_path / 'figs' / 'success.png'}" in result.output
    success, tasks = figures[0].axes[0], figures[1].axes[1]
    for ax, expected in ((success, [50.0]), (tasks, [50.0])):
        single = [line for line in ax.lines if len(line.get_xdata()) == 1]
        assert len(single) == 1 and single[0].get_marker() == "o"
        np.testing.assert_allclose(single[0].get_ydata(), expected)
    np.testing.assert_allclose(figures[2].axes[0].lines[1].get_ydata(), [22])


def test_plots_without_matplotlib_say_how_to_get_it(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "a", [[0.5, 0.5]])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke(run, "--plots", tmp_path / "figs")
    assert result.exit_code == 1
    assert "plots need matplotlib: pip install" in result.output
    assert result.output.count("Error") == 1 and not (tmp_path / "figs").exists()


# ---------------------------------------------------------------------- t-SNE of u
def test_tsne_keeps_tasks_apart_that_the_embedding_separates():
    rng = np.random.default_rng(0)
    centres = 6.0 * rng.standard_normal((4, 16))
    task_ids = np.repeat(np.arange(4), 40)
    u = centres[task_ids] + rng.standard_normal((160, 16))
    points = report.tsne(u, seed=0)
    assert points.shape == (160, 2)
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert np.all(task_ids[distance.argmin(axis=1)] == task_ids)
    within = np.mean([distance[a][:, a].min(axis=1).mean()
                      for a in (task_ids[:, None] == np.arange(4)).T])
    centroids = np.array([points[task_ids == i].mean(axis=0) for i in range(4)])
    assert within < 0.2 * np.linalg.norm(centroids[:, None] - centroids[None], axis=-1).max()


def test_tsne_without_scikit_learn_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match=r"t-SNE figure needs scikit-learn: pip install"):
        report.tsne(np.zeros((5, 2)), seed=0)


class _Envs:
    """Two tasks; the observation is (task id, step count) repeated to obs_dim."""

    def __init__(self):
        self.t = 0

    def _obs(self):
        return np.array([[i, self.t] * 2 for i in range(2)], np.float32)

    def reset(self, seed):
        self.t = seed
        return self._obs(), {}

    def step(self, actions):
        assert actions.shape == (2, 1)
        self.t += 1
        return self._obs(), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), {}


class _Agent:
    def act(self, obs, task_ids, deterministic):
        assert deterministic and list(task_ids) == [0, 1]
        return np.zeros((len(obs), 1), np.float32)


def test_collect_states_records_every_state_of_every_task():
    states, task_ids = report.collect_states(_Agent(), _Envs(), 2, steps=3, seed=5)
    assert states.shape == (6, 4) and list(task_ids) == [0, 1] * 3
    np.testing.assert_array_equal(states[:, 0], task_ids)
    np.testing.assert_array_equal(states[:, 1], [5, 5, 6, 6, 7, 7])


def test_unique_features_are_the_unique_mlp_of_a_taper_agent():
    import torch

    from taper.sac import Agent

    small = dict(hidden_sizes=(8,), unique_hidden_sizes=(8,), unique_dim=3, num_param_sets=2)
    agent = Agent(Config(method="taper", **small), 5, 2, 2, "cpu")
    states = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    u = report.unique_features(agent, states)
    with torch.no_grad():
        expected = agent.method.unique(torch.from_numpy(states)).numpy()
    assert u.shape == (7, 3)
    np.testing.assert_allclose(u, expected)
    mtsac = Agent(Config(method="mtsac", sampler="uniform", **small), 5, 2, 2, "cpu")
    with pytest.raises(ValueError, match="method='mtsac' has no unique features"):
        report.unique_features(mtsac, states)


@pytest.mark.slow
def test_plots_of_a_trained_taper_run_include_its_tsne(tmp_path):
    from taper.train import train

    cfg = Config(suite="mt1:reach-v3", steps_per_env=100, learning_starts=50, eval_every=50,
                 log_every=50, hidden_sizes=(16,), unique_hidden_sizes=(16,), unique_dim=8,
                 num_param_sets=2, batch_size=32, buffer_size=2000, episode_length=40,
                 eval_episodes=1, overlap_envs=False, out=str(tmp_path / "run"))
    train(cfg)
    embedding, task_ids, names = report.run_tsne(tmp_path / "run", episodes=2)
    assert embedding.shape == (80, 2) and np.all(np.isfinite(embedding))
    assert list(task_ids) == [0] * 80 and names == ("reach-v3",)
    result = invoke(tmp_path / "run", "--plots", tmp_path / "figs", "--tsne-episodes", 1)
    assert result.exit_code == 0, result.output
    data = (tmp_path / "figs" / "tsne_mt1-reach-v3_taper_ta-per_s0.png").read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def test_a_lone_run_short_of_its_planned_points_is_named_incomplete(tmp_path):
    fake_run(tmp_path / "s0", [[0.2, 0.4]], steps_per_env=50)           # 1 of 5 points so far
    [group] = groups_of(tmp_path)
    assert [run.cfg.seed for run in group.incomplete] == [0]
    assert "seed 0: 1 of 5 points" in invoke(tmp_path).output
    fake_run(tmp_path / "done", [[0.2, 0.4]], seed=1, method="paco")      # 1 of 1: finished
    assert [g.incomplete for g in groups_of(tmp_path / "done")] == [[]]
