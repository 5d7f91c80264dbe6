"""The RLP reward and advantage math (paper eq. 3-5 and 7), as small pure-torch functions.

The trainer calls exactly these functions; the unit tests check them against hand-computed values.
"""

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
