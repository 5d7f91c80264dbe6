"""`Scorer`: what every teacher's `scoring()` context yields, a callable that runs the teacher's forward."""

import torch
from torch import nn


class Scorer:
    """Calls the teacher, moving tensor inputs to its device.

    Under ZeRO-3 every forward all-gathers parameters, a collective, while ranks may hold different numbers of
    distinct contexts. So each real forward is preceded by a one-element all-reduce "I still have one", and on exit
    (`finish`) a rank that is done keeps answering "none left" and running a dummy forward alongside the others' real
    ones until every rank is done: the collectives always pair up, whatever the counts.
    """

    def __init__(self, module: nn.Module, zero3: bool = False):
        self.module = module
        if zero3:  # parameters are placeholders (possibly offloaded): compute happens on the accelerator
            from deepspeed.accelerator import get_accelerator

            self.device = torch.device(get_accelerator().current_device_name())
        else:
            self.device = next(module.parameters()).device
        dist = torch.distributed
        self.uniform = zero3 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _others_busy(self, mine: int) -> bool:
        flag = torch.tensor([mine], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def __call__(self, *args, **kwargs):
        if self.uniform:
            self._others_busy(1)
        move = lambda x: x.to(self.device) if torch.is_tensor(x) else x  # noqa: E731
        return self.module(*map(move, args), **{k: move(v) for k, v in kwargs.items()})

    def parameters(self, *args, **kwargs):
        """The module's parameters, led by an empty tensor on the compute device: callers place inputs with
        `next(model.parameters()).device`, and ZeRO-3 placeholders (offloaded or not) need not sit there."""
        yield torch.empty(0, device=self.device)
        yield from self.module.parameters(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)

    def finish(self):
        if not self.uniform:
            return
        dummy = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        while self._others_busy(0):
            self.module(input_ids=dummy, attention_mask=torch.ones_like(dummy), logits_to_keep=1)
