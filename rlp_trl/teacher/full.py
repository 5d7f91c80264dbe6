"""`EMATeacher`: a full replica of the policy's weights, and `ema_update_`, the EMA step on two modules.

Serves a single process, DDP and DeepSpeed ZeRO-0/1/2, where every rank holds the whole model anyway. The replica
lives on the model's device, or in CPU memory with `teacher_device="cpu"` (then it scores on the CPU).
"""

import contextlib
import copy

import torch
from torch import nn

from . import checkpoint
from .scorer import Scorer
from .sharding import alias_groups, chunks, full_numel, full_shape, gathered, is_zero3, local_nbytes, rank


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
        if phi.shape != theta.shape:
            raise ValueError(f"teacher and student shapes differ for {name}: {tuple(phi.shape)} vs {tuple(theta.shape)}")
    for name, phi in teacher_params.items():
        phi.lerp_(student_params[name].detach().to(device=phi.device, dtype=phi.dtype), 1.0 - decay)


def _without_patched_forwards(module: nn.Module) -> nn.Module:
    """Drop instance-level `forward` overrides copied from the student (e.g. TRL's fused LM head patch): their
    closures call the *student's* original forward, so a copied teacher would silently score with the policy."""
    for sub in module.modules():
        sub.__dict__.pop("forward", None)
    return module


def _replica(model: nn.Module, dtype: torch.dtype | None, device: torch.device | None) -> nn.Module:
    """A frozen, eval-mode copy of `model` whose tensors are created directly in `dtype` on `device` (no transient
    second copy on the model's device); tied parameters stay tied."""
    memo = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo:
            continue
        target = dict(device=device or t.device, copy=True)
        if isinstance(t, nn.Parameter):
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            memo[id(t)] = nn.Parameter(t.detach().to(dtype=cast, **target), requires_grad=False)
        else:
            memo[id(t)] = t.detach().to(**target)
    teacher = _without_patched_forwards(copy.deepcopy(model, memo))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


class EMATeacher:
    """A full-weight EMA replica of the policy, used only under `torch.no_grad()` to score the true next tokens.

    Implements `Teacher` (protocol.py); the replica itself is `module` once initialised.

    Args:
        decay: tau in phi <- tau * phi + (1 - tau) * theta (validated by `RLPConfig`).
        dtype: dtype of the teacher weights (`None` keeps the model's dtype).
        device: where the replica lives (`None`: the model's device; `"cpu"`: CPU memory, scored on the CPU).
    """

    kind = "full"
    load_on_rank0_only = False  # every rank reads the saved weights into its own replica

    def __init__(self, decay: float, dtype: torch.dtype | None = torch.float32, device: str | torch.device | None = None):
        self.decay = decay
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.module: nn.Module | None = None
        self.num_updates = 0

    @property
    def initialized(self) -> bool:
        return self.module is not None

    # -- construction and updates
    def _build(self, model: nn.Module) -> None:
        self.module = _replica(model, self.dtype, self.device)

    def _pairs(self, model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        student, teacher = dict(model.named_parameters()), dict(self.module.named_parameters())
        if student.keys() != teacher.keys():
            raise ValueError(f"teacher and student parameters differ, e.g. {sorted(set(student) ^ set(teacher))[:5]}")
        for name, phi in teacher.items():
            if full_shape(phi) != full_shape(student[name]):
                raise ValueError(
                    f"teacher and student shapes differ for {name}: {full_shape(phi)} vs {full_shape(student[name])}"
                )
        return [(name, phi, student[name]) for name, phi in teacher.items()]

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        """Lazy initialisation phi <- theta (Alg. 1, line 9) from an unwrapped model."""
        self._build(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_update_(self.module, model, self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def scoring(self, model: nn.Module | None = None):
        """Yield a callable that runs the teacher (`model` is the unwrapped policy; unused by full teachers)."""
        scorer = Scorer(self.module)
        yield scorer
        scorer.finish()

    def hidden_from_saving(self, model: nn.Module):
        return contextlib.nullcontext()  # the replica is not part of the model

    def named_state_tensors(self):
        for name, p in self.module.named_parameters():
            yield name, (p.ds_tensor if is_zero3(p) else p)

    def memory_bytes(self, model: nn.Module | None = None) -> int:
        if not self.initialized:
            return 0
        seen, total = set(), 0
        for t in [*self.module.parameters(), *self.module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += local_nbytes(t)
        return total

    # -- checkpoints (the format and its checks: checkpoint.py)
    def save(self, directory: str, write: bool = True) -> None:
        checkpoint.save(self, directory, write)

    def load(self, directory: str, model: nn.Module) -> bool:
        return checkpoint.load(self, directory, model)

    def state_tensors(self, write: bool) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").contiguous() for n, p in self.module.named_parameters()} if write else {}

    def load_state_tensors(self, reader, model: nn.Module, path: str) -> None:
        """Build the teacher for `model`, then copy the file's tensors into it (under ZeRO-3: rank 0 reads, the
        gathered shards are broadcast). Every rank checks the names first, so a bad file fails everywhere instead of
        hanging the others."""
        self._build(model)
        groups = alias_groups(self.module)
        keys = set(reader.keys())
        missing = [names[0] for _, names in groups if not keys.intersection(names)]
        if missing:
            raise ValueError(f"{path} has no weights for {missing[:5]}: it was written for another architecture")
        only_rank0 = self.load_on_rank0_only
        reads = not only_rank0 or rank() == 0
        for chunk in chunks(groups, lambda g: full_numel(g[0])):
            with torch.no_grad(), gathered([p for p, _ in chunk], modifier_rank=0 if only_rank0 else None):
                if reads:
                    for p, names in chunk:
                        p.data.copy_(reader.get_tensor(next(n for n in names if n in keys)))
