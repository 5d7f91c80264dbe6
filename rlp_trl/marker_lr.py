"""A larger learning rate for the think markers' embedding rows (`RLPConfig.think_marker_lr_multiplier`).

Quiet-STaR trains its start/end-of-thought embeddings at 100x the learning rate of the rest of the model, so that new
markers can move far from where they were initialised. The rows live inside the (often tied) embedding matrix, one
parameter with the whole vocabulary, so they cannot get an optimizer group of their own; instead the callback scales
their update: the rows are read before each optimizer step and set to `before + m * (after - before)` after it. With
Adam the step of a row is lr x its normalised moment, so this is the step at m x lr (weight decay included). Tied
input/output embeddings are one tensor and are scaled once; untied, both rows are scaled. Runs before the EMA update,
so the teacher averages the scaled weights.
"""

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from .usage import UsageError

logger = logging.getLogger(__name__)


def marker_row_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable embedding matrices that hold marker rows: input and output embeddings (once when tied); under
    PEFT only the ones training (e.g. listed in `modules_to_save`), none when the embeddings are frozen."""
    found: dict[int, nn.Parameter] = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None:
            continue
        for p in module.parameters():
            if p.requires_grad and p.dim() == 2:
                found[id(p)] = p
    return list(found.values())


class MarkerLRCallback(TrainerCallback):
    """Scales the optimizer's update of the marker rows by `multiplier` (module docstring)."""

    def __init__(self, model: nn.Module, marker_ids: list[int], multiplier: float):
        self.params = marker_row_parameters(model)
        self.rows = torch.tensor(sorted(set(marker_ids)), dtype=torch.long)
        self.multiplier = multiplier
        self.before: list[torch.Tensor] = []
        if not self.params:
            logger.warning(
                "think_marker_lr_multiplier=%s has nothing to scale: the embeddings are frozen (LoRA); list them in "
                "the PEFT config's modules_to_save to train the marker rows", multiplier,
            )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = [p.detach()[self.rows.to(p.device)].clone() for p in self.params]

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        for p, before in zip(self.params, self.before):
            rows = self.rows.to(p.device)
            p[rows] = before + self.multiplier * (p[rows] - before)
        self.before = []


def marker_lr_callback(model: nn.Module, marker_ids: list[int], multiplier: float, *, text_markers: bool,
                       partitioned: bool) -> MarkerLRCallback | None:
    """The callback for `think_marker_lr_multiplier`, None at 1.0; a one-line error where it cannot apply."""
    if multiplier == 1.0:
        return None
    if text_markers:
        raise UsageError("think_marker_lr_multiplier needs single-token markers: text markers are ordinary tokens "
                         "(set think_markers_as_text false, or the multiplier to 1)")
    if partitioned:
        raise UsageError("think_marker_lr_multiplier is not supported under DeepSpeed ZeRO-3 or FSDP (the embedding "
                         "rows are sharded): set it to 1, or use ZeRO-2 / DDP")
    return MarkerLRCallback(model, marker_ids, multiplier)
