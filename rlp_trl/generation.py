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

`PrefixSharedGenerationMixin` plugs the sampler into any `GRPOTrainer` subclass (`RLPTrainer` uses it); vLLM,
continuous batching, multimodal prompts and un-gathered ZeRO-3 keep TRL's own path. The mixin also runs the policy's
log-prob passes (the loss of eq. 8, theta_old) with one forward per distinct prompt (`rlp_trl.shared_prefix`).
"""

from dataclasses import dataclass

import torch
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation

from .scoring import mask_positions, pad_rows
from .shared_prefix import padded_logps, shared_prefix_logps


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


class PrefixSharedGenerationMixin:
    """Mixin for `GRPOTrainer` subclasses: the non-vLLM `_generate_single_turn` uses `prefix_shared_sample`, and the
    policy's `_get_per_token_logps_and_entropies` runs each distinct prompt once (`shared_prefix_logps`).

    Set `self._forced_suffixes` (one token list per prompt row) before `_generate` to have them scored in the cache;
    the result of the last call is in `self._last_sample`. `args.prefix_sharing = False` restores TRL's paths.
    """

    _forced_suffixes = None
    _last_sample = None

    def _uses_prefix_sharing(self) -> bool:
        args = self.args
        zero3_ungathered = (
            self.is_deepspeed_enabled
            and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            and not args.ds3_gather_for_generation
        )  # `generate` needs synced_gpus there; keep TRL's path
        return (
            getattr(args, "prefix_sharing", True) and not self.use_vllm
            and not self.use_transformers_continuous_batching and not zero3_ungathered
        )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        self._last_sample = None
        if not self._uses_prefix_sharing() or images is not None or multimodal_fields:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        suffixes = self._forced_suffixes
        if suffixes is not None and len(suffixes) != len(prompt_ids):  # e.g. a tool-call continuation
            suffixes = None
        with (
            profiling_context(self, "prefix_shared_sample"),
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            self._last_sample = prefix_shared_sample(unwrapped_model, prompt_ids, self.generation_config, suffixes)
        return self._last_sample.completion_ids, None

    def _shares_training_prefix(self, model) -> bool:
        unwrapped = self.accelerator.unwrap_model(model)
        return (
            getattr(self.args, "prefix_sharing", True) and model in (self.model, self.model_wrapped)
            and not self.is_deepspeed_enabled and not self.is_fsdp_enabled  # their wrappers gather per forward
            and not getattr(unwrapped, "is_gradient_checkpointing", False)  # recomputation would re-extend the cache
        )

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **extra,
    ):
        """The policy's log-probs of completion tokens (loss pass, theta_old): one forward per distinct prompt when
        prefix sharing applies, else one plain forward per chunk; both with position ids from the attention mask.
        MoE aux losses and multimodal inputs keep TRL's own pass."""
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        share = self._shares_training_prefix(model)
        unwrapped = self.accelerator.unwrap_model(model)
        batch_size = batch_size or input_ids.size(0)
        autocast = self.accelerator.autocast
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            out = shared_prefix_logps(model, unwrapped, ids, mask, logits_to_keep, compute_entropy, autocast) if share else None
            if out is None:  # nothing shared in this chunk, or sharing does not apply
                out = padded_logps(model, ids, mask, logits_to_keep, compute_entropy, autocast)
            logps.append(out[0])
            entropies.append(out[1])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None
