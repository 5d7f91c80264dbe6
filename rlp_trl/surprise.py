"""The `surprising` position strategy: train where the no-think teacher is most surprised by the true next token.

`position_strategy="surprising"` picks, in each document, the positions t whose log p(x_t | x_<t) under the teacher
is lowest (as the public RLP prototypes do; RPT similarly filters by a proxy model's entropy). The log-probs come
from one teacher forward pass over each document at dataset-building time, when the EMA teacher still equals the
initial model, so this is the initial model's surprise; positions are not re-chosen as the teacher moves.
Documents longer than `max_context_tokens` are scored in half-overlapping windows of that many tokens, so the pass costs
about one forward over the corpus (two for long documents).
"""

import torch
from trl.trainer.utils import selective_log_softmax

from .fast.scoring import pad_rows

# At most this many logits per forward (~1 GiB in fp32): a batch of 2048-token windows of a 152k-vocabulary model
# would otherwise build tens of GB of logits at dataset-building time.
LOGITS_BUDGET = 2**28


def lowest_logprob_positions(token_logps: list[float], first: int, last: int, k: int) -> list[int]:
    """The k positions t in [first, last] with the lowest `token_logps[t]` (ties: earlier first), sorted."""
    candidates = sorted(range(first, last + 1), key=lambda t: (token_logps[t], t))
    return sorted(candidates[:k])


@torch.no_grad()
def document_token_logps(
    model, documents: list[list[int]], window: int, batch_size: int = 8, pad_id: int = 0,
    logits_budget: int = LOGITS_BUDGET,
) -> list[list[float]]:
    """log p(x_i | x_<i) for every token i >= 1 of each document (index 0 gets 0.0), at temperature 1.

    A document longer than `window` is scored in windows of `window` tokens overlapping by half: each token is read
    from the window where it has at least `window // 2` tokens of context (or all of them, near the start).
    Rows per forward are capped so that a batch's logits stay within `logits_budget` elements; log-probs are taken
    row by row (`selective_log_softmax`), never as a full-vocabulary log-softmax copy.
    """
    window = max(window, 2)
    stride = max(window // 2, 1)
    device = next(model.parameters()).device
    pieces = []  # (document, window start s, first token scored in this window, window ids)
    for d, ids in enumerate(documents):
        s = 0
        while True:
            first, end = (1 if s == 0 else s + window - stride), min(s + window, len(ids))
            if first < end:
                pieces.append((d, s, first, ids[s:end]))
            if end >= len(ids):
                break
            s += stride
    out = [[0.0] * len(ids) for ids in documents]
    vocab = model.config.get_text_config().vocab_size  # not the weight's shape: ZeRO-3 partitions it to size 0
    batch_size = max(1, min(batch_size, logits_budget // (window * vocab)))
    for b in range(0, len(pieces), batch_size):
        chunk = pieces[b : b + batch_size]
        ids, mask = pad_rows([p[3] for p in chunk], pad_id, device, side="right")
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        logps = selective_log_softmax(logits, ids[:, 1:]).float().cpu()
        for row, (d, s, first, piece) in enumerate(chunk):
            for t in range(first, s + len(piece)):
                out[d][t] = logps[row, t - s - 1].item()
    return out


def make_position_scorer(model, window: int, pad_id: int, batch_size: int = 8):
    """A `position_scorer` for `build_position_dataset`: token-id documents -> per-token log-probs under `model`.

    Runs on the accelerator of this process when there is one (the model is moved there and back).
    """

    def scorer(documents: list[list[int]]) -> list[list[float]]:
        from accelerate import PartialState

        original = next(model.parameters()).device
        target = PartialState().device
        was_training = model.training
        model.eval()
        if original != target:
            model.to(target)
        try:
            return document_token_logps(model, documents, window, batch_size, pad_id)
        finally:
            if original != target:
                model.to(original)
            model.train(was_training)

    return scorer
