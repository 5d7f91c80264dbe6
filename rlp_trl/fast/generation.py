"""Prefix-shared sampling for TRL's non-vLLM generation path, with in-cache scoring of a forced suffix.

GRPO-style batches hold each prompt G times. `transformers.generate` prefills every row, so a context of P tokens
costs G prefills of P tokens. `prefix_shared_sample` prefills each distinct prompt once, copies its KV cache to the
rows that share it, and then decodes exactly like `generate`'s sampling loop (same logits processors, so the same
temperature / top-p / top-k / min-p / repetition-penalty / min-new-tokens semantics; same stop ids; one
`torch.multinomial` over all rows per step, so a fixed seed draws the same tokens as `generate` on the same rows).

RLP also needs S_pred = log p_theta(x_t | x_<t, c_t) (eq. 3) for every thought. Instead of a second forward pass over
prompt + thought + `</think>` + x_t, a row that stops thinking goes on in the same cache with a teacher-forced suffix
(`</think>`, x_t, ..., x_{t+H-1}): its log-probs come from the raw logits (temperature 1, no processors) of H + 1 more
decode positions (the first, log p(`</think>` | thought), is free: it is the distribution the stop was drawn from).
A row whose thought hits `max_new_tokens` is closed the same way. Rows that are done leave the cache.

`RLPTrainer.sample_thoughts` calls the sampler where `uses_prefix_sharing` says it applies; vLLM, continuous batching
and un-gathered ZeRO-3 keep TRL's own path.
"""

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from .scoring import mask_positions, pad_rows
from .shared_prefix import packable


@dataclass
class SharedSample:
    """Output of `prefix_shared_sample`.

    Attributes:
        completion_ids: per row, the sampled tokens up to and including the first stop token (TRL's convention: a row
            without a stop token is truncated at `max_new_tokens`).
        suffix_logps: `[N, S]` log p(suffix[j] | prompt, thought, suffix[:j]) at temperature 1, or None.
        prefill_tokens: prompt positions run through the model (distinct prompts x padded length).
        decode_tokens: positions run one at a time after the prefill, summed over rows.
    """

    completion_ids: list[list[int]]
    suffix_logps: torch.Tensor | None
    prefill_tokens: int
    decode_tokens: int


@torch.no_grad()
def prefix_shared_sample(model, prompts, generation_config, suffixes=None) -> SharedSample:
    """Sample one completion per row of `prompts`, prefilling each distinct prompt once (see the module docstring).

    Args:
        model: an unwrapped causal LM whose cache supports `batch_select_indices` (e.g. `DynamicCache`).
        prompts: `N` token-id lists; identical lists share one prefill.
        generation_config: a `GenerationConfig` with `max_new_tokens` (TRL's `trainer.generation_config`).
        suffixes: optional `N` token-id lists of one common length S, teacher-forced after each row's thought
            (replacing its stop token) and scored at temperature 1.
    """
    device = next(model.parameters()).device
    config, _ = model._prepare_generation_config(generation_config)
    model._prepare_special_tokens(config, True, device=device)
    pad_id = config._pad_token_tensor if config._pad_token_tensor is not None else config._eos_token_tensor[0]
    stop_ids = config._eos_token_tensor
    stop_ids = torch.empty(0, dtype=torch.long, device=device) if stop_ids is None else stop_ids.view(-1)
    max_new = config.max_new_tokens

    # Prefill each distinct prompt once, then give every row a copy of its prompt's KV cache.
    unique = list(dict.fromkeys(map(tuple, prompts)))
    slot = {p: i for i, p in enumerate(unique)}
    rows = torch.tensor([slot[tuple(p)] for p in prompts], device=device)
    ids, mask = pad_rows(unique, int(pad_id), device)
    padded = not bool(mask.all())
    positions = mask_positions(mask)
    out = model(
        input_ids=ids, attention_mask=mask if padded else None, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    cache = out.past_key_values
    cache.batch_select_indices(rows)
    logits = out.logits[rows, -1].float()
    del out
    input_ids, mask, next_pos = ids[rows], mask[rows], positions[rows, -1] + 1

    n, vocab = logits.shape
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=ids.size(1), encoder_input_ids=input_ids, device=device,
        model_kwargs={"attention_mask": mask},
    )
    suffix = torch.tensor(suffixes, dtype=torch.long, device=device) if suffixes is not None else None
    num_suffix = 0 if suffix is None else suffix.size(1)
    suffix_logps = torch.zeros(n, num_suffix, device=device)
    next_suffix = torch.zeros(n, dtype=torch.long, device=device)  # index of the suffix token each row scores next
    thinking = torch.ones(n, dtype=torch.bool, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.arange(n, device=device)  # rows still in the cache, in cache order
    sampled = []
    decode_tokens, step = 0, 0
    while True:
        feed = torch.full((n,), int(pad_id), dtype=torch.long, device=device)
        if bool(thinking.any()) and step < max_new:  # one draw over all rows per step, as `generate` does
            full = logits.new_zeros(n, vocab).index_copy_(0, active, logits)
            scores = processors(input_ids, full)
            tokens = torch.multinomial(scores.softmax(-1), 1).squeeze(1) if config.do_sample else scores.argmax(-1)
            tokens = torch.where(thinking, tokens, pad_id)
            input_ids = torch.cat([input_ids, tokens[:, None]], 1)
            sampled.append(tokens)
            stopped = thinking & torch.isin(tokens, stop_ids)
            feed = torch.where(thinking & ~stopped, tokens, feed)
            if not num_suffix and step + 1 == max_new:  # nothing left to feed: `generate` stops here too
                stopped = thinking.clone()
        else:  # thoughts that reach max_new_tokens are closed here
            stopped = thinking.clone()
        thinking &= ~stopped
        if num_suffix:
            scoring = ~thinking & ~done & (next_suffix < num_suffix)
            local = scoring[active]
            if bool(local.any()):
                idx = active[local]
                logps = torch.log_softmax(logits[local], -1)
                suffix_logps[idx, next_suffix[idx]] = logps.gather(1, suffix[idx, next_suffix[idx], None]).squeeze(1)
                feed[idx] = suffix[idx, next_suffix[idx]]
                next_suffix[idx] += 1
            done |= ~thinking & (next_suffix >= num_suffix)
        else:
            done |= ~thinking
        keep = ~done[active]
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            cache.batch_select_indices(keep.nonzero().squeeze(1))
            active = active[keep]
        mask = torch.cat([mask, mask.new_ones(n, 1)], 1)
        out = model(
            input_ids=feed[active, None], attention_mask=mask[active] if padded else None,
            position_ids=next_pos[active, None], past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        decode_tokens += active.numel()
        next_pos += 1
        step += 1

    completion_ids = []
    tokens = torch.stack(sampled, 1).tolist() if sampled else [[] for _ in range(n)]
    stops = set(stop_ids.tolist())
    for row in tokens:
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        completion_ids.append(row[:end])
    return SharedSample(
        completion_ids=completion_ids,
        suffix_logps=suffix_logps if num_suffix else None,
        prefill_tokens=ids.numel(),
        decode_tokens=decode_tokens,
    )


def uses_prefix_sharing(prefix_sharing: bool, *, vllm: bool, continuous_batching: bool, zero_stage: int | None,
                        ds3_gather_for_generation: bool) -> bool:
    """Whether `RLPTrainer.sample_thoughts` samples with `prefix_shared_sample`: on (`args.prefix_sharing`) and not
    vLLM, continuous batching, or ZeRO-3 without gathered weights (`generate` needs synced_gpus there)."""
    zero3_ungathered = zero_stage == 3 and not ds3_gather_for_generation
    return prefix_sharing and not vllm and not continuous_batching and not zero3_ungathered


def loss_pass_sharing(unwrapped, wrapped: bool) -> str | None:
    """How a log-prob pass runs each distinct prompt once (`rlp_trl.fast.shared_prefix`): `"cache"` (the prompt's KV cache
    extended by its rows) for a plain model; under DeepSpeed, FSDP or gradient checkpointing (`wrapped`: their
    wrappers gather per forward, or recompute it, and cannot re-extend a cache) `"packed"` (prompt and rows in one
    masked sequence), or None where the attention cannot take the packed mask (`shared_prefix.packable`)."""
    if not wrapped:
        return "cache"
    return "packed" if packable(unwrapped) else None


def vllm_stop_kwargs(generation_kwargs: dict | None, close_id: int | None, min_thought_tokens: int) -> dict:
    """vLLM SamplingParams additions: stop on the close marker (single-token markers), at least `min_thought_tokens`
    tokens per thought (Alg. 1, line 7)."""
    stop = {"stop_token_ids": [close_id]} if close_id is not None else {}
    return {**(generation_kwargs or {}), **stop, "min_tokens": min_thought_tokens}


def hf_generation_config(generation_kwargs: dict, eos_token_ids: list[int], min_thought_tokens: int) -> GenerationConfig:
    """TRL's HF-generate settings (updated in place) with RLP's stop ids (EOS and the close marker) and at least
    `min_thought_tokens` tokens per thought; `prefix_shared_sample` reads the same config."""
    generation_kwargs.update(eos_token_id=eos_token_ids, min_new_tokens=min_thought_tokens)
    return GenerationConfig(**generation_kwargs, disable_compile=True)
