"""The `taper` command: click options mapped 1:1 onto `Config` and the benchmark."""

from __future__ import annotations

import dataclasses
import json

import click

from taper.config import (DEVICES, METHODS, PRESETS, PRIORITY_SCALES, REWARD_VERSIONS, SAMPLERS,
                          Config, preset_for)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """taper: shared-unique features and TA-PER for multi-task RL on Meta-World."""


@main.command("bench-replay")
@click.option("--num-tasks", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--capacity", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Transitions per task, all filled before timing.")
@click.option("--batch-size", default=1280, show_default=True, type=click.IntRange(min=1))
@click.option("--obs-dim", default=39, show_default=True, type=click.IntRange(min=1))
@click.option("--act-dim", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=50, show_default=True, type=click.IntRange(min=20),
              help="Timed repetitions per (impl, op), interleaved.")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also time installed peer PER libraries (cpprb, tianshou, torchrl).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
def bench_replay(num_tasks, capacity, batch_size, obs_dim, act_dim, repeats, peers, seed,
                 as_json) -> None:
    """Time sample / update_priorities / add of every sampler (and peers) in one run."""
    from taper import bench

    result = bench.run(num_tasks=num_tasks, capacity=capacity, batch_size=batch_size,
                       obs_dim=obs_dim, act_dim=act_dim, repeats=repeats, peers=peers,
                       seed=seed)
    if as_json:
        click.echo(json.dumps(result.rows, indent=1))
    else:
        click.echo(bench.format_table(result))


class _Widths(click.ParamType):
    """Comma-separated layer widths, e.g. 400,400,400."""

    name = "WIDTHS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(w) for w in value.split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers, e.g. 400,400,400",
                      param, ctx)


_CONFIG_OPTIONS = (
    click.option("--suite", help="mt10-rand, mt50-rand, mt10, mt50, mt1:<task> or gym:<EnvId>."
                 "  [default: mt10-rand]"),
    click.option("--method", type=click.Choice(METHODS), help="[default: taper]"),
    click.option("--sampler", type=click.Choice(SAMPLERS), help="[default: ta-per for taper, uniform for mtsac and paco]"),
    click.option("--seed", type=int, help="[default: 0]"),
    click.option("--preset", type=click.Choice(tuple(PRESETS)),
                 help="Sizes to start from.  [default: paper on CUDA, cpu-hour otherwise]"),
    click.option("--device", type=click.Choice(DEVICES), help="[default: auto]"),
    click.option("--out", help="Run folder.  [default: a new folder under runs/]"),
    click.option("--steps-per-env", type=int, help="Environment steps per task."),
    click.option("--learning-starts", type=int, help="Vector steps of random actions first."),
    click.option("--batch-size", type=int, help="K, transitions per update."),
    click.option("--buffer-size", type=int, help="Transitions kept over all tasks."),
    click.option("--gradient-steps", type=int, help="Updates per vector step."),
    click.option("--hidden-sizes", type=_Widths(), help="Actor/critic widths, e.g. 400,400,400."),
    click.option("--k-min", type=int, help="TA-PER minimum per-task quota (Eq. 5)."),
    click.option("--k-max", type=int, help="TA-PER maximum per-task quota (Eq. 5)."),
    click.option("--episode-length", type=int, help="Steps per episode.  [default: 150]"),
    click.option("--eval-every", type=int, help="Steps per env between evaluations."),
    click.option("--eval-episodes", type=int, help="Evaluation episodes per task."),
    click.option("--log-every", type=int, help="Steps per env between training rows."),
    click.option("--lr", type=float, help="Adam learning rate of actor, critics and PaCo's w."),
    click.option("--alpha-lr", type=float, help="Adam learning rate of the per-task log alpha."),
    click.option("--gamma", type=float, help="Discount.  [default: 0.99]"),
    click.option("--tau", type=float, help="Polyak rate of the target critics.  [default: 0.005]"),
    click.option("--init-temperature", type=float,
                 help="Initial entropy temperature alpha.  [default: 1.0]"),
    click.option("--log-alpha-min", type=float, help="Lower clamp of log alpha."),
    click.option("--log-alpha-max", type=float, help="Upper clamp of log alpha."),
    click.option("--reward-version", type=click.Choice(REWARD_VERSIONS),
                 help="Metaworld reward function version.  [default: v2]"),
    click.option("--per-alpha", type=float, help="PER priority exponent (Eq. 3).  [default: 0.6]"),
    click.option("--per-beta", type=float,
                 help="Initial IS exponent, annealed to 1 (Eq. 4).  [default: 0.4]"),
    click.option("--per-eps", type=float,
                 help="Added to |td| before the exponent.  [default: 1e-6]"),
    click.option("--priority-scale", type=click.Choice(PRIORITY_SCALES),
                 help="task: TD errors divided by their task's batch mean before they become "
                      "priorities (not in the paper).  [default: none]"),
    click.option("--num-param-sets", type=int, help="Kp, PaCo parameter sets.  [default: 5]"),
    click.option("--unique-dim", type=int, help="Width of the unique feature u.  [default: 32]"),
    click.option("--unique-hidden-sizes", type=_Widths(),
                 help="Hidden widths of the unique-feature MLP, e.g. 64."),
    click.option("--unique-lr", type=float, help="Adam learning rate of the unique-feature MLP."),
    click.option("--triplet-margin", type=float, help="Margin m of Eq. 1.  [default: 1.0]"),
    click.option("--unique-sac-grad/--no-unique-sac-grad", default=None,
                 help="Let SAC gradients into the unique-feature MLP (ablation).  [default: off]"),
    click.option("--extreme-loss-threshold", type=float,
                 help="PaCo: mask and reset a task whose loss exceeds this.  [default: 3000]"),
    click.option("--overlap-envs/--no-overlap-envs", default=None,
                 help="Step the envs in a worker process during the update (one-update action "
                      "lag); off: the strictly sequential loop.  [default: on]"),
    click.option("--deterministic/--no-deterministic", default=None,
                 help="Deterministic torch, one thread (bit-exact resume).  [default: off]"),
)


def _config_options(command):
    for option in reversed(_CONFIG_OPTIONS):
        command = option(command)
    return command


@main.command("train")
@_config_options
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Continue this run folder from its latest checkpoint, with its config.json.")
def train_command(resume, **options) -> None:
    """Train one run (Algorithm 1); every option not given comes from the preset."""
    from taper import runs, train
    from taper.sac import resolve_device

    given = [name for name, value in options.items() if value is not None]
    if resume is not None and given:
        raise click.UsageError(
            "--resume continues with the run's saved config.json; drop "
            + ", ".join("--" + name.replace("_", "-") for name in given))
    try:
        if resume is not None:
            cfg = Config.load(resume)
            runs.check(cfg, resume)
            where = f"resuming {resume}"
        else:
            device = resolve_device(options["device"] or "auto")
            preset = options.pop("preset") or preset_for(device.type)
            cfg = Config.from_preset(preset, **options)
            runs.check(cfg)
            cfg = dataclasses.replace(cfg, out=str(runs.run_dir_for(cfg)))
            chosen = "" if "preset" in given else " (chosen for this machine)"
            where = f"preset {preset}{chosen}, output {cfg.out}"
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"taper train: {cfg.suite} {cfg.method} {cfg.sampler} seed {cfg.seed}, {where}, "
               f"device {resolve_device(cfg.device)}")
    try:
        run_dir = train.train(cfg, resume=resume)
    except FloatingPointError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"done: {run_dir}")


@main.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", type=click.IntRange(min=1),
              help="Episodes per task.  [default: the run's eval_episodes]")
@click.option("--device", type=click.Choice(DEVICES), help="[default: the run's device]")
def eval_command(run_dir, episodes, device) -> None:
    """Evaluate the latest checkpoint of RUN_DIR and print per-task success."""
    from taper import train

    try:
        spec, step, result = train.evaluate_run(run_dir, episodes, device)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    width = max(len(name) for name in (*spec.task_names, "mean"))
    click.echo(f"{run_dir} at step {step}:")
    click.echo(f"{'task':<{width}}  success   return")
    for name, success, ret in zip(spec.task_names, result["success"], result["return"]):
        click.echo(f"{name:<{width}}  {success:7.2f}  {ret:8.1f}")
    click.echo(f"{'mean':<{width}}  {result['mean_success']:7.2f}  {result['mean_return']:8.1f}")


@main.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(("markdown", "csv")), default="markdown",
              show_default=True, help="csv: one tidy table of the same numbers.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Also write the figures (PNG) into this folder.")
@click.option("--tsne-episodes", default=2, show_default=True, type=click.IntRange(min=0),
              help="Episodes per task whose states the t-SNE of u embeds (a taper checkpoint "
                   "per taper group); 0: no t-SNE.")
def report_command(paths, fmt, plots_dir, tsne_episodes) -> None:
    """Tables 1 and 2, per-task success and methods x samplers of the runs in PATHS.

    PATHS are run folders or folders holding them (a sweep); runs are grouped by suite,
    method and sampler, and pooled only if their settings differ in nothing but the seed.
    """
    from taper import report

    try:
        runs = [report.load_run(path) for path in report.find_runs(paths)]
        groups = report.group_runs(runs)
        click.echo(report.render(groups, fmt))
        if plots_dir:
            for path in report.write_plots(groups, plots_dir, tsne_episodes):
                click.echo(f"figure: {path}")
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except ImportError as error:
        raise click.ClickException(str(error)) from None
