"""The clipped surrogate on thought tokens (paper eq. 8 and Algorithm 1, line 13-14), and which tokens are the action.

Training uses TRL's own loss (`GRPOTrainer._compute_loss`, `loss_type="grpo"`), which over RLP's `tool_mask` is the
same objective; `clipped_thought_loss` states eq. 8 on its own and is the oracle tests/test_loss_equivalence.py holds
TRL's loss to (values, gradients, clip metrics, asymmetric epsilons, importance-sampling weights).
"""

import torch

from .markers import SAMPLED_CLOSE


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
    (padding, the scored next tokens, a close marker the trainer wrote: `action_mask`) contribute nothing and get no
    gradient. A thought with an empty mask contributes zero but still counts in the mean over the N thoughts, as in
    Algorithm 1 (1/BG).

    Args:
        per_token_logps: `[N, T]` log-probs under the current policy (carries the gradient).
        old_per_token_logps: `[N, T]` log-probs under the behaviour snapshot theta_old (no gradient).
        advantages: `[N]` group-relative advantages (eq. 7).
        thought_mask: `[N, T]` 1 on the action's tokens (`action_mask`), 0 elsewhere.
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


def action_mask(thought_len: int, end: str, close_len: int, horizon: int, *, close_in_loss: bool = True,
                mask_thought: bool = False) -> list[int]:
    """Which completion tokens (thought, close marker, H true tokens) carry the policy gradient of eq. 8.

    A thought is a sample of the autoregressive policy, and its probability includes the event that ends it:
    pi(c) = prod_u pi(c_u | prefix_u) * pi(</think> | c). Leaving the sampled close marker out of grad log pi biases
    the policy gradient and makes the thought's length unlearnable, so by default (`close_in_loss`) a close marker the
    policy sampled is trained with the thought (the per-thought mean of eq. 8 then runs over |c| + 1 tokens), as TRL's
    GRPO trains a completion's first EOS. A close marker the trainer wrote (after a thought at the length limit, or in
    place of a sampled EOS) was not sampled and gets none; the true next tokens are teacher-forced and get none.

    Args:
        thought_len: |c|, the thought tokens before the close marker.
        end: `SAMPLED_CLOSE`, `OTHER_STOP` or `LENGTH_LIMIT`.
        close_len: tokens of the close marker as it is written in the completion.
        horizon: true next tokens H scored after it.
        close_in_loss: False: thought tokens only (ablation; the behaviour before this option existed).
        mask_thought: exclude the whole rollout (`truncated_thoughts="mask"` for a thought at the limit).
    """
    on = 0 if mask_thought else 1
    close = on if (close_in_loss and end == SAMPLED_CLOSE) else 0
    return [on] * thought_len + [close] * close_len + [0] * horizon
