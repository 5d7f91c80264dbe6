"""rlp_trl: RLP ("RLP: Reinforcement as a Pretraining Objective", arXiv 2510.01265) as a TRL add-on."""

from . import _quiet  # noqa: F401  (library messages that are not the user's business; rlp_trl/_quiet.py)
from ._trl_compat import check_trl_compat

check_trl_compat()  # TRL/transformers have the private members RLPTrainer uses, else a clear error naming the range

from .config import RLPConfig
from .loss import clipped_thought_loss
from .resilience.options import RunConfig
from .resilience.run import RunResult, train
from .rewards import group_advantages, information_gain
from .teacher import EMATeacher, ema_update_
from .trainer import RLPTrainer

__all__ = [
    "RLPConfig",
    "RLPTrainer",
    "EMATeacher",
    "clipped_thought_loss",
    "ema_update_",
    "group_advantages",
    "information_gain",
    "RunConfig",
    "RunResult",
    "train",
]
__version__ = "0.1.0"
