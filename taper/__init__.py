"""taper: shared-unique features and task-aware prioritized experience replay (TA-PER)."""

from taper.config import Config
from taper.replay import Batch, ReplayBuffer

__all__ = ["Batch", "Config", "ReplayBuffer"]
__version__ = "0.1.0"
