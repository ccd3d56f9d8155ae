"""Milliseconds per `Agent.update` of every method; grouped vs general path of per-task layers.

    python benchmarks/bench_update.py                       # every preset's sizes, CPU
    python benchmarks/bench_update.py --sizes cpu-hour 256x256x256:256 --methods mtsac taper care
    python benchmarks/bench_update.py --sizes paper --device cuda --repeats 50
    python benchmarks/bench_update.py --sizes cpu-hour --update-orders joint critic-first
    python benchmarks/bench_update.py --sizes cpu-hour --methods mtsac taper --layer-norms critic
    python benchmarks/bench_update.py --sizes cpu-hour --no-keep-freed-memory   # glibc's defaults
    python benchmarks/bench_update.py --sizes 256x256x256:256 --methods mtsac --compile-layer

Rows, per size:
- update/<method>: one `Agent.update` on a batch grouped by task (average sampler: K/N rows per
  task, contiguous), compositional layers on the grouped path (the default);
- update/<method>/<order>: the same update in another `Config.update_order` (joint is the
  default), for each order `--update-orders` names;
- update/<method>/ln-<choice>: the same update with `Config.layer_norm` = choice (critic is
  the default, none for softmod), for each choice `--layer-norms` names;
- update/<method>/general: the same batch, per-task layers (compositional, single's) on the
  general path; this and the next three only for methods with a grouped path
  (`Method.prefers_grouped`: paco, taper, single);
- update/<method>/uniform: an ungrouped batch (uniform sampler, random task order), sorted by
  task on the host and run on the grouped path;
- update/<method>/uniform-general: the ungrouped batch on the general path, no sort;
- act/<method>[/general]: one `Agent.act` on one observation per task (a vector env step;
  the default agent picks the general path there by itself, `prefers_grouped`);
- layer/{grouped,general}: forward + backward of one hidden compositional layer of the twin
  critics (E = 2, Kp sets), on the grouped batch; layer/plain: the same for MT-SAC's plain
  layer (`Linear`, E = 2), the floor a per-task layer is measured against;
- layer/grouped-compiled (`--compile-layer`): layer/grouped through `torch.compile` (inductor,
  static shapes: the group sizes fixed, compiled once before timing, its best case);
- layer/vector-{grouped,general}: forward of one hidden actor layer on one row per task.
Timings are medians over interleaved repetitions; "x base" is the ratio to update/mtsac (to
act/mtsac for act rows, to layer/grouped for layer rows) in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taper.config import LAYER_NORMS, METHODS, PRESETS, UPDATE_ORDERS, Config  # noqa: E402
from taper.networks import CompositionalLinear, Linear, task_groups  # noqa: E402
from taper.replay import Batch  # noqa: E402
from taper.sac import Agent, resolve_device  # noqa: E402
from taper.train import keep_freed_memory  # noqa: E402
from taper.task_descriptions import DESCRIPTIONS  # noqa: E402

SIZES = {name: {key: preset[key] for key in ("hidden_sizes", "batch_size")}
         for name, preset in PRESETS.items()}


def make_batch(rng: np.random.Generator, task_ids: np.ndarray, obs_dim: int,
               act_dim: int) -> Batch:
    k = task_ids.shape[0]
    return Batch(rng.normal(size=(k, obs_dim)).astype(np.float32),
                 rng.uniform(-1, 1, (k, act_dim)).astype(np.float32),
                 rng.normal(size=k).astype(np.float32),
                 rng.normal(size=(k, obs_dim)).astype(np.float32),
                 (rng.random(k) < 0.01).astype(np.float32), task_ids.astype(np.int64),
                 np.arange(k, dtype=np.int64), rng.uniform(0.5, 1, k).astype(np.float32))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(cases: dict, repeats: int, warmup: int, device: torch.device,
                     clock=time.perf_counter) -> dict:
    """Median milliseconds of each zero-argument callable, repetitions interleaved across cases."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            times[name].append((clock() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def size_spec(size: str) -> dict:
    """A preset's sizes, or "WxW..:K" (widths and batch size, e.g. 256x256x256:256)."""
    if size in SIZES:
        return SIZES[size]
    try:
        widths, k = size.split(":")
        return {"hidden_sizes": tuple(int(x) for x in widths.split("x")), "batch_size": int(k)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size {size!r} is neither a preset ({', '.join(SIZES)}) nor WxW..:K, "
            "e.g. 256x256x256:256") from None


def bench_size(size: str, args: argparse.Namespace, device: torch.device) -> list[tuple]:
    rng = np.random.default_rng(args.seed)
    spec = size_spec(size)
    k, n = spec["batch_size"], args.num_tasks
    grouped_ids = np.repeat(np.arange(n), -(-k // n))[:k]
    uniform_ids = rng.integers(0, n, k)
    grouped = make_batch(rng, grouped_ids, args.obs_dim, args.act_dim)
    uniform = make_batch(rng, uniform_ids, args.obs_dim, args.act_dim)
    vector_obs = rng.normal(size=(n, args.obs_dim)).astype(np.float32)
    vector_ids = np.arange(n)
    task_names = tuple(DESCRIPTIONS)[:n]                    # care: any n described tasks

    cases = {}
    for method in args.methods:
        cfg = Config(method=method, seed=args.seed, hidden_sizes=spec["hidden_sizes"],
                     batch_size=k, num_param_sets=args.num_param_sets)
        agent = Agent(cfg, args.obs_dim, args.act_dim, n, device, task_names=task_names)
        cases[f"update/{method}"] = lambda a=agent: a.update(grouped)
        cases[f"act/{method}"] = lambda a=agent: a.act(vector_obs, vector_ids, False)
        variants = [("update_order", order, order) for order in args.update_orders]
        if method != "softmod":                          # Config refuses layer_norm for softmod
            variants += [("layer_norm", choice, f"ln-{choice}") for choice in args.layer_norms]
        for field, value, label in variants:
            if value != getattr(cfg, field):
                other = Agent(dataclasses.replace(cfg, **{field: value}), args.obs_dim,
                              args.act_dim, n, device, task_names=task_names)
                cases[f"update/{method}/{label}"] = lambda a=other: a.update(grouped)
        if agent.method.prefers_grouped(k, n):
            general = Agent(cfg, args.obs_dim, args.act_dim, n, device, grouped=False)
            cases[f"update/{method}/general"] = lambda a=general: a.update(grouped)
            cases[f"update/{method}/uniform"] = lambda a=agent: a.update(uniform)
            cases[f"update/{method}/uniform-general"] = lambda a=general: a.update(uniform)
            cases[f"act/{method}/general"] = lambda a=general: a.act(vector_obs, vector_ids, False)

    width = spec["hidden_sizes"][0]
    layer = CompositionalLinear(width, width, ensemble=2, num_sets=args.num_param_sets).to(device)
    plain = Linear(width, width, ensemble=2).to(device)
    w = torch.rand(n, args.num_param_sets, device=device, requires_grad=True)
    x = torch.randn(2, k, width, device=device, requires_grad=True)
    actor_layer = CompositionalLinear(width, width, ensemble=1,
                                      num_sets=args.num_param_sets).to(device)
    x_vector = torch.randn(1, n, width, device=device)

    def layer_step(groups):
        layer(x, w, groups).square().sum().backward()

    @torch.no_grad()
    def vector_step(groups):
        actor_layer(x_vector, w, groups)

    for path in ("grouped", "general"):
        groups = task_groups(torch.from_numpy(grouped_ids), n, device, grouped=path == "grouped")
        cases[f"layer/{path}"] = lambda g=groups: layer_step(g)
        if path == "grouped" and args.compile_layer:
            compiled = torch.compile(layer, dynamic=False)
            cases["layer/grouped-compiled"] = (
                lambda g=groups: compiled(x, w, g).square().sum().backward())
    cases["layer/plain"] = lambda g=groups: plain(x, None, g).square().sum().backward()
    for path in ("grouped", "general"):
        groups = task_groups(torch.from_numpy(vector_ids), n, device, grouped=path == "grouped")
        cases[f"layer/vector-{path}"] = lambda g=groups: vector_step(g)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ms = time_interleaved(cases, args.repeats, args.warmup, device, clock)
    rows = []
    for name, value in ms.items():
        kind = name.split("/")[0]
        base = {"update": "update/mtsac", "act": "act/mtsac", "layer": "layer/grouped"}[kind]
        ratio = value / ms[base] if base in ms else float("nan")
        rows.append((size, name, value, ratio))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES),
                        help="presets and/or WxW..:K sizes, e.g. cpu-hour 256x256x256:256")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-tasks", type=int, default=10)
    parser.add_argument("--obs-dim", type=int, default=39)
    parser.add_argument("--act-dim", type=int, default=4)
    parser.add_argument("--num-param-sets", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: perf_counter; cpu: process CPU time, steadier on a shared "
                             "machine (CPU device only; counts every thread's time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-orders", nargs="+", default=["joint"], choices=UPDATE_ORDERS,
                        help="Also time each method's update in these orders (update/<method>/"
                             "<order>; the default order is update/<method>).")
    parser.add_argument("--layer-norms", nargs="+", default=[], choices=LAYER_NORMS,
                        help="Also time each method's update with these layer_norm choices "
                             "(update/<method>/ln-<choice>; softmod has none).")
    parser.add_argument("--compile-layer", action="store_true",
                        help="Also time the grouped compositional layer through torch.compile "
                             "(layer/grouped-compiled; the first call compiles, untimed)")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction,
                        default=True, help="glibc heap settings of `taper train` "
                        "(taper.train.keep_freed_memory); --no-keep-freed-memory: glibc's defaults")
    args = parser.parse_args(argv)
    for size in args.sizes:
        try:
            size_spec(size)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.keep_freed_memory and keep_freed_memory()
    device = resolve_device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"tasks={args.num_tasks} obs={args.obs_dim} act={args.act_dim} "
          f"Kp={args.num_param_sets} repeats={args.repeats} clock={args.clock} "
          f"keep_freed_memory={kept}")
    print(f"{'size':<16} {'case':<32} {'ms':>10} {'x base':>8}")
    for size in args.sizes:
        for size_name, name, value, ratio in bench_size(size, args, device):
            print(f"{size_name:<16} {name:<32} {value:>10.2f} {ratio:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
