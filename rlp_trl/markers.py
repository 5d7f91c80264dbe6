"""Think markers: added as special tokens (`prepare_think_markers`) or used as plain multi-token text.

Special tokens (the default for markers a vocabulary lacks). A new row of the embedding matrix has to start somewhere.
`mean` (transformers' `mean_resizing`) draws it around the mean of all rows: the model has never seen anything like it,
so after `<think>` it writes noise and it never samples `</think>` (0% of SmolLM2's thoughts close; docs/markers.md).
`text` starts each new row (input and output embedding) at the mean of the rows of a chosen text's tokens, e.g. "<"
and ">": the open marker then reads as an opening bracket and the close marker is a token the model already knows how
to emit, so thoughts can close from the first step and the policy gradient on the sampled close marker
(`rlp_trl.loss.action_mask`) has something to shape.

Text markers (`RLPConfig.think_markers_as_text`). By default a marker that is not a single token of the vocabulary is added as a special token and the embeddings are
resized (`trainer.prepare_think_markers`): generation then stops on the close token exactly. In text mode the
vocabulary is left alone: each marker is its standalone token sequence (`tokenizer.encode(marker)`), appended in
token space after the context (so what the model is shown and what is scored are the same ids, whatever the tokenizer
would do to `context_text + marker`). Generation cannot stop on a multi-token marker, so it runs to EOS or the length
limit, and the thought is cut afterwards at the first occurrence of the close marker *in the decoded text*: the model
may spell `</think>` with other tokens than the standalone encoding (e.g. a leading-space variant, or byte tokens),
and all of them count. Tokens from the one where the marker starts are dropped; the canonical close ids and the true
next token(s) are then appended for scoring, as in the single-token mode.
"""

from collections.abc import Callable, Collection

import torch

from .usage import UsageError

# How a sampled thought ended (`split_thought`, `rlp_trl.rollouts.ThoughtCutter`); `rlp_trl.loss.action_mask` reads it.
SAMPLED_CLOSE = "close"  # the policy sampled the close marker: it is part of the action
OTHER_STOP = "stop"  # the policy sampled EOS (or, with text markers, spelled the close marker with other tokens)
LENGTH_LIMIT = "limit"  # no stop within max_completion_length: the trainer closes the thought

THINK_TOKEN_INITS = ("text", "mean")


def markers_missing(tokenizer, *markers: str) -> bool:
    """True when one of `markers` is not a single token of `tokenizer`."""
    return any(len(tokenizer.encode(m, add_special_tokens=False)) != 1 for m in markers)


def prepare_think_markers(tokenizer, model, open_marker: str, close_marker: str, add_tokens: bool,
                          init: str = "text", init_texts: tuple[str, str] = ("<", ">")):
    """Return (open_ids, close_id, model), adding markers that are not single tokens as special tokens if allowed.

    New rows of the input and output embeddings start from `init`: `"text"`, the mean of the rows of the tokens of
    `init_texts` (one text per marker; an empty text falls back to the marker itself), or `"mean"`, transformers'
    `mean_resizing` (random around the mean of all rows). Returns the token ids to append after a context (open) and
    the stop id (close).
    """
    missing = [m for m in (open_marker, close_marker) if markers_missing(tokenizer, m)]
    if missing:
        if not add_tokens:
            raise UsageError(
                f"Think markers {missing} are not single tokens of this tokenizer. Pass --add_think_tokens true to add "
                f"them as special tokens, or choose markers from the vocabulary (--think_open/--think_close)."
            )
        if init not in THINK_TOKEN_INITS:
            raise ValueError(f"think_token_init must be one of {THINK_TOKEN_INITS}, got {init!r}")
        sources = {
            marker: tokenizer.encode(text or marker, add_special_tokens=False)
            for marker, text in zip((open_marker, close_marker), init_texts) if marker in missing
        }
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=init == "mean")
        if init == "text":
            _init_rows_from_text(model, {tokenizer.convert_tokens_to_ids(m): ids for m, ids in sources.items()})
    open_ids = tokenizer.encode(open_marker, add_special_tokens=False)
    close_ids = tokenizer.encode(close_marker, add_special_tokens=False)
    return open_ids, close_ids[0], model


def think_markers(tokenizer, model, args, as_text: bool):
    """(open_ids, close_ids, close_id, model) for a run: text markers keep the vocabulary (close_id None, thoughts are
    cut post hoc); otherwise markers the vocabulary lacks are added as tokens (`prepare_think_markers`)."""
    if as_text:
        open_ids, close_ids = text_marker_ids(tokenizer, args.think_open, args.think_close)
        return open_ids, close_ids, None, model
    open_ids, close_id, model = prepare_think_markers(
        tokenizer, model, args.think_open, args.think_close, args.add_think_tokens,
        init=args.think_token_init, init_texts=(args.think_open_init, args.think_close_init),
    )
    return open_ids, [close_id], close_id, model


@torch.no_grad()
def _init_rows_from_text(model, rows: dict[int, list[int]]) -> None:
    """Set embedding row `new` (input, and output when untied) to the mean of the rows `ids`, for each item."""
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    for weight in weights:
        for new, ids in rows.items():
            weight[new] = weight[ids].float().mean(0).to(weight.dtype)
    bias = getattr(output, "bias", None)
    if bias is not None:
        for new, ids in rows.items():
            bias[new] = bias[ids].float().mean().to(bias.dtype)


def text_marker_ids(tokenizer, open_marker: str, close_marker: str) -> tuple[list[int], list[int]]:
    """Standalone token ids of both markers; error if one encodes to nothing."""
    ids = []
    for marker in (open_marker, close_marker):
        encoded = tokenizer.encode(marker, add_special_tokens=False)
        if not encoded:
            raise ValueError(f"The think marker {marker!r} encodes to no tokens with this tokenizer")
        ids.append(list(encoded))
    return ids[0], ids[1]


def find_text_marker(tokens: list[int], marker: str, marker_ids: list[int], decode: Callable[[list[int]], str]) -> int | None:
    """Number of tokens before the first occurrence of `marker` in `tokens`, or None when it does not occur.

    The canonical sequence `marker_ids` is found by a token scan; any other spelling by searching the decoded text
    (a binary search for the first prefix whose text contains the marker, then back to the token where it starts).
    """
    n = len(marker_ids)
    exact = next((i for i in range(len(tokens) - n + 1) if tokens[i : i + n] == marker_ids), None)
    end = len(tokens) if exact is None else exact + n
    if marker not in decode(tokens[:end]):
        return exact
    lo, hi = 1, end  # smallest k such that the first k tokens spell the whole marker
    while lo < hi:
        mid = (lo + hi) // 2
        if marker in decode(tokens[:mid]):
            hi = mid
        else:
            lo = mid + 1
    start_char = decode(tokens[:lo]).index(marker)
    j = lo - 1  # back to the last token that ends before the marker starts
    while j > 0 and len(decode(tokens[:j])) > start_char:
        j -= 1
    return j if exact is None else min(j, exact)


def split_thought(sampled: list[int], stop_ids: Collection[int], close_id: int | None = None) -> tuple[list[int], str]:
    """(thought, end) for single-token markers: the tokens before the first stop id (the close marker or EOS), and
    `SAMPLED_CLOSE` (the stop was `close_id`), `OTHER_STOP` (EOS) or `LENGTH_LIMIT` (no stop: the length limit)."""
    for i, tok in enumerate(sampled):
        if tok in stop_ids:
            return sampled[:i], SAMPLED_CLOSE if tok == close_id else OTHER_STOP
    return sampled, LENGTH_LIMIT


def split_thought_text(
    sampled: list[int], stop_ids: Collection[int], marker: str, marker_ids: list[int], decode: Callable[[list[int]], str]
) -> tuple[list[int], bool]:
    """(thought, truncated): the sampled tokens before the first EOS/stop token or text close marker, whichever comes
    first; `truncated` when neither occurs (the thought hit the length limit)."""
    stop = next((i for i, tok in enumerate(sampled) if tok in stop_ids), None)
    head = sampled if stop is None else sampled[:stop]
    cut = find_text_marker(head, marker, marker_ids, decode)
    if cut is not None:
        return head[:cut], False
    return head, stop is None
