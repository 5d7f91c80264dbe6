"""Teacher-forced scoring of the true next tokens with as few forward passes as possible (paper eq. 4).

S_ema = log p_ema(x_t .. x_{t+H-1} | x_<t) needs no thought, so it depends on the context only: the G rollouts of a
context share one score, and a context that is a prefix of another sequence in the batch (two positions of one
document, both within `max_context_tokens` of its start) is scored inside that sequence's pass. Only the positions
that predict a scored token go through the LM head (`logits_to_keep` as an index tensor): no `[N, L, V]` logits.
"""

import torch
from trl.trainer.utils import pad


def pad_rows(rows: list[list[int]], pad_id: int, device, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id rows into `(input_ids, attention_mask)` on `device`, padding on `side`."""
    tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
    ids = pad(tensors, padding_value=pad_id, padding_side=side).to(device)
    mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side=side).to(device)
    return ids, mask


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask: 0, 1, ... over each row's real tokens (pads get 0).

    Left-padded rows must be run at the positions they were sampled at. Rotary models (Llama, Qwen) are nearly
    indifferent to a uniform shift, but absolute-position models (GPT-2, OPT) are not, and `transformers` counts
    positions from the first column when no `position_ids` are passed.
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def score_last_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int, batch_size: int) -> torch.Tensor:
    """log p(input_ids[:, -k:] | everything before) for left-padded rows, at temperature 1; returns `[N, k]`.

    Only the last k+1 positions go through the LM head (`logits_to_keep`), so no `[N, L, V]` logits are built.
    """
    out = []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask), logits_to_keep=num_tokens + 1).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        out.append(logps.gather(-1, ids[:, -num_tokens:].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


def plan_prefix_passes(sequences: list[tuple[int, ...]]) -> list[int]:
    """For each distinct sequence, the index of the sequence whose forward pass scores it (itself, or a longer one
    that it is a prefix of)."""
    host = [-1] * len(sequences)
    hosts: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i])):
        s = sequences[i]
        for h in hosts:
            longer = sequences[h]
            if longer[0] == s[0] and longer[len(s) - 1] == s[-1] and longer[: len(s)] == s:
                host[i] = h
                break
        else:
            hosts.append(i)
            host[i] = i
    return host


@torch.no_grad()
def score_sequence_ends(
    model, sequences: list[list[int]], num_tokens: int, batch_size: int, pad_id: int
) -> torch.Tensor:
    """log p(s[-k:] | s[:-k]) for each sequence s at temperature 1, one forward per distinct non-prefix sequence.

    Returns `[N, k]` in the order of `sequences` (duplicates and prefixes are scored once and copied).
    """
    keys = [tuple(s) for s in sequences]
    unique = list(dict.fromkeys(keys))
    host = plan_prefix_passes(unique)
    members: dict[int, list[int]] = {}
    for i, h in enumerate(host):
        members.setdefault(h, []).append(i)
    device = next(model.parameters()).device
    scores = torch.zeros(len(unique), num_tokens, device=device)
    hosts = list(members)
    for start in range(0, len(hosts), batch_size):
        chunk = hosts[start : start + batch_size]
        width = max(len(unique[h]) for h in chunk)
        ids, mask = pad_rows([unique[h] for h in chunk], pad_id, device)
        # position p (padded coordinates) of the logits that predict token j of member m: offset + len(m) - k - 1 + j
        wanted = [
            (row, i, width - len(unique[h]) + len(unique[i]) - num_tokens - 1)
            for row, h in enumerate(chunk) for i in members[h]
        ]
        keep = sorted({first + j for _, _, first in wanted for j in range(num_tokens)})
        column = {p: c for c, p in enumerate(keep)}
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask),
            logits_to_keep=torch.tensor(keep, device=device),
        ).logits
        logps = torch.log_softmax(logits.float(), -1)
        for row, i, first in wanted:
            cols = torch.tensor([column[first + j] for j in range(num_tokens)], device=device)
            targets = ids[row, first + 1 : first + 1 + num_tokens]
            scores[i] = logps[row, cols].gather(-1, targets[:, None]).squeeze(-1)
    index = {k: i for i, k in enumerate(unique)}
    return scores[torch.tensor([index[k] for k in keys], device=device)]
