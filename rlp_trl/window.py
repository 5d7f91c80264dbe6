"""The model's context window: RLP's default context length shrinks to fit it; a length the user set is checked.

A rollout is context + think-open marker + thought (<= max_completion_length) + think-close marker + reward_horizon
true tokens, all within the model's positions (`max_position_embeddings`, e.g. 1024 for GPT-2, 2048 for SmolLM2).
`max_context_tokens` defaults to 2048 (the paper's): when the user did not set it and a rollout would not fit, the
context is shortened to what fits (contexts are left-truncated anyway) with one log line. A value the user set
(flag, YAML or Python) that cannot fit is a `UsageError` before any document is tokenized, proposing values that fit.
"""

from __future__ import annotations

import logging
import os

from .usage import UsageError

logger = logging.getLogger("rlp_trl")


class DefaultContextTokens(int):
    """The default of `RLPConfig.max_context_tokens` (2048), marked as not chosen by the user: a plain `int` from a
    flag, a YAML file or Python replaces it, so `is_default(args)` tells the two apart."""

    def __repr__(self) -> str:
        return int.__repr__(self)

    def __reduce__(self):
        return (DefaultContextTokens, (int(self),))


def is_default(value) -> bool:
    return isinstance(value, DefaultContextTokens)


def model_window(model) -> int | None:
    """max_position_embeddings of a model, a config, or a model name/folder (read from its config.json)."""
    config = getattr(model, "config", model)
    if isinstance(model, str):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError):  # cannot read the config here: GRPOTrainer's own loading will say why
            return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    window = getattr(config, "max_position_embeddings", None)
    return window if isinstance(window, int) and window > 0 else None


def fit_context_window(model, args, open_len: int, close_len: int) -> int | None:
    """Shorten a default `args.max_context_tokens` to the model's window, or raise for an impossible explicit one.

    Returns the window (None when the model does not declare one)."""
    window = model_window(model)
    if window is None:
        return None
    rest = open_len + args.max_completion_length + close_len + args.reward_horizon
    need = args.max_context_tokens + rest
    if need <= window:
        return window
    fits = window - rest  # the longest context that fits with this thought length
    floor = max(args.min_context_tokens, 1)
    if is_default(args.max_context_tokens) and fits >= floor:
        if os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
            logger.warning(
                f"[rlp_trl] max_context_tokens {int(args.max_context_tokens)} -> {fits}: the model's context window "
                f"is {window} positions and a rollout also holds the markers ({open_len}+{close_len}), the thought (up "
                f"to max_completion_length={args.max_completion_length}) and reward_horizon={args.reward_horizon}; "
                f"set --max_context_tokens to choose another length"
            )
        args.max_context_tokens = fits
        return window
    thought_fits = window - (max(int(args.max_context_tokens), floor) if not is_default(args.max_context_tokens)
                             else floor) - open_len - close_len - args.reward_horizon
    proposals = []
    if fits >= floor:
        proposals.append(f"--max_context_tokens {fits}")
    if thought_fits >= 1:
        ctx = int(args.max_context_tokens) if not is_default(args.max_context_tokens) else floor
        proposals.append(f"--max_completion_length {thought_fits}" + ("" if fits >= floor or not is_default(
            args.max_context_tokens) else f" with --max_context_tokens {ctx}"))
    half = (window - open_len - close_len - args.reward_horizon) // 2
    if half >= floor and f"--max_context_tokens {half}" not in proposals:
        proposals.append(f"--max_context_tokens {half} --max_completion_length {half}")
    raise UsageError(
        f"RLPConfig: max_context_tokens ({int(args.max_context_tokens)}) + think_open ({open_len} token(s)) + "
        f"max_completion_length ({args.max_completion_length}) + think_close ({close_len}) + reward_horizon "
        f"({args.reward_horizon}) = {need} tokens, more than the model's context window "
        f"(max_position_embeddings={window}). Values that fit: " + (" or ".join(proposals) or
                                                                     "none (lower --min_context_tokens)") + "."
    )
