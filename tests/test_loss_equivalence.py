"""Eq. 8 is TRL's own loss: `GRPOTrainer._compute_loss` with `loss_type="grpo"` over RLP's `tool_mask` equals the
oracle `rlp_trl.loss.clipped_thought_loss` (per-thought mean of the clipped surrogate, then the mean over thoughts)
in value, gradient and clip metrics, with asymmetric epsilons, both clipping sides active, and IS weights.

RLPTrainer therefore does not override `_compute_loss`; this test is what would catch TRL changing the objective.
"""

import pytest
import torch

from conftest import loss_with_logps_grad, tiny_config
from rlp_trl import RLPTrainer, clipped_thought_loss

EPS_LOW, EPS_HIGH = 0.2, 0.28


def _batch(trainer):
    inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    torch.manual_seed(3)
    return trainer._generate_and_score_completions(inputs)


@pytest.mark.parametrize("with_is_weights", [False, True], ids=["plain", "is_weights"])
def test_trl_grpo_loss_is_eq8_on_the_action(tiny_model_dir, tmp_path, tiny_docs, with_is_weights):
    args = tiny_config(tmp_path, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, max_steps=1)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop; the loss divides by it
    batch = _batch(trainer)
    mask = (batch["completion_mask"] * batch["tool_mask"]).float()
    assert mask.sum() > 0 and (batch["advantages"] > 0).any() and (batch["advantages"] < 0).any()

    # theta_old away from theta by +-0.5 nats per token, so rho leaves [1 - eps_low, 1 + eps_high] on both sides
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1), batch["completion_ids"].size(1),
        )
    generator = torch.Generator().manual_seed(0)
    shift = (torch.rand(current.shape, generator=generator) - 0.5).to(current.device)
    batch["old_per_token_logps"] = current + shift
    weights = None
    if with_is_weights:  # vLLM's importance-sampling correction, as TRL applies it
        weights = 0.5 + torch.rand(current.shape, generator=generator).to(current.device)
        batch["importance_sampling_ratio"] = weights
        trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True

    loss, grad, logps = loss_with_logps_grad(trainer, batch)
    trl_param_grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    trainer.use_vllm = False

    leaf = logps.clone().requires_grad_(True)
    oracle = clipped_thought_loss(leaf, batch["old_per_token_logps"], batch["advantages"], mask, EPS_LOW, EPS_HIGH,
                                  per_token_weights=weights) / 2
    oracle.backward()
    torch.testing.assert_close(loss.detach(), oracle.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-9)
    assert torch.all(grad[mask == 0] == 0) and (grad[mask == 1] != 0).any()
    assert trl_param_grads and any(g.abs().sum() > 0 for g in trl_param_grads)

    # clip metrics: the share of action tokens clipped below (A < 0) and above (A > 0)
    ratio = torch.exp(logps - batch["old_per_token_logps"])
    adv = batch["advantages"][:, None]
    low = ((ratio < 1 - EPS_LOW) & (adv < 0)).float()
    high = ((ratio > 1 + EPS_HIGH) & (adv > 0)).float()
    metrics = trainer._metrics["train"]
    expected_low, expected_high = (low * mask).sum() / mask.sum(), (high * mask).sum() / mask.sum()
    assert expected_low > 0 and expected_high > 0  # both sides of the clip are exercised
    assert metrics["clip_ratio/low_mean"][-1] == pytest.approx(expected_low.item(), rel=1e-6)
    assert metrics["clip_ratio/high_mean"][-1] == pytest.approx(expected_high.item(), rel=1e-6)
    assert metrics["clip_ratio/region_mean"][-1] == pytest.approx(((low + high) * mask).sum().item() / mask.sum().item(),
                                                                  rel=1e-6)
