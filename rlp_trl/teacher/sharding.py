"""Helpers that let one code path serve plain tensors and DeepSpeed ZeRO-3 parameter shards alike.

Under ZeRO-3 a parameter is a placeholder (`ds_id`, `ds_shape`, `ds_numel`; this rank's shard in `ds_tensor`) and
its full value exists only inside `deepspeed.zero.GatheredParameters`. Elsewhere every helper is the plain-tensor
identity (`gathered` is a no-op), so the teachers never branch on the backend themselves.
"""

import contextlib

import torch
from torch import nn

GATHER_CHUNK_NUMEL = 1 << 26  # ZeRO-3: at most this many elements are gathered at once (256 MB in float32)


def is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_shape(param: torch.Tensor) -> tuple:
    return tuple(param.ds_shape) if is_zero3(param) else tuple(param.shape)


def full_numel(param: torch.Tensor) -> int:
    return param.ds_numel if is_zero3(param) else param.numel()


def local_nbytes(t: torch.Tensor) -> int:
    """Bytes this process holds for `t` (its shard under ZeRO-3)."""
    t = t.ds_tensor if is_zero3(t) else t
    return t.numel() * t.element_size()


def gathered(params: list, modifier_rank: int | None = None):
    """`deepspeed.zero.GatheredParameters` for ZeRO-3 parameters, a no-op otherwise (same decision on every rank)."""
    if not any(is_zero3(p) for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def chunks(items: list, numel, budget: int = GATHER_CHUNK_NUMEL):
    """`items` in consecutive groups of at most `budget` elements (by `numel(item)`; an oversized item goes alone)."""
    chunk, size = [], 0
    for item in items:
        n = numel(item)
        if chunk and size + n > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


def alias_groups(module: nn.Module) -> list[tuple[nn.Parameter, list[str]]]:
    """Each distinct parameter with all the names it has (tied weights have several)."""
    groups: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), (p, []))[1].append(name)
    return list(groups.values())
