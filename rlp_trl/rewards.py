"""The RLP reward and advantage math (paper eq. 3-5 and 7), as small pure-torch functions.

The trainer calls exactly these functions; the unit tests check them against hand-computed values.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch


def information_gain(
    reasoned_logps: torch.Tensor, baseline_logps: torch.Tensor, discount: float = 1.0
) -> torch.Tensor:
    """Information-gain reward of each thought (eq. 5), optionally over a horizon of H future tokens.

    r(c_t) = S_pred(c_t) - S_ema with S_pred = log p_theta(x_t | x_<t, c_t) (eq. 3) and
    S_ema = log p_ema(x_t | x_<t) (eq. 4). With H > 1 scored tokens the reward is the discounted sum
    sum_j discount**j * (S_pred[j] - S_ema[j]) over x_t .. x_{t+H-1}; H = 1 is the paper.

    Args:
        reasoned_logps: `[N]` or `[N, H]` log-probs of the true tokens after the thought.
        baseline_logps: same shape, log-probs of the same tokens under the no-think EMA teacher.
        discount: weight of the j-th future token is `discount**j`.

    Returns:
        `[N]` rewards. No gradient flows through them (the paper treats r as a constant).
    """
    if reasoned_logps.shape != baseline_logps.shape:
        raise ValueError(f"shape mismatch: reasoned {tuple(reasoned_logps.shape)} vs baseline {tuple(baseline_logps.shape)}")
    gain = (reasoned_logps - baseline_logps).detach()
    if gain.dim() == 1:
        return gain
    weights = discount ** torch.arange(gain.size(1), device=gain.device, dtype=gain.dtype)
    return (gain * weights).sum(dim=1)


def group_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Group-relative advantages with the corrected inclusive mean (eq. 7).

    A_i = G / (G - 1) * (r_i - mean_j r_j), no division by the standard deviation, no gradient through the mean.

    Args:
        rewards: `[N]` rewards ordered so that each group of `num_generations` rollouts of one context is contiguous.
        num_generations: G >= 2.
    """
    if num_generations < 2:
        raise ValueError(f"RLP needs at least 2 rollouts per context (eq. 7 divides by G-1), got {num_generations}")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.detach().view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (num_generations / (num_generations - 1) * centred).view(-1)



def prefix_match_reward(thought_texts: list[str], target_prefix_texts: list[list[str]]) -> torch.Tensor:
    """RPT's binary prefix-match reward (Dong et al. 2025, arXiv 2506.08007) in RLP's thought format.

    The prediction is the thought's last line: its text after the last newline, whitespace-stripped. The reward is 1
    if the prediction is non-empty and equals the whitespace-stripped text of the first j true tokens
    x_t .. x_{t+j-1} for some 1 <= j <= H (a byte prefix of the true continuation that ends on a token boundary),
    else 0.

    Args:
        thought_texts: `N` decoded thoughts (without the markers).
        target_prefix_texts: per thought, `H` strings: the decoded first 1, 2, ..., H true tokens.

    Returns:
        `[N]` float rewards in {0, 1}.
    """
    rewards = []
    for thought, prefixes in zip(thought_texts, target_prefix_texts):
        prediction = thought.rsplit("\n", 1)[-1].strip()
        rewards.append(float(bool(prediction) and prediction in {p.strip() for p in prefixes}))
    return torch.tensor(rewards)


@dataclass(frozen=True)
class NonFiniteRewards:
    """What `exclude_nonfinite_groups` found in one batch of rewards (every process's, gathered)."""

    count: int  # rewards that were NaN/inf
    excluded: torch.Tensor  # `[num_groups]` bool: the groups holding one (their rewards are set to 0)
    largest: float  # the largest finite |reward|, for the runaway check (rlp_trl.resilience)


def exclude_nonfinite_groups(rewards: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, NonFiniteRewards]:
    """Set every reward of a group that holds a NaN/inf reward to 0, so eq. 7 gives that group zero advantages and no
    gradient (one NaN would otherwise make every advantage of its group NaN, and the loss with it). Returns the
    rewards (the same tensor when all are finite) and what was found; one host sync."""
    bad = ~torch.isfinite(rewards)
    finite_abs = torch.where(bad, torch.zeros_like(rewards), rewards).abs().float()
    count, largest = torch.stack([bad.sum().float(), finite_abs.max() if rewards.numel() else finite_abs.sum()]).tolist()
    excluded = bad.view(-1, num_generations).any(dim=1)
    found = NonFiniteRewards(int(count), excluded, largest)
    if not found.count:
        return rewards, found
    out = rewards.clone()
    out.view(-1, num_generations)[excluded] = 0.0
    return out, found


@dataclass(frozen=True)
class Reward:
    """The reward a thought is trained on, picked once from `RLPConfig.reward_type` (`reward_for`)."""

    compute: Callable[[torch.Tensor, list[list[int]], list[list[int]]], torch.Tensor]  # (gains, thought ids, targets)
    metrics: Callable[[torch.Tensor], dict]  # logged next to the gain, from every process's rewards


def reward_for(reward_type: str, decode: Callable[[list[int]], str]) -> Reward:
    """`"information_gain"`: the paper's reward, the gain itself (eq. 5). `"rpt_prefix_match"`: RPT's binary reward
    (ablation; `prefix_match_reward` over the decoded thought and the true token prefixes), its mean logged as
    `rlp/reward_mean` next to the gain."""
    if reward_type == "information_gain":
        return Reward(lambda gains, thought_ids, targets: gains, lambda rewards: {})

    def rpt(gains, thought_ids, targets):
        prefixes = [[decode(y[:j]) for j in range(1, len(y) + 1)] for y in targets]
        return prefix_match_reward([decode(t) for t in thought_ids], prefixes).to(gains.device)

    return Reward(rpt, lambda rewards: {"rlp/reward_mean": rewards.mean().item()})
