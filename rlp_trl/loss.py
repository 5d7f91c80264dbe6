"""The clipped surrogate on thought tokens (paper eq. 8 and Algorithm 1, line 13-14)."""

import torch


def clipped_thought_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    thought_mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    per_token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO-clipped surrogate averaged over each thought, then over all thoughts (eq. 8).

    rho_u = exp(log pi_theta(l_u | prefix_u) - log pi_theta_old(l_u | prefix_u)) and the loss of one thought is
    -(1/|c|) * sum_u min(rho_u * A, clip(rho_u, 1 - eps_low, 1 + eps_high) * A). Tokens outside `thought_mask`
    (padding, the close marker, the scored next tokens) contribute nothing and get no gradient. A thought with an
    empty mask contributes zero but still counts in the mean over the N thoughts, as in Algorithm 1 (1/BG).

    Args:
        per_token_logps: `[N, T]` log-probs under the current policy (carries the gradient).
        old_per_token_logps: `[N, T]` log-probs under the behaviour snapshot theta_old (no gradient).
        advantages: `[N]` group-relative advantages (eq. 7).
        thought_mask: `[N, T]` 1 on thought tokens, 0 elsewhere.
        epsilon_low, epsilon_high: clipping range (1 - eps_low, 1 + eps_high).
        per_token_weights: optional `[N, T]` extra weights (e.g. vLLM importance-sampling correction).

    Returns:
        Scalar loss.
    """
    if epsilon_low <= 0 or epsilon_high <= 0:
        raise ValueError(f"clipping epsilons must be > 0, got ({epsilon_low}, {epsilon_high})")
    mask = thought_mask.to(per_token_logps.dtype)
    ratio = torch.exp(per_token_logps - old_per_token_logps.detach())
    adv = advantages.detach().unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(ratio * adv, clipped * adv)
    if per_token_weights is not None:
        per_token_loss = per_token_loss * per_token_weights
    per_thought = (per_token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return per_thought.mean()
