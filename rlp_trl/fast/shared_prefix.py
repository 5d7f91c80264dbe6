"""Per-token log-probs of completions with one forward of each distinct prompt (the loss pass, eq. 8, theta_old, the
reference model, and S_pred where the sampler could not score it).

TRL's `_get_per_token_logps_and_entropies` runs every row's prompt + completion through the model. The G rows of a
context share their prompt, so here each distinct prompt runs once, in one of two layouts:

* `shared_prefix_logps`: the prompt (minus its last token) runs with a KV cache, the cache is indexed out to the rows,
  and the rows run their last prompt token + completion on top of it (fastest where it can run: a plain model);
* `packed_logps`: the prompt and k of its rows' segments in one sequence under a 4D mask, one ordinary forward (under
  gradient checkpointing, DeepSpeed and FSDP, which cannot re-extend a cache).

Autograd sums the rows' gradients into the one prompt, so log-probs, entropies and gradients are those of the full
pass (same positions, masks and fused LM head) up to float rounding. Every layout (and `padded_logps`, the plain pass
used when nothing is shared) runs each row at the positions its tokens were sampled at (`mask_positions`): left
padding does not shift an absolute-position model (GPT-2, OPT). With a `LikelihoodRequest`, each also returns the
temperature-1 log-probs of the likelihood terms from its own hidden states (`rlp_trl.likelihood`).
"""

import contextlib

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..likelihood import LikelihoodLogps, LikelihoodRequest, causal_lm, last_hidden_states, pass_logps
from .scoring import mask_positions, pad_rows, score_last_tokens


def _hidden_states(unwrapped, request):
    """The backbone's hidden states of the forwards in the block when `request` asks for likelihood terms."""
    return last_hidden_states(causal_lm(unwrapped)) if request is not None else contextlib.nullcontext([])


def padded_logps(model, unwrapped, input_ids, attention_mask, logits_to_keep, compute_entropy, autocast,
                 request: LikelihoodRequest | None = None):
    """Log-probs (and entropies) of the last `logits_to_keep` tokens of each row with one full forward: TRL's
    text-only `_get_per_token_logps_and_entropies` chunk, plus position ids from the attention mask; with a
    `request`, also the temperature-1 log-probs of the likelihood terms (`rlp_trl.likelihood`) from the same pass."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-logits_to_keep] = -100
    with autocast(), _hidden_states(unwrapped, request) as hidden:
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=mask_positions(attention_mask),
            labels=labels, fused_lm_head=True,
        )
    entropy = out.entropy[:, -logits_to_keep:] if compute_entropy else None
    extra = None
    if request is not None:  # column P - 1 + j predicts completion token j; the prompt ends with context + open marker
        prompt_len = input_ids.size(1) - logits_to_keep
        extra = pass_logps(causal_lm(unwrapped), request, input_ids[:, prompt_len:], attention_mask[:, prompt_len:],
                           hidden[0][:, prompt_len - 1 :], hidden[0][:, prompt_len - 1 - request.open_len])
    return out.log_probs[:, -logits_to_keep:], entropy, extra


def shared_prefix_logps(model, unwrapped, input_ids, attention_mask, logits_to_keep, compute_entropy, autocast,
                        request: LikelihoodRequest | None = None):
    """Log-probs (and entropies; the likelihood terms' log-probs for a `request`) of the last `logits_to_keep` tokens
    of each row, or None when nothing is shared.

    Args:
        model: the (possibly DDP-wrapped) policy with TRL's fused LM head; runs the completion part.
        unwrapped: the same model unwrapped; runs the prompt part (outside the wrapper: one wrapped forward per step).
        input_ids, attention_mask: `[N, P + C]` left-padded prompts followed by right-padded completions.
        logits_to_keep: C.
        autocast: the accelerator's autocast context manager.
    """
    prompt_len = input_ids.size(1) - logits_to_keep
    if prompt_len < 2:
        return None
    head = torch.cat([input_ids[:, : prompt_len - 1], attention_mask[:, : prompt_len - 1]], 1)
    unique, rows = torch.unique(head, dim=0, return_inverse=True)
    if unique.size(0) == input_ids.size(0):  # no prompt appears twice
        return None
    unique_mask = unique[:, prompt_len - 1 :]
    with autocast(), _hidden_states(unwrapped, request) as prefix_hidden:
        prefix = unwrapped(
            input_ids=unique[:, : prompt_len - 1], attention_mask=unique_mask, position_ids=mask_positions(unique_mask),
            use_cache=True, logits_to_keep=1,
        )
    cache = prefix.past_key_values
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None  # sliding-window or recurrent layers: keep the plain pass
    cache.batch_select_indices(rows)
    tail = input_ids[:, prompt_len - 1 :]  # the last prompt token predicts the first completion token
    labels = tail.masked_fill(attention_mask[:, prompt_len - 1 :] == 0, -100)
    labels[:, 0] = -100
    with autocast(), _hidden_states(unwrapped, request) as tail_hidden:
        out = model(
            input_ids=tail, attention_mask=attention_mask, position_ids=mask_positions(attention_mask)[:, prompt_len - 1 :],
            past_key_values=cache, labels=labels, fused_lm_head=True,
        )
    entropy = out.entropy[:, -logits_to_keep:] if compute_entropy else None
    extra = None
    if request is not None:  # tail column j predicts completion token j; the prefix ends with the context
        extra = pass_logps(causal_lm(unwrapped), request, input_ids[:, prompt_len:], attention_mask[:, prompt_len:],
                           tail_hidden[0], prefix_hidden[0][rows, prompt_len - 1 - request.open_len])
    return out.log_probs[:, -logits_to_keep:], entropy, extra


def packable(unwrapped) -> bool:
    """Whether the packed pass applies: attention that takes an explicit 4D mask (`sdpa`, `eager`) in every layer, no
    sliding-window or non-attention layers (their own masks or states would ignore or break the packed layout)."""
    config = causal_lm(unwrapped).config.get_text_config()
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    windowed = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    return config._attn_implementation in ("sdpa", "eager") and layer_types == {"full_attention"} and not windowed


def segments_per_sequence(config, prompt_len: int, width: int, group: int) -> int:
    """How many rows of one prompt to pack into one sequence: the k in 1..`group` with the fewest estimated forward
    FLOPs per row, (a L + b L^2) / k for L = P - 1 + k (C + 1), with a = 2 x the layers' matmul weights per token and
    b = 4 x layers x attention width per query-key pair (a dense mask computes every pair). k = 1 is the per-row pass's
    cost: packing then does not pay (long completions next to a short prompt, docs/performance.md)."""
    config = config.get_text_config()
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    attention = heads * (getattr(config, "head_dim", None) or hidden // heads)
    a, b = 2 * layers * (4 * hidden * attention + 3 * hidden * inner), 4 * layers * attention

    def per_row(k):
        length = prompt_len - 1 + k * width
        return (a * length + b * length**2) / k

    return min(range(1, group + 1), key=per_row)


def packed_logps(model, unwrapped, input_ids, attention_mask, logits_to_keep, compute_entropy, autocast,
                 request: LikelihoodRequest | None = None):
    """Log-probs (and entropies; the likelihood terms' log-probs for a `request`) of the last `logits_to_keep` tokens
    of each row with one ordinary forward per distinct prompt, or None when no prompt repeats.

    Each distinct prompt's first P-1 tokens are followed in one sequence by its rows' segments (last prompt token +
    completion, width C + 1); a 4D mask lets a segment see the prompt and its own past only, and each token keeps the
    position it was sampled at. No KV cache is re-used, so gradient checkpointing, DeepSpeed ZeRO and FSDP run it as
    any forward (ZeRO-3 gathers the weights once). Log-probs, entropies and gradients equal the per-row pass up to
    float rounding; the prompt is computed once per sequence instead of once per row. The dense mask makes attention
    cost the square of the sequence, so a prompt's rows go k to a sequence (`segments_per_sequence`), and not at all
    (None) where packing would cost more than the per-row pass.
    """
    prompt_len, width = input_ids.size(1) - logits_to_keep, logits_to_keep + 1
    if prompt_len < 2:
        return None
    head = torch.cat([input_ids[:, : prompt_len - 1], attention_mask[:, : prompt_len - 1]], 1)
    unique, rows = torch.unique(head, dim=0, return_inverse=True)
    if unique.size(0) == input_ids.size(0):
        return None
    device, n = input_ids.device, input_ids.size(0)
    # slot s of row r: r is the s-th row (in order) with its prompt; rows of a prompt are packed k to a sequence
    same = rows[:, None] == rows[None, :]
    slot = (same & (torch.arange(n, device=device)[None, :] < torch.arange(n, device=device)[:, None])).sum(1)
    k = segments_per_sequence(causal_lm(unwrapped).config, prompt_len, width, int(slot.max()) + 1)
    if k == 1:
        return None
    packs, rows = torch.unique(torch.stack([rows, slot // k], 1), dim=0, return_inverse=True)
    unique, slot = unique[packs[:, 0]], slot % k  # one packed sequence per (prompt, chunk of k rows)
    length = prompt_len - 1 + (int(slot.max()) + 1) * width
    cols = (prompt_len - 1 + slot * width)[:, None] + torch.arange(width, device=device)
    prefix_mask = unique[:, prompt_len - 1 :]
    ids = input_ids.new_zeros(unique.size(0), length)
    ids[:, : prompt_len - 1] = unique[:, : prompt_len - 1]
    ids[rows[:, None], cols] = input_ids[:, prompt_len - 1 :]
    positions = torch.zeros_like(ids)
    positions[:, : prompt_len - 1] = mask_positions(prefix_mask)
    positions[rows[:, None], cols] = mask_positions(attention_mask)[:, prompt_len - 1 :]
    # segment of each column (-1: the shared prompt, -2: unused), and which keys are real tokens
    segment = torch.full_like(ids, -2)
    segment[:, : prompt_len - 1] = -1
    segment[rows[:, None], cols] = slot[:, None].expand(-1, width)
    real = torch.zeros_like(ids, dtype=torch.bool)
    real[:, : prompt_len - 1] = prefix_mask.bool()
    real[rows[:, None], cols] = attention_mask[:, prompt_len - 1 :].bool()
    index = torch.arange(length, device=device)
    causal = index[None, :, None] >= index[None, None, :]
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    visible = real[:, None, :] & causal & ((seg_k == -1) & (seg_q != -2) | (seg_q == seg_k) & (seg_q >= 0))
    visible = (visible | torch.eye(length, dtype=torch.bool, device=device))[:, None]  # no query without a key
    if causal_lm(unwrapped).config._attn_implementation == "eager":  # eager adds the mask to the scores
        visible = torch.zeros(visible.shape, device=device).masked_fill(~visible, torch.finfo(torch.float32).min)
    labels = torch.full_like(ids, -100)  # column j + 1 of a segment holds completion token j: column j predicts it
    completion_labels = input_ids[:, prompt_len:].masked_fill(attention_mask[:, prompt_len:] == 0, -100)
    labels[rows[:, None], cols[:, :-1]] = completion_labels
    with autocast(), _hidden_states(unwrapped, request) as hidden:
        out = model(input_ids=ids, attention_mask=visible, position_ids=positions, shift_labels=labels,
                    fused_lm_head=True)
    logps = out.log_probs[rows[:, None], cols[:, :-1]]
    entropy = out.entropy[rows[:, None], cols[:, :-1]] if compute_entropy else None
    extra = None
    if request is not None:  # a row's segment column j predicts its completion token j; `rows`: its sequence
        extra = pass_logps(causal_lm(unwrapped), request, input_ids[:, prompt_len:], attention_mask[:, prompt_len:],
                           hidden[0][rows[:, None], cols], hidden[0][rows, prompt_len - 1 - request.open_len])
    return logps, entropy, extra


def policy_logps(model, unwrapped, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, autocast,
                 share: str | None, request: LikelihoodRequest | None = None):
    """Per-token log-probs (and entropies, or None) of the completions in chunks of `batch_size` rows: each chunk
    with one forward per distinct prompt when a prompt repeats and `share` names how (`"cache"`: the prompt's KV
    cache extended by the rows, `shared_prefix_logps`; `"packed"`: prompt and rows in one masked sequence,
    `packed_logps`), else one plain forward. Third value: the likelihood terms' log-probs (`LikelihoodLogps`) for a
    `request`, else None."""
    logps, entropies, extras = [], [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        out = None
        if share == "cache":
            out = shared_prefix_logps(model, unwrapped, ids, mask, logits_to_keep, compute_entropy, autocast, request)
        elif share == "packed":
            out = packed_logps(model, unwrapped, ids, mask, logits_to_keep, compute_entropy, autocast, request)
        if out is None:  # nothing shared in this chunk, or sharing does not apply
            out = padded_logps(model, unwrapped, ids, mask, logits_to_keep, compute_entropy, autocast, request)
        logps.append(out[0])
        entropies.append(out[1])
        extras.append(out[2])
    extra = None
    if request is not None:
        nothink = [e.nothink for e in extras]
        extra = LikelihoodLogps(torch.cat([e.reader for e in extras]), torch.cat(nothink) if request.nothink else None)
    return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, extra


@torch.no_grad()
def completion_scores(model, input_ids, attention_mask, logits_to_keep, horizon: int, batch_size: int, share: bool,
                      pad_id: int):
    """`[N, H]` temperature-1 log-probs of the last `horizon` completion tokens (S_pred, eq. 3, when the sampler could
    not score them in its cache), in chunks of `batch_size` rows: one packed forward per distinct prompt when `share`
    (`packed_logps` with the reader request: the same head products as the reader term), else one forward per row."""
    out = []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        packed = None
        if share:
            request = LikelihoodRequest(horizon, open_len=1, nothink=False)
            packed = packed_logps(model, model, ids, mask, logits_to_keep, False, contextlib.nullcontext, request)
        if packed is not None:
            out.append(packed[2].reader.float())
            continue
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]  # prompt + completion, padded on the left
        padded, padded_mask = pad_rows(rows, pad_id, ids.device)
        out.append(score_last_tokens(model, padded, padded_mask, horizon, padded.size(0)))
    return torch.cat(out)
