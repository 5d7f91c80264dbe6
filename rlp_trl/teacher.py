"""The EMA "no-think" teacher p_ema (paper Sec. 2.1, Algorithm 1 lines 8-9 and 15).

phi is lazily set to theta at the first batch, then after every optimizer step phi <- tau * phi + (1 - tau) * theta.
The teacher is kept in float32 by default: with tau = 0.999 one update moves a weight by 1e-3 of the gap, which is
below bf16's resolution (2**-8), so a bf16 teacher would silently never move.
"""

import copy
import json
import os

import torch
from safetensors.torch import load_model, save_model
from torch import nn

TEACHER_WEIGHTS = "rlp_teacher.safetensors"
TEACHER_STATE = "rlp_teacher.json"


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In-place EMA update phi <- decay * phi + (1 - decay) * theta over matching parameters (Alg. 1, line 15).

    Both modules must have the same parameter names and shapes; the student may live in another dtype or device.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    if student_params.keys() != teacher_params.keys():
        missing = sorted(set(student_params) ^ set(teacher_params))[:5]
        raise ValueError(f"teacher and student parameters differ, e.g. {missing}")
    for name, phi in teacher_params.items():
        theta = student_params[name]
        phi.lerp_(theta.detach().to(device=phi.device, dtype=phi.dtype), 1.0 - decay)


class EMATeacher:
    """A full-weight EMA copy of the policy, used only under `torch.no_grad()` to score the true next tokens.

    Args:
        decay: tau in phi <- tau * phi + (1 - tau) * theta.
        dtype: dtype of the teacher weights (`None` keeps the model's dtype).
    """

    def __init__(self, decay: float, dtype: torch.dtype | None = torch.float32):
        self.decay = decay
        self.dtype = dtype
        self.module: nn.Module | None = None
        self.num_updates = 0

    @property
    def initialized(self) -> bool:
        return self.module is not None

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        """Lazy initialisation phi <- theta (Alg. 1, line 9) from an unwrapped model."""
        teacher = copy.deepcopy(model)
        if self.dtype is not None:
            teacher.to(self.dtype)
        teacher.requires_grad_(False)
        teacher.eval()
        self.module = teacher

    def update(self, model: nn.Module) -> None:
        ema_update_(self.module, model, self.decay)
        self.num_updates += 1

    def save(self, directory: str) -> None:
        if not self.initialized:
            return
        save_model(self.module, os.path.join(directory, TEACHER_WEIGHTS))
        with open(os.path.join(directory, TEACHER_STATE), "w") as f:
            json.dump({"decay": self.decay, "num_updates": self.num_updates}, f)

    def load(self, directory: str, model: nn.Module) -> bool:
        """Restore a teacher saved by `save`; returns False when the checkpoint has none (teacher not yet built)."""
        path = os.path.join(directory, TEACHER_WEIGHTS)
        if not os.path.exists(path):
            return False
        self.init_from(model)
        load_model(self.module, path, device=str(next(self.module.parameters()).device))
        with open(os.path.join(directory, TEACHER_STATE)) as f:
            self.num_updates = json.load(f)["num_updates"]
        return True
