"""Pre-flight checks at the start of `train()`: the model's context window holds context + markers + thought +
horizon, the weights are finite, a streaming dataset yields at least one usable position; and, before the output
folder is claimed, that a multi-process launch formed one distributed run (`check_launch`)."""

import os

from datasets import IterableDataset

from ..usage import UsageError
from .nonfinite import NonFiniteError, scan_tensors


def preflight(model, args, open_len: int, close_len: int, dataset, batch_contexts: int) -> float:
    """All checks below on the unwrapped `model`, the `RLPConfig` `args`, the think markers' token counts and the
    training `dataset` (of which one generation batch, `batch_contexts` contexts, must be readable). Returns the
    largest |weight| of the trainable parameters (the runaway check's reference)."""
    check_context_window(model, args, open_len, close_len)
    largest = check_finite_weights(model)
    check_stream_nonempty(dataset, batch_contexts)
    return largest


def check_context_window(model, args, open_len: int, close_len: int) -> None:
    """Context + open marker + thought + close marker + horizon must fit in the model's positions."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "max_position_embeddings", None)
    need = args.max_context_tokens + open_len + args.max_completion_length + close_len + args.reward_horizon
    if isinstance(window, int) and need > window:
        raise ValueError(
            f"RLPConfig: max_context_tokens ({args.max_context_tokens}) + think_open ({open_len} token(s)) + "
            f"max_completion_length ({args.max_completion_length}) + think_close ({close_len}) + reward_horizon "
            f"({args.reward_horizon}) = {need} tokens, more than the model's context window "
            f"(max_position_embeddings={window}). Lower max_context_tokens or max_completion_length."
        )


def check_finite_weights(model) -> float:
    """NonFiniteError naming the first non-finite parameter; returns the largest |weight| of the trainable ones."""
    named = list(model.named_parameters())
    bad, _ = scan_tensors(named)
    if bad:
        raise NonFiniteError(
            f"The model's parameter {bad[0]} holds non-finite values (NaN/inf) before training: the checkpoint is "
            f"degenerate, nothing sensible can be sampled from it."
        )
    return scan_tensors([(n, p) for n, p in named if p.requires_grad])[1]


def check_stream_nonempty(dataset, needed: int = 1) -> None:
    """A streaming dataset is lazy: read its first `needed` positions (one generation batch of contexts), so a stream
    without enough usable rows fails at start instead of 'training' zero steps."""
    if not isinstance(dataset, IterableDataset):
        return
    found = sum(1 for _ in zip(range(needed), dataset))
    if found < needed:
        raise UsageError(
            f"The streaming training dataset yields no usable positions for a full batch ({found} found, one generation "
            f"batch needs {needed} contexts): its documents are empty, not strings, or shorter than "
            f"min_context_tokens + reward_horizon tokens (or the stream is empty)."
        )


def check_launch(num_processes: int) -> None:
    """A launcher started WORLD_SIZE processes, but the trainer runs as `num_processes` (1): the processes did not form
    one distributed run and each would train alone. Seen with `torchrun --nproc_per_node 2` on a CPU machine without
    `--use_cpu true` (transformers then leaves torch.distributed unused); the second rank's symptom would otherwise be
    the output folder's lock naming its sibling as "another run"."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return
    if world > 1 and num_processes == 1:
        raise UsageError(
            f"this process is rank {os.environ.get('RANK', '?')} of {world} started by torchrun / accelerate launch, but "
            f"training runs as a single process: the {world} processes did not join one distributed run and would each "
            f"train alone into the same output_dir. On CPU pass --use_cpu true (torch.distributed over gloo); on GPUs "
            f"check that every process sees a GPU (CUDA_VISIBLE_DEVICES); or launch one process."
        )
