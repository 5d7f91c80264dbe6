"""What one RLP step logs, as values: TRL's completion-length metrics for the prefix-shared sampler (which bypasses
TRL's `_generate`, where they are computed), RLP's own `rlp/*` metrics, and the rows of TRL's completions table. The
trainer appends them to TRL's `_metrics` / `_logs` buffers, which TRL logs."""

import torch
from accelerate.utils import gather_object

from .markers import LENGTH_LIMIT, SAMPLED_CLOSE
from .rollouts import Thoughts


def generation_metrics(gather, prompt_ids: list[list[int]], completion_ids: list[list[int]], stop_ids, device) -> dict:
    """The metrics TRL 1.16's `GRPOTrainer._generate` logs for plain (tool-free) completions, computed alike: token
    counts, completion lengths, the share truncated (last token not a stop/pad token) and the terminated lengths."""
    prompt_lengths = gather(torch.tensor([len(p) for p in prompt_ids], device=device))
    lengths = gather(torch.tensor([len(c) for c in completion_ids], device=device)).float()
    truncated = gather(torch.tensor([not c or c[-1] not in stop_ids for c in completion_ids], device=device))
    terminated = lengths[~truncated]
    if terminated.numel() == 0:
        terminated = torch.zeros(1, device=device)
    return {
        "tokens": (prompt_lengths.sum() + lengths.sum()).item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": truncated.float().mean().item(),
        "completions/mean_terminated_length": terminated.mean().item(),
        "completions/min_terminated_length": terminated.min().item(),
        "completions/max_terminated_length": terminated.max().item(),
    }


def rlp_metrics(gather, thoughts: Thoughts, s_pred, s_ema, gains, advantages, teacher_updates: int) -> dict:
    """`rlp/*`: the information gain (eq. 5) over every process's rollouts (`gains`, `advantages` already gathered),
    its parts S_pred and S_ema (logged as `rlp/reasoned_logp_mean` and `rlp/baseline_logp_mean`), how the thoughts ended, the advantage scale, the teacher's update count."""
    device = s_pred.device

    def gathered(values):
        return gather(torch.tensor(values, device=device, dtype=torch.float32))

    lengths = gathered([len(t) for t in thoughts.ids])
    return {
        "rlp/info_gain_mean": gains.mean().item(),
        "rlp/info_gain_std": gains.std().item() if gains.numel() > 1 else 0.0,
        "rlp/positive_gain_frac": (gains > 0).float().mean().item(),
        "rlp/reasoned_logp_mean": gather(s_pred.sum(-1)).mean().item(),
        "rlp/baseline_logp_mean": gather(s_ema.sum(-1)).mean().item(),
        "rlp/thought_length_mean": lengths.mean().item(),
        "rlp/thought_length_max": lengths.max().item(),
        "rlp/thought_truncated_frac": gathered([e == LENGTH_LIMIT for e in thoughts.ends]).mean().item(),
        "rlp/thought_closed_frac": gathered([e == SAMPLED_CLOSE for e in thoughts.ends]).mean().item(),
        "rlp/advantage_abs_mean": advantages.abs().mean().item(),
        "rlp/teacher_updates": float(teacher_updates),
    }


def completion_rows(decode, inputs, thoughts: Thoughts) -> dict[str, list[str]]:
    """This process's rows of `log_completions`: the context tail, the thought, the true next token(s)."""
    return {
        "prompt": ["…" + decode(x["context_ids"][-48:]) for x in inputs],
        "completion": [decode(t) for t in thoughts.ids],
        "target": [decode(x["target_ids"]) for x in inputs],
    }


def completion_table(decode, inputs, thoughts: Thoughts, gains, advantages) -> dict:
    """Every process's rows of TRL's completions table (`log_completions`), shaped like `GRPOTrainer._logs`: the
    context tail, the thought, the true token(s), the gain and the advantage (`gains`, `advantages` already gathered)."""
    rows = {k: gather_object(v) for k, v in completion_rows(decode, inputs, thoughts).items()}
    return {"prompt": rows["prompt"], "completion": rows["completion"], "extra": {"target": rows["target"]},
            "rewards": {"info_gain": gains.tolist()}, "advantages": advantages.tolist()}


def extend_logs(logs: dict, rows: dict) -> None:
    """Append `completion_table` rows to TRL's `_logs` buffers (lists, or dicts of lists by column)."""
    for key, value in rows.items():
        if isinstance(value, dict):
            for column, values in value.items():
                logs[key][column].extend(values)
        else:
            logs[key].extend(value)
