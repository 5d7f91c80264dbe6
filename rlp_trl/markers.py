"""Think markers as plain multi-token text (`RLPConfig.think_markers_as_text`).

By default a marker that is not a single token of the vocabulary is added as a special token and the embeddings are
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
