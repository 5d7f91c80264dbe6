"""The values one RLP step passes along (Algorithm 1, lines 6-12), and the pure functions between them.

    sample      -> Rollouts      the sampled tokens per row (+ S_pred from the sampler's cache when it could)
    cut         -> Thoughts      where each thought ends, the completion (thought + </think> + x_t..), the action
    tensorize   -> PaddedBatch   the padded batch: the tensors TRL's loss reads
    score       -> S_pred, S_ema (eqs. 3-4; rlp_trl.fast.scoring), rewards and advantages (eqs. 5, 7; rlp_trl.rewards)
    pack_for_trl                 the dict `GRPOTrainer._compute_loss` consumes

`RLPTrainer._generate_and_score_completions` is these calls in this order.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .loss import action_mask
from .markers import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE
from .markers import split_thought, split_thought_text
from .fast.scoring import pad_rows


@dataclass
class Rollouts:
    """What the sampler returns for one generation batch (`RLPTrainer.sample_thoughts`).

    Attributes:
        prompt_ids: per row, the prompt (context + think-open marker) as sampled.
        sampled_ids: per row, the sampled tokens up to and including the first stop token (close marker or EOS), or
            `max_completion_length` tokens when none came.
        sampling_logps: per row, the sampler's log-prob of each sampled token (vLLM, for importance sampling), or None.
        suffix_logps: `[N, 1 + H]` log p(</think>, x_t, .. | prompt, thought) read from the sampler's KV cache
            (prefix-shared sampling with single-token markers), or None: S_pred then takes a forward pass.
        prefill_tokens, decode_tokens: positions the prefix-shared sampler ran (None on TRL's own paths).
    """

    prompt_ids: list[list[int]]
    sampled_ids: list[list[int]]
    sampling_logps: list[list[float]] | None = None
    suffix_logps: torch.Tensor | None = None
    prefill_tokens: int | None = None
    decode_tokens: int | None = None


@dataclass
class Thoughts:
    """Each rollout cut into its thought, how it ended (`rlp_trl.loss`), the completion the loss sees
    (thought + close marker + the true next token(s)) and its action mask (`loss.action_mask`)."""

    ids: list[list[int]]
    ends: list[str]
    completions: list[list[int]]
    action_masks: list[list[int]]


@dataclass
class PaddedBatch:
    """Padded tensors of one batch: prompts left-padded, completions right-padded (TRL's layout)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    action_mask: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], 1)

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.completion_mask * self.action_mask


@dataclass(frozen=True)
class ThoughtCutter:
    """Where a sampled thought ends: at the first stop token (single-token markers), or at the first spelling of the
    close marker in the decoded text (text markers, `rlp_trl.markers`)."""

    stop_ids: frozenset
    close_ids: tuple[int, ...]
    close_text: str | None = None  # set for text markers
    decode: Callable[[list[int]], str] | None = None

    @classmethod
    def for_markers(cls, stop_ids, close_ids, close_text: str | None = None, tokenizer=None) -> "ThoughtCutter":
        """Cut at the first of `stop_ids` (EOS and a single-token close marker), or, given `close_text` (text markers),
        at the first spelling of it in the text `tokenizer` decodes."""
        decode = functools.partial(tokenizer.decode, clean_up_tokenization_spaces=False) if close_text else None
        return cls(frozenset(stop_ids), tuple(close_ids), close_text, decode)

    def __call__(self, sampled: list[int]) -> tuple[list[int], str]:
        if self.close_text is None:
            return split_thought(sampled, self.stop_ids, self.close_ids[0])
        close = list(self.close_ids)
        thought, cut = split_thought_text(sampled, self.stop_ids, self.close_text, close, self.decode)
        written = sampled[len(thought) : len(thought) + len(close)] == close
        return thought, LENGTH_LIMIT if cut else SAMPLED_CLOSE if written else OTHER_STOP


def cut_thoughts(sampled: list[list[int]], targets: list[list[int]], cutter: ThoughtCutter, horizon: int, *,
                 close_in_loss: bool, mask_truncated: bool) -> Thoughts:
    """Cut each rollout into its thought and build the completion thought + close + x_t.. and its action mask."""
    ids, ends = map(list, zip(*(cutter(list(s)) for s in sampled)))
    close = list(cutter.close_ids)
    return Thoughts(
        ids=ids,
        ends=ends,
        completions=[t + close + y for t, y in zip(ids, targets)],
        action_masks=[
            action_mask(len(t), end, len(close), horizon, close_in_loss=close_in_loss,
                        mask_thought=mask_truncated and end == LENGTH_LIMIT)
            for t, end in zip(ids, ends)
        ],
    )


def tensorize(prompt_ids: list[list[int]], thoughts: Thoughts, pad_id: int, device) -> PaddedBatch:
    prompts, prompt_mask = pad_rows(prompt_ids, pad_id, device, "left")
    completions, completion_mask = pad_rows(thoughts.completions, pad_id, device, "right")
    action, _ = pad_rows(thoughts.action_masks, 0, device, "right")
    return PaddedBatch(prompts, prompt_mask, completions, completion_mask, action)


def vllm_is_ratio(old_per_token_logps, sampling_logps, action_masks, loss_mask, mode: str, clip_min, clip_max):
    """Importance weights pi_theta_old / pi_vLLM on the action's tokens, in TRL's modes (`token_truncate`,
    `token_mask`, `sequence_truncate`, `sequence_mask`). The sampled tokens (thought, then its stop token) line up
    with the completion's first tokens; tokens without a sampler log-prob get weight 1."""
    rows = [[float("nan") if v is None else v for v in lp[: sum(m)]] for lp, m in zip(sampling_logps, action_masks)]
    width = old_per_token_logps.size(1)
    sampling = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], device=old_per_token_logps.device)
    diff = torch.nan_to_num((old_per_token_logps - sampling) * loss_mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    low = clip_min if clip_min is not None else 0.0
    high = clip_max if clip_max is not None else float("inf")
    if mode.endswith("truncate"):
        return ratio.clamp(min=low, max=high)
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def pack_for_trl(batch: PaddedBatch, advantages: torch.Tensor, num_items_in_batch: torch.Tensor,
                 old_per_token_logps=None, ref_per_token_logps=None, importance_sampling_ratio=None) -> dict:
    """The inputs of `GRPOTrainer._compute_loss`: the action enters the loss through TRL's per-token `tool_mask`."""
    out = {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "completion_ids": batch.completion_ids,
        "completion_mask": batch.completion_mask,
        "tool_mask": batch.action_mask,
        "advantages": advantages,
        "num_items_in_batch": num_items_in_batch,
    }
    optional = {"old_per_token_logps": old_per_token_logps, "ref_per_token_logps": ref_per_token_logps,
                "importance_sampling_ratio": importance_sampling_ratio}
    out.update({k: v for k, v in optional.items() if v is not None})
    return out
