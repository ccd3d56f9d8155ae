"""The one frozen `Config` of a taper run, and its presets.

Names follow Stable-Baselines3 where one exists (`buffer_size`, `learning_starts`,
`batch_size`, `tau`, `gamma`); PER's exponents are `per_alpha`/`per_beta`, SAC's
temperature is `log_alpha`, so no two things share a name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

METHODS = ("mtsac", "paco", "taper", "single", "pcgrad", "softmod", "care")
SAMPLERS = ("uniform", "average", "per", "ta-per")
DEVICES = ("auto", "cpu", "cuda")
REWARD_VERSIONS = ("v1", "v2")
PRIORITY_SCALES = ("none", "task")
LOG_STD_HEADS = ("tanh", "clamp")
UPDATE_ORDERS = ("joint", "critic-first")
LAYER_NORMS = ("none", "critic", "all")
# What a run meant by a field before the field existed, where its default has changed since:
# a config.json written before then loads with these, not with today's defaults.
BEFORE_FIELD = {"log_std_head": "tanh", "unique_sac_grad": False, "layer_norm": "none"}
PRESETS = {
    # PaCo / the paper on a GPU box: 3x400 layers, batch 1280, 1M transitions, 2M steps per env,
    # PaCo's alpha learning rate 1e-4 (tuned for 2M steps).
    "paper": dict(
        hidden_sizes=(400, 400, 400),
        unique_hidden_sizes=(400,),
        batch_size=1280,
        buffer_size=1_000_000,
        steps_per_env=2_000_000,
        learning_starts=1500,
        eval_every=50_000,
        eval_episodes=50,
        alpha_lr=1e-4,
        layer_norm="none",
        extreme_loss_threshold=3e3,
    ),
    # MT10-rand, 100k steps per task on a 2-core CPU: 3x128 (the taper update then costs
    # what a 3x256 MT-SAC update does), K = 256, a replay that keeps the whole run, alpha
    # learned at 3e-4 so it falls within the run, and (Config's defaults) layer norm in the
    # critics and PaCo's extreme-loss reset off (README, "CPU default").
    "cpu-hour": dict(
        hidden_sizes=(128, 128, 128),
        unique_hidden_sizes=(64,),
        batch_size=256,
        buffer_size=1_000_000,
        steps_per_env=100_000,
        learning_starts=1500,
        eval_every=10_000,
        eval_episodes=10,
        alpha_lr=3e-4,
    ),
    # Tiny networks for a quick look (minutes, not an hour): 2x64, K = 128, 200k transitions.
    "cpu-small": dict(
        hidden_sizes=(64, 64),
        unique_hidden_sizes=(64,),
        batch_size=128,
        buffer_size=200_000,
        steps_per_env=100_000,
        learning_starts=1500,
        eval_every=10_000,
        eval_episodes=5,
        alpha_lr=1e-4,
        layer_norm="none",
        extreme_loss_threshold=3e3,
    ),
}


def preset_for(device_type: str) -> str:
    """The preset that suits a device type ("cuda", "cpu"): paper on CUDA, the CPU one elsewhere."""
    return "paper" if device_type == "cuda" else "cpu-hour"


@dataclass(frozen=True)
class Config:
    """Everything that decides a run; `config.json` in a run folder is this, serialised."""

    suite: str = "mt10-rand"
    """Task suite: mt10-rand, mt50-rand, mt10, mt50, mt1:<task>, gym:<EnvId>."""
    method: str = "taper"
    """Network: mtsac (MLP on state + one-hot), paco (compositional), taper (paco + unique
    features), single (one independent network per task), pcgrad (mtsac + gradient surgery),
    softmod (soft modularization), care (state encoders mixed by attention from a
    task-description context)."""
    sampler: str | None = None
    """Replay sampler: uniform, average, per, ta-per; None: ta-per for taper, uniform for the
    others (the samplers of their papers)."""
    seed: int = 0
    """Seed of numpy, torch and the environments."""
    preset: str = "cpu-hour"
    """Name of the preset the sizes below came from (recorded, not re-applied)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    out: str | None = None
    """Run folder; None makes one under runs/ named by suite, method, sampler, seed and time."""

    steps_per_env: int = 100_000
    """Environment steps per task (= vector steps); the paper uses 2M."""
    learning_starts: int = 1500
    """Vector steps of uniform random actions before the first update."""
    gradient_steps: int = 1
    """Gradient updates per vector step."""
    batch_size: int = 256
    """K, transitions per update, drawn across all tasks."""
    buffer_size: int = 1_000_000
    """Transitions kept in total; each task gets buffer_size // num_tasks."""
    hidden_sizes: tuple[int, ...] = (128, 128, 128)
    """Hidden layer widths of actor and critics."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics, PaCo's task weights and CARE's context and encoders."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the per-task log temperature."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    init_temperature: float = 1.0
    """Initial entropy temperature alpha of every task."""
    log_alpha_min: float = -10.0
    """Lower clamp of log alpha (PaCo)."""
    log_alpha_max: float = 0.0
    """Upper clamp of log alpha (PaCo)."""
    log_std_head: str = "clamp"
    """The policy's log std from its raw output (`sac.log_std_of`): clamp, clamped to [-20, 2]
    (SB3, Spinning Up, the independent MT-SAC; starts at std 1); tanh, tanh-rescaled into
    [-5, 2] (CleanRL; starts at std 0.22). clamp measured better for taper on MT10-rand at 100k
    steps (README, "Log σ head")."""

    update_order: str = "joint"
    """joint: every loss from the same parameters, one backward, every optimizer steps (PaCo's
    code); critic-first: the critic steps first, then the actor and alpha losses are taken
    against the updated critics (SB3, Spinning Up, the independent MT-SAC). Either way the
    method's own parameters (w, u) step once, on the sum of both phases' gradients
    (`sac.Agent.update`)."""

    layer_norm: str | None = None
    """Layer normalisation (Ba et al. 2016, no learned gain or bias) of every hidden layer's
    pre-activation: none (PaCo, the paper); critic, in the twin critics only (RLPD, Ball et al.
    2023); all, in the actor too. Not in the paper; README, "Layer norm". None: critic (the
    cpu-hour preset's, measured on four seeds), none for softmod (its modules are not `Body`
    layers); the paper and cpu-small presets set none."""

    episode_length: int = 150
    """Steps per training and evaluation episode (PaCo/MOORE: 150; metaworld's own: 500)."""
    reward_version: str = "v2"
    """Metaworld reward function version."""
    eval_every: int = 10_000
    """Steps per env between evaluations (and checkpoints); the paper uses 50k."""
    eval_episodes: int = 10
    """Evaluation episodes per task; the paper uses 50."""
    log_every: int = 1000
    """Steps per env between training-metric rows."""

    per_alpha: float = 0.6
    """PER priority exponent alpha (Eq. 3)."""
    per_beta: float = 0.4
    """Initial IS exponent beta, annealed linearly to 1 over the run (Eq. 4)."""
    per_eps: float = 1e-6
    """Added to |td| before the exponent."""
    priority_scale: str = "none"
    """none: priorities from |td| as in the paper (Eq. 2); task: |td| divided by the mean |td|
    of its task's rows in the batch first (a deviation from the paper, see
    `replay.scale_per_task`)."""
    k_min: int | None = None
    """TA-PER minimum per-task quota (Eq. 5); None: K // (4N) for ta-per."""
    k_max: int | None = None
    """TA-PER maximum per-task quota (Eq. 5); None: ceil(4K / N) for ta-per, capped at K."""

    num_param_sets: int = 5
    """Kp, parameter sets of PaCo's compositional layers."""
    extreme_loss_threshold: float = float("inf")
    """PaCo's stability trick (paco, taper): a task whose mean loss in the batch exceeds this is
    masked out of the update and its w reset. inf: off, the cpu-hour default (with layer norm
    in the critics it fired 163 to 911 times per 100k-step taper run, on tasks being learned;
    README "PaCo's reset off"); the paper and cpu-small presets keep PaCo's 3e3."""
    unique_dim: int = 32
    """Width of the unique feature u = f(s)."""
    unique_hidden_sizes: tuple[int, ...] = (64,)
    """Hidden widths of the unique-feature MLP."""
    triplet_margin: float = 1.0
    """Margin m of the triplet loss (Eq. 1)."""
    unique_lr: float = 3e-4
    """Adam learning rate of the unique-feature MLP."""
    unique_sac_grad: bool = True
    """Train the unique-feature MLP f by SAC's losses (actor and critic) as well as by the
    triplet loss, so f learns the state features SAC needs, kept apart per task by Eq. 1;
    False: SAC sees u.detach() and only Eq. 1 shapes f. True measured better on MT10-rand at
    100k steps (README, "Unique features trained by SAC too")."""
    unique_normalize: bool = False
    """Put u on the unit sphere, u = f(s) / ||f(s)|| (FaceNet's triplet embedding), so its
    unique_dim inputs have the state's scale; False: the raw MLP output, whose entries grow to
    about 10x the state's under the triplet loss (README, "Unique-feature scale")."""
    num_modules: int = 2
    """Soft Modularization: modules per layer, M (original code: 2 for MT10, 4 for MT50)."""
    module_layers: int = 2
    """Soft Modularization: layers of modules, L (original code: 2 for MT10, 4 for MT50)."""
    module_width: int = 256
    """Soft Modularization: width of each module and of the routing layers (256; MT50: 128)."""
    routing_layers: int = 2
    """Soft Modularization: linear layers of the routing trunk on z * f (original code: 2)."""

    num_encoders: int = 4
    """CARE: state encoders mixed by the task's attention weights (mtrl: 4)."""
    encoder_dim: int = 50
    """CARE: output width of each state encoder (mtrl: 50)."""
    encoder_hidden_sizes: tuple[int, ...] = (50,)
    """CARE: hidden widths of each state encoder (mtrl: one layer of 50)."""
    context_dim: int = 50
    """CARE: width of the context z computed from the task's description embedding (mtrl: 50)."""
    context_hidden_sizes: tuple[int, ...] = (100, 50, 50)
    """CARE: hidden widths of the context MLP, embedding -> z (mtrl: 100, 50, 50)."""

    overlap_envs: bool = True
    """Step the training envs in a worker process while the learner updates: the actions of
    step t+1 come from the policy before update t (a one-update lag). False: the strictly
    sequential loop (act, step, store, update)."""

    deterministic: bool = False
    """Deterministic torch kernels and one CPU thread, for bit-exact resume tests."""

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        if self.sampler is None:
            object.__setattr__(self, "sampler", "ta-per" if self.method == "taper" else "uniform")
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("preset", self.preset, tuple(PRESETS))
        _check_choice("reward_version", self.reward_version, REWARD_VERSIONS)
        _check_choice("priority_scale", self.priority_scale, PRIORITY_SCALES)
        _check_choice("log_std_head", self.log_std_head, LOG_STD_HEADS)
        _check_choice("update_order", self.update_order, UPDATE_ORDERS)
        if self.layer_norm is None:
            object.__setattr__(self, "layer_norm", "none" if self.method == "softmod" else "critic")
        _check_choice("layer_norm", self.layer_norm, LAYER_NORMS)
        if self.method == "softmod" and self.layer_norm != "none":
            raise ValueError(f"layer_norm={self.layer_norm!r} is not available for "
                             "method='softmod' (its modules are not `Body` layers); use 'none'")
        if self.method == "care" and self.suite.startswith("gym:"):
            raise ValueError(f"method='care' needs written task descriptions and "
                             f"suite={self.suite!r} has none; use a metaworld suite")
        for name in ("steps_per_env", "batch_size", "buffer_size", "gradient_steps",
                     "eval_every", "eval_episodes", "episode_length", "log_every",
                     "num_param_sets", "unique_dim", "num_modules", "module_layers",
                     "module_width", "num_encoders", "encoder_dim", "context_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("learning_starts", "routing_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("hidden_sizes", "unique_hidden_sizes", "encoder_hidden_sizes",
                     "context_hidden_sizes"):
            widths = getattr(self, name)
            if not widths or min(widths) <= 0:
                raise ValueError(f"{name}={widths!r} must be positive widths")
        for name in ("lr", "alpha_lr", "unique_lr", "tau", "per_eps", "triplet_margin",
                     "init_temperature", "extreme_loss_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if not self.log_alpha_min <= self.log_alpha_max:
            raise ValueError(f"log_alpha_min={self.log_alpha_min!r} must be <= "
                             f"log_alpha_max={self.log_alpha_max!r}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma={self.gamma!r} must be in [0, 1)")
        if not 0 <= self.per_alpha:
            raise ValueError(f"per_alpha={self.per_alpha!r} must be >= 0")
        if not 0 <= self.per_beta <= 1:
            raise ValueError(f"per_beta={self.per_beta!r} must be in [0, 1]")
        if self.k_min is not None and self.k_min < 0:
            raise ValueError(f"k_min={self.k_min!r} must be >= 0")
        if self.k_max is not None and self.k_max <= 0:
            raise ValueError(f"k_max={self.k_max!r} must be > 0")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "Config":
        """The preset's sizes, then `overrides` (None values are ignored)."""
        _check_choice("preset", preset, tuple(PRESETS))
        values = {**PRESETS[preset], "preset": preset}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def quota_bounds(self, num_tasks: int) -> tuple[int, int]:
        """(k_min, k_max) for `num_tasks` tasks, defaults filled in; ValueError if infeasible.

        Defaults for ta-per: k_min = K // (4N) and k_max = ceil(4K / N) capped at K, so no task
        gets less than a quarter or more than four times its even share K/N.
        """
        k = self.batch_size
        default_min, default_max = (k // (4 * num_tasks), min(k, -(-4 * k // num_tasks)))
        if self.sampler != "ta-per":
            default_min, default_max = 0, k
        k_min = default_min if self.k_min is None else self.k_min
        k_max = default_max if self.k_max is None else self.k_max
        if not (num_tasks * k_min <= k <= num_tasks * k_max and k_min <= k_max):
            raise ValueError(
                f"k_min={k_min}, k_max={k_max} are infeasible for batch_size={k} and "
                f"{num_tasks} tasks: need {num_tasks}*k_min <= {k} <= {num_tasks}*k_max")
        return k_min, k_max

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """The Config of `to_json`'s text; fields added since it was written take what the run
        did before them (`BEFORE_FIELD`) or their defaults (a run folder of an older taper still
        loads and resumes as it ran); ValueError names a field this taper lacks."""
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config fields {unknown} are not settings of this taper")
        values = {**BEFORE_FIELD, **values}
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        return cls(**values)

    def save(self, run_dir: str | Path) -> None:
        """Write config.json into the run folder `run_dir`."""
        (Path(run_dir) / "config.json").write_text(self.to_json())

    @classmethod
    def load(cls, run_dir: str | Path) -> "Config":
        """The Config of a run folder; ValueError if it has no config.json."""
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise ValueError(f"run folder {str(run_dir)!r} has no config.json")
        return cls.from_json(path.read_text())


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
