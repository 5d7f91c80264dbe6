"""`Teacher`: what `RLPTrainer`, the resilience checks and the checkpoint code use of an EMA teacher.

`EMATeacher`, `ZeRO3EMATeacher` and `AdapterEMATeacher` implement it (tests/test_teacher.py checks names and
signatures). `model` is always the unwrapped policy (no DDP / DeepSpeed wrapper).
"""

from contextlib import AbstractContextManager
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Teacher(Protocol):
    kind: str  # "full" (a replica of the weights, ZeRO-3 shards included) or "adapter" (PEFT); in rlp_teacher.json
    decay: float  # tau in phi <- tau * phi + (1 - tau) * theta (validated by RLPConfig)
    dtype: torch.dtype | None  # dtype of the EMA state (None: the model's)
    num_updates: int  # EMA updates since phi <- theta
    load_on_rank0_only: bool  # loading: only rank 0 reads the file and holds the whole state (ZeRO-3)

    @property
    def initialized(self) -> bool:
        """phi has been set (lazily, at the first batch: Alg. 1, lines 8-9), or restored from a checkpoint."""

    def init_from(self, model: nn.Module) -> None:
        """phi <- theta."""

    def update(self, model: nn.Module) -> None:
        """phi <- tau * phi + (1 - tau) * theta (Alg. 1, line 15), after an optimizer step."""

    def scoring(self, model: nn.Module) -> AbstractContextManager[Callable[..., Any]]:
        """`with teacher.scoring(model) as m: m(input_ids=...)` runs p_ema (call on every rank under ZeRO-3)."""

    def hidden_from_saving(self, model: nn.Module) -> AbstractContextManager[None]:
        """Keeps the teacher out of the Trainer's model saves while the context is open."""

    def named_state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) of the EMA state this process holds (ZeRO-3: its shards), for finiteness checks."""

    def memory_bytes(self, model: nn.Module | None = None) -> int:
        """Bytes the teacher adds on this process (with `model`, the adapter teacher counts its adapter too)."""

    def save(self, directory: str, write: bool = True) -> None:
        """Write `rlp_teacher.safetensors` + `rlp_teacher.json` (checkpoint.py); call on every rank."""

    def load(self, directory: str, model: nn.Module) -> bool:
        """Restore what `save` wrote; False if `directory` holds no teacher. Call on every rank."""

    # The two hooks of the one checkpoint implementation (checkpoint.py).
    def state_tensors(self, write: bool) -> dict[str, torch.Tensor]:
        """Name -> full CPU tensor, the content of rlp_teacher.safetensors ({} where not `write`; every rank calls
        it, as ZeRO-3 gathers)."""

    def load_state_tensors(self, reader, model: nn.Module, path: str) -> None:
        """Set the state from `reader` (`keys()`, `get_tensor(name)`: an open safetensors file at `path`), building
        the teacher for `model` if needed; raises naming `path` if tensors are missing."""
