"""The `taper` command: click options mapped 1:1 onto `Config` and the benchmark."""

from __future__ import annotations

import dataclasses
import json

import click

from taper.config import (DEVICES, LOG_STD_HEADS, METHODS, PRESETS, PRIORITY_SCALES,
                          LAYER_NORMS, REWARD_VERSIONS, SAMPLERS, UPDATE_ORDERS, Config,
                          preset_for)


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
    click.option("--sampler", type=click.Choice(SAMPLERS), help="[default: ta-per for taper, uniform for the others]"),
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
    click.option("--log-std-head", type=click.Choice(LOG_STD_HEADS),
                 help="Policy log std: clamped to [-20, 2] (SB3) or tanh-rescaled into "
                      "[-5, 2] (CleanRL).  [default: clamp]"),
    click.option("--update-order", type=click.Choice(UPDATE_ORDERS),
                 help="joint: one backward of every loss (PaCo); critic-first: the actor "
                      "climbs the critics after their step (SB3).  [default: joint]"),
    click.option("--layer-norm", type=click.Choice(LAYER_NORMS),
                 help="Layer norm of the hidden pre-activations: none (the paper), critic "
                      "(the twin critics), all (actor too).  [default: critic; none with "
                      "--method softmod and on the paper and cpu-small presets]"),
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
                 help="Train the unique-feature MLP by SAC's losses as well as Eq. 1; off: "
                      "only Eq. 1 (SAC sees u.detach()).  [default: on]"),
    click.option("--unique-normalize/--no-unique-normalize", default=None,
                 help="u on the unit sphere, f(s)/||f(s)|| (FaceNet); off: the raw MLP output.  "
                      "[default: off]"),
    click.option("--num-modules", type=int,
                 help="Soft Modularization: modules per layer.  [default: 2]"),
    click.option("--module-layers", type=int,
                 help="Soft Modularization: layers of modules.  [default: 2]"),
    click.option("--module-width", type=int,
                 help="Soft Modularization: module and routing width.  [default: 256]"),
    click.option("--routing-layers", type=int,
                 help="Soft Modularization: layers of the routing trunk.  [default: 2]"),
    click.option("--num-encoders", type=int,
                 help="CARE: state encoders in the attention mixture.  [default: 4]"),
    click.option("--encoder-dim", type=int,
                 help="CARE: output width of each state encoder.  [default: 50]"),
    click.option("--encoder-hidden-sizes", type=_Widths(),
                 help="CARE: hidden widths of each state encoder, e.g. 50."),
    click.option("--context-dim", type=int,
                 help="CARE: width of the task context z.  [default: 50]"),
    click.option("--context-hidden-sizes", type=_Widths(),
                 help="CARE: hidden widths of the context MLP, e.g. 100,50,50."),
    click.option("--extreme-loss-threshold", type=float,
                 help="PaCo: mask and reset a task whose loss exceeds this; inf: never.  "
                      "[default: inf; 3000 on the paper and cpu-small presets]"),
    click.option("--overlap-envs/--no-overlap-envs", default=None,
                 help="Step the envs in a worker process during the update (one-update action "
                      "lag); off: the strictly sequential loop.  [default: on]"),
    click.option("--deterministic/--no-deterministic", default=None,
                 help="Deterministic torch, one thread (bit-exact resume).  [default: off]"),
)


def _config_options(*skip: str):
    """Every Config field as an option (`_CONFIG_OPTIONS`), but those named in `skip`."""
    def decorate(command):
        for option in reversed(_CONFIG_OPTIONS):
            command = option(command)
        command.__click_params__ = [p for p in command.__click_params__ if p.name not in skip]
        return command
    return decorate


@main.command("train")
@_config_options()
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


@main.command("sweep")
@click.option("--methods", default="taper", show_default=True,
              help=f"Comma-separated, from {', '.join(METHODS)}.")
@click.option("--samplers", help=f"Comma-separated, from {', '.join(SAMPLERS)}.  "
              "[default: each method's own]")
@click.option("--seeds", default="0", show_default=True,
              help="A range, a list or one: 0-9, 0,2,5, 3.")
@click.option("--out", "sweep_dir", required=True, type=click.Path(file_okay=False),
              help="SWEEP_DIR: a run folder per (method, sampler, seed), and sweep.json.")
@click.option("--backend", type=click.Choice(("local", "ray")), default="local",
              show_default=True, help="local: taper train subprocesses; ray: Ray Tune trials.")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Runs at a time.  [default: local 1, ray as its resources allow]")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True),
              help="ray: CPUs a trial reserves; local: torch threads per run.  "
                   "[default: ray 1, local the CPUs shared out over the jobs]")
@click.option("--gpus-per-run", type=click.FloatRange(min=0),
              help="ray: GPUs a trial reserves, a fraction shares one.  [default: 0]")
@click.option("--address", help="ray: join this cluster (e.g. auto).  [default: start Ray here]")
@click.option("--max-failures", type=click.IntRange(min=0),
              help="ray: retries of a failed trial, each resuming its run.  [default: 3]")
@_config_options("method", "sampler", "seed", "out")
def sweep_command(methods, samplers, seeds, sweep_dir, backend, jobs, cpus_per_run,
                  gpus_per_run, address, max_failures, **options) -> None:
    """Train every (method, sampler, seed) with the other options in common, each a run folder
    in SWEEP_DIR; the same command again skips finished runs and resumes the others."""
    from taper import sweep
    from taper.sac import resolve_device

    ray_only = {"--gpus-per-run": gpus_per_run, "--address": address,
                "--max-failures": max_failures}
    if backend == "local" and any(value is not None for value in ray_only.values()):
        given = [name for name, value in ray_only.items() if value is not None]
        raise click.UsageError(f"{', '.join(given)}: only with --backend ray")
    try:
        device = "cuda" if gpus_per_run else resolve_device(options["device"] or "auto").type
        preset = options.pop("preset") or preset_for(device)
        plan = sweep.Sweep.plan(sweep_dir, sweep.parse_names(methods, METHODS, "methods"),
                                samplers and sweep.parse_names(samplers, SAMPLERS, "samplers"),
                                sweep.parse_seeds(seeds), preset, **options)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    todo = [name for name in plan.configs if not plan.finished(name)]
    suite = next(iter(plan.configs.values())).suite
    click.echo(f"taper sweep: {len(plan.configs)} runs of {suite} "
               f"(preset {preset}) in {plan.sweep_dir}, backend {backend}; "
               f"{len(plan.configs) - len(todo)} finished, {len(todo)} to run")
    if backend == "local":
        states = sweep.run_local(plan, jobs or 1, cpus_per_run and max(1, round(cpus_per_run)),
                                 echo=click.echo)
    else:
        states = sweep.run_ray(plan, jobs, address, cpus_per_run or 1.0, gpus_per_run or 0.0,
                               3 if max_failures is None else max_failures, echo=click.echo)
    failed = [name for name, state in states.items() if state != "done"]
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(states)} runs did not finish ({', '.join(failed)}); see "
            f"{plan.sweep_dir / sweep.LOGS} and run the same command again to resume them")
    click.echo(f"done: {len(states)} runs in {plan.sweep_dir}, states in "
               f"{plan.sweep_dir / sweep.SWEEP_FILE}")


@main.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--protocol", type=click.Choice(("taper", "metaworld")), default="taper",
              show_default=True,
              help="taper: taper's evaluation (the run's episode length, success at any step). "
                   "metaworld: also metaworld.evaluation.evaluation (500-step episodes ending at "
                   "the first success), printed next to taper's.")
@click.option("--episodes", type=click.IntRange(min=1),
              help="Episodes per task.  [default: the run's eval_episodes]")
@click.option("--device", type=click.Choice(DEVICES), help="[default: the run's device]")
def eval_command(run_dir, protocol, episodes, device) -> None:
    """Evaluate the latest checkpoint of RUN_DIR and print per-task success."""
    from taper import policy, train

    try:
        if protocol == "metaworld":
            _, benchmark = policy.metaworld_evaluation(run_dir, episodes, device)
        spec, step, result = train.evaluate_run(run_dir, episodes, device)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    width = max(len(name) for name in (*spec.task_names, "mean"))
    click.echo(f"{run_dir} at step {step}:")
    if protocol == "taper":
        click.echo(f"{'task':<{width}}  success   return")
        for name, success, ret in zip(spec.task_names, result["success"], result["return"]):
            click.echo(f"{name:<{width}}  {success:7.2f}  {ret:8.1f}")
        click.echo(f"{'mean':<{width}}  {result['mean_success']:7.2f}  "
                   f"{result['mean_return']:8.1f}")
        return
    click.echo(f"{'task':<{width}}  taper  metaworld   (success)")
    for name, ours, theirs in zip(spec.task_names, result["success"], benchmark["success"]):
        click.echo(f"{name:<{width}}  {ours:5.2f}  {theirs:9.2f}")
    click.echo(f"{'mean':<{width}}  {result['mean_success']:5.2f}  "
               f"{benchmark['mean_success']:9.2f}")
    n = episodes or Config.load(run_dir).eval_episodes
    click.echo(f"taper: {n} episodes per task of {spec.episode_length} steps, success at any "
               f"step; metaworld: {n} episodes per task of up to 500 steps, each ending at its "
               "first success")


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
