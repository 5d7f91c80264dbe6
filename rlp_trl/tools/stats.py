"""Statistics of `rlp-eval` and `rlp-bench`: means with normal confidence intervals, fractions with Wilson
intervals, the per-position metrics of held-out positions and their paired differences (rlp_trl/tools/eval.py)."""

import math

import torch

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# ---------------------------------------------------------------------------------------------------- statistics
def mean_ci(values, z: float = Z95) -> dict:
    """Mean with a normal confidence interval mean +- z * s / sqrt(n) (s: sample std, ddof=1)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    n = x.numel()
    mean = x.mean().item() if n else float("nan")
    half = z * x.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def wilson_ci(successes: int, n: int, z: float = Z95) -> dict:
    """A fraction with its Wilson score interval (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"mean": p, "ci_low": centre - half, "ci_high": centre + half, "n": n}


def position_metrics(nothink_logps: torch.Tensor, reasoned_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position metrics from `[N]` no-think log-probs and `[N, K]` log-probs after K thoughts (nats).

    Returns `[N]` tensors: `nll_nothink`, `nll_reasoned` (mean over thoughts of the NLL), `nll_marginal`
    (-log of the mean probability), `info_gain` (mean over thoughts of reasoned - no-think log-prob) and
    `positive_thought_frac` (fraction of the K thoughts with a positive gain).
    """
    b = nothink_logps.double()
    r = reasoned_logps.double()
    k = r.size(1)
    return {
        "nll_nothink": -b,
        "nll_reasoned": -r.mean(1),
        "nll_marginal": -(torch.logsumexp(r, 1) - math.log(k)),
        "info_gain": r.mean(1) - b,
        "positive_thought_frac": (r > b[:, None]).double().mean(1),
    }


def summarize_positions(per_position: dict[str, torch.Tensor]) -> dict:
    """Means with CIs, perplexities (exp of the mean NLL and of its CI ends) and the fraction where thinking helps."""
    out = {name: mean_ci(values) for name, values in per_position.items()}
    for name in ("nothink", "reasoned", "marginal"):
        nll = out[f"nll_{name}"]
        out[f"ppl_{name}"] = {k: (math.exp(v) if k != "n" else v) for k, v in nll.items()}
    gains = per_position["info_gain"]
    out["thinking_helps_frac"] = wilson_ci(int((gains > 0).sum()), gains.numel())
    return out


def compare_positions(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Paired differences b - a on the same positions (mean with CI), for every per-position metric."""
    return {name: mean_ci(b[name] - a[name]) for name in a}
