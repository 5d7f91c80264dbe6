"""From plain documents to RLP prompts: tokenize once, sample positions t in token space.

Each output row is one position of one document:
    prompt      = x_<t left-truncated to `max_context_tokens`, followed by the think-open marker (token ids)
    target_ids  = x_t .. x_{t+H-1}, the exact corpus tokens scored after the thought
    context_ids = the same context without the marker (what the no-think teacher sees)
Because positions are chosen on token ids, the scored target is exactly the corpus token: nothing is decoded and
re-encoded. Documents that are not strings, empty or whitespace-only, or too short for one position are skipped
and counted (`PositionStats`).
"""

import random
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset, IterableDataset

SKIP_REASONS = ("not_a_string", "empty", "too_short")


@dataclass
class PositionStats:
    """What `build_position_dataset` kept and skipped (unknown counts stay None for streaming datasets)."""

    documents: int | None = None
    positions: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.documents} documents -> {self.positions} positions (skipped: {skipped})"


def sample_positions(num_tokens: int, min_context: int, horizon: int, k: int, strategy: str, rng: random.Random) -> list[int]:
    """Target indices t with at least `min_context` tokens before and `horizon` tokens from t on (t + H <= n).

    `random` draws up to k distinct positions uniformly; `stride` spreads up to k positions evenly. Sorted.
    """
    first, last = max(min_context, 1), num_tokens - horizon  # t >= 1: a position needs some context
    if last < first:
        return []
    count = last - first + 1
    if k >= count:
        return list(range(first, last + 1))
    if strategy == "random":
        return sorted(rng.sample(range(first, last + 1), k))
    if strategy == "stride":
        step = count / k
        return [first + int(step * i + step / 2) for i in range(k)]
    raise ValueError(f"unknown position strategy {strategy!r}")


def _tokenize(batch, tokenizer, text_field, bos_ids):
    ids, reasons = [], []
    texts = batch[text_field]
    valid = [isinstance(t, str) and bool(t.strip()) for t in texts]
    encoded = iter(tokenizer([t for t, ok in zip(texts, valid) if ok], add_special_tokens=False)["input_ids"]) if any(valid) else iter(())
    for text, ok in zip(texts, valid):
        if ok:
            ids.append(bos_ids + next(encoded))
            reasons.append("")
        else:
            ids.append([])
            reasons.append("not_a_string" if not isinstance(text, str) else "empty")
    return {"_doc_ids": ids, "_skip": reasons}


def _positions(batch, indices, *, open_ids, max_context, min_context, horizon, k, strategy, seed):
    out = {"prompt": [], "context_ids": [], "target_ids": [], "doc_index": [], "position": []}
    for ids, index in zip(batch["_doc_ids"], indices):
        rng = random.Random(seed * 1_000_003 + index)
        for t in sample_positions(len(ids), min_context, horizon, k, strategy, rng):
            context = ids[max(0, t - max_context) : t]
            out["prompt"].append(context + open_ids)
            out["context_ids"].append(context)
            out["target_ids"].append(ids[t : t + horizon])
            out["doc_index"].append(index)
            out["position"].append(t)
    return out


def build_position_dataset(
    dataset: Dataset | IterableDataset,
    tokenizer,
    *,
    open_ids: list[int],
    text_field: str = "text",
    max_context_tokens: int = 2048,
    min_context_tokens: int = 16,
    reward_horizon: int = 1,
    positions_per_document: int = 1,
    position_strategy: str = "random",
    seed: int = 0,
) -> tuple[Dataset | IterableDataset, PositionStats]:
    """Turn a dataset of documents into one row per sampled position (see the module docstring)."""
    columns = dataset.column_names
    if columns is not None and text_field not in columns:
        raise ValueError(
            f"The dataset has no text column {text_field!r}; its columns are {columns}. "
            f"Pass --dataset_text_field with one of them."
        )
    probe = tokenizer("a")["input_ids"]
    bos_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []
    tokenized = dataset.map(
        _tokenize, batched=True, fn_kwargs=dict(tokenizer=tokenizer, text_field=text_field, bos_ids=bos_ids)
    )
    min_tokens = max(min_context_tokens, 1) + reward_horizon
    positions_kwargs = dict(
        open_ids=list(open_ids), max_context=max_context_tokens, min_context=min_context_tokens, horizon=reward_horizon,
        k=positions_per_document, strategy=position_strategy, seed=seed,
    )
    stats = PositionStats()
    if isinstance(tokenized, Dataset):
        lengths = [len(x) for x in tokenized["_doc_ids"]]
        reasons = ["too_short" if r == "" and n < min_tokens else r for r, n in zip(tokenized["_skip"], lengths)]
        stats.documents = len(reasons)
        stats.skipped = {k: v for k, v in Counter(reasons).items() if k}
    positions = tokenized.map(
        _positions, batched=True, with_indices=True, fn_kwargs=positions_kwargs, remove_columns=tokenized.column_names
    )
    if isinstance(positions, Dataset):
        stats.positions = len(positions)
        if stats.positions == 0:
            raise ValueError(
                f"No usable positions: {stats.summary()}. Each document needs at least min_context_tokens "
                f"({min_context_tokens}) + reward_horizon ({reward_horizon}) tokens; lower --min_context_tokens or "
                f"check --dataset_text_field ({text_field!r})."
            )
    return positions, stats
