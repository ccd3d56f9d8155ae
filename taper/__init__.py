"""taper: shared-unique features and task-aware prioritized experience replay (TA-PER).

`Batch`, `Config` and `ReplayBuffer` are imported on first use, so `import taper.config` (and
with it `taper --help`, `taper report`) does not load numba or torch.
"""

from importlib import import_module

__all__ = ["Batch", "Config", "ReplayBuffer"]
__version__ = "0.1.0"

_HOMES = {"Batch": "taper.replay", "Config": "taper.config", "ReplayBuffer": "taper.replay"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'taper' has no attribute {name!r}")
