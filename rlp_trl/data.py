"""From plain documents to RLP prompts: tokenize once, sample positions t in token space.

Each output row is one position of one document:
    prompt      = x_<t left-truncated to `max_context_tokens`, followed by the think-open marker (token ids)
    target_ids  = x_t .. x_{t+H-1}, the exact corpus tokens scored after the thought
    context_ids = the same context without the marker (what the no-think teacher sees)
Because positions are chosen on token ids, the scored target is exactly the corpus token: nothing is decoded and
re-encoded. Documents that are not strings, empty or whitespace-only, rejected by the tokenizer (e.g. lone UTF-16
surrogates), or too short for one position are skipped and counted (`PositionStats`). A document longer than
`max_document_chars` is replaced by a window of that many characters at a seeded random offset before tokenization
(counted as `windowed`), which caps the tokenization cost and memory of pathological rows.
"""

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset, Features, IterableDataset, Value

# the JSON-lines reader lives in its own module; its names stay importable from here
from .jsonl import (  # noqa: F401 - is_json_lines, read_json_lines: re-exported
    EXAMPLE_ROWS,
    LINE_COLUMN,
    READ_ERROR_COLUMN,
    READ_REASONS,
    is_json_lines,
    read_json_lines,
)
from .usage import UsageError

# reasons a row is skipped: by the JSON-lines reader (`read_json_lines`), then by `build_position_dataset`
SKIP_REASONS = (*READ_REASONS, "not_a_string", "empty", "tokenizer_error", "too_short")
_WORK_COLUMNS = ["_doc_ids", "_skip", "_len", "_windowed", "_where"]


@dataclass
class PositionStats:
    """What `build_position_dataset` kept and skipped (unknown counts stay None for streaming datasets)."""

    documents: int | None = None
    positions: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    windowed: int | None = None  # documents longer than max_document_chars, cut to a window (kept, not skipped)
    examples: dict[str, list[int]] = field(default_factory=dict)  # first row numbers per reason (file lines if known)

    def summary(self) -> str:
        def where(reason):
            rows = self.examples.get(reason)
            return f" (rows {', '.join(map(str, rows))}{', ...' if self.skipped[reason] > len(rows) else ''})" if rows else ""

        skipped = ", ".join(f"{k}={v}{where(k)}" for k, v in sorted(self.skipped.items())) or "none"
        windowed = f"; {self.windowed} over max_document_chars windowed" if self.windowed else ""
        return f"{self.documents} documents -> {self.positions} positions (skipped: {skipped}){windowed}"


def sample_positions(
    num_tokens: int, min_context: int, horizon: int, k: int, strategy: str, rng: random.Random,
    token_logps: list[float] | None = None,
) -> list[int]:
    """Target indices t with at least `min_context` tokens before and `horizon` tokens from t on (t + H <= n).

    `random` draws up to k distinct positions uniformly; `stride` spreads up to k positions evenly; `surprising` takes
    the k positions with the lowest teacher log-prob `token_logps[t]` (`rlp_trl.surprise`). Sorted.
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
    if strategy == "surprising":
        from .surprise import lowest_logprob_positions

        return lowest_logprob_positions(token_logps, first, last, k)
    raise ValueError(f"unknown position strategy {strategy!r}")


def missing_text_column(text_field: str, columns) -> UsageError:
    return UsageError(
        f"The dataset has no text column {text_field!r}; its columns are {list(columns)}. "
        f"Pass --dataset_text_field with one of them."
    )


def _text_only(source, text_field):
    for example in source:
        if text_field not in example:
            raise missing_text_column(text_field, sorted(example))
        yield {text_field: example[text_field]}


def _window(text: str, max_chars: int, rng: random.Random) -> str:
    """A `max_chars` slice of `text` at a random offset, moved to the next whitespace (if near) to start on a word."""
    start = rng.randrange(len(text) - max_chars + 1)
    if start:
        space = next((i for i in range(start, min(start + 64, len(text))) if text[i].isspace()), None)
        if space is not None:
            start = space + 1
    return text[start : start + max_chars]


def _encode_each(tokenizer, texts):
    """Tokenize one by one after a batch failed: ids, or None for a text the tokenizer rejects."""
    out = []
    for text in texts:
        try:
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001 - any tokenizer failure makes this one document unusable, not the run
            out.append(None)
    return out


# datasets caches `map` results under a fingerprint of the function and its arguments, and a module-level function
# may hash the same after this file changes: the code's own hash goes into the arguments, so an upgrade of rlp_trl
# never reuses a map computed by older code (seen: a cached `_tokenize` result without a newer work column).
_CODE_VERSION = hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:16]


def _tokenize(batch, indices, tokenizer, text_field, bos_ids, max_chars, seed, code_version=None):
    if text_field not in batch:
        raise missing_text_column(text_field, sorted(batch))
    read_errors = batch.get(READ_ERROR_COLUMN) or [None] * len(indices)
    where = batch.get(LINE_COLUMN) or list(indices)
    texts, windowed = [], []
    for text, index in zip(batch[text_field], indices):
        cut = isinstance(text, str) and max_chars > 0 and len(text) > max_chars
        texts.append(_window(text, max_chars, random.Random(f"{seed}:{index}:window")) if cut else text)
        windowed.append(cut)
    valid = [isinstance(t, str) and bool(t.strip()) for t in texts]
    kept = [t for t, ok in zip(texts, valid) if ok]
    try:
        encoded = tokenizer(kept, add_special_tokens=False)["input_ids"] if kept else []
    except Exception:  # noqa: BLE001 - find the offending documents
        encoded = _encode_each(tokenizer, kept)
    encoded = iter(encoded)
    ids, reasons, lengths = [], [], []
    for text, ok, read_error in zip(texts, valid, read_errors):
        doc = next(encoded) if ok else None
        if doc is not None:
            ids.append(bos_ids + doc)
            reasons.append("")
        else:
            ids.append([])
            reasons.append(read_error or ("tokenizer_error" if ok else "not_a_string" if not isinstance(text, str) else "empty"))
        lengths.append(len(ids[-1]))
    return {"_doc_ids": ids, "_skip": reasons, "_len": lengths, "_windowed": windowed, "_where": list(where)}


def _positions(batch, indices, *, open_ids, max_context, min_context, horizon, k, strategy, seed, code_version=None):
    out = {"prompt": [], "context_ids": [], "target_ids": [], "doc_index": [], "position": []}
    logps = batch["_logps"] if "_logps" in batch else [None] * len(indices)
    for ids, index, token_logps in zip(batch["_doc_ids"], indices, logps):
        rng = random.Random(seed * 1_000_003 + index)
        for t in sample_positions(len(ids), min_context, horizon, k, strategy, rng, token_logps):
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
    max_document_chars: int = 1_000_000,
    position_scorer=None,
) -> tuple[Dataset | IterableDataset, PositionStats]:
    """Turn a dataset of documents into one row per sampled position (see the module docstring).

    `position_scorer` (needed by `position_strategy="surprising"`): token-id documents -> per-token log-probs,
    e.g. `rlp_trl.surprise.make_position_scorer(model, ...)`.
    """
    if isinstance(dataset, IterableDataset) and dataset.column_names is None:
        # A stream with unknown columns (e.g. from a generator): keep only the text field, by name, so that nothing
        # else leaks into the position rows. Rows may hold any Python object; non-strings are skipped and counted.
        dataset = IterableDataset.from_generator(_text_only, gen_kwargs={"source": dataset, "text_field": text_field})
    columns = dataset.column_names or [text_field]
    if columns is not None and text_field not in columns:
        raise missing_text_column(text_field, columns)
    probe = tokenizer("a")["input_ids"]
    bos_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []
    tokenized = dataset.map(
        _tokenize, batched=True, with_indices=True, remove_columns=columns,
        fn_kwargs=dict(
            tokenizer=tokenizer, text_field=text_field, bos_ids=bos_ids, max_chars=max_document_chars, seed=seed,
            code_version=_CODE_VERSION,
        ),
    )
    work_columns = list(_WORK_COLUMNS)
    if position_strategy == "surprising":  # one teacher pass per document (rlp_trl.surprise)
        if position_scorer is None:
            raise ValueError("position_strategy='surprising' needs a position_scorer (rlp_trl.surprise.make_position_scorer)")
        tokenized = tokenized.map(lambda b: {"_logps": position_scorer(b["_doc_ids"])}, batched=True)
        work_columns.append("_logps")
    min_tokens = max(min_context_tokens, 1) + reward_horizon
    positions_kwargs = dict(
        open_ids=list(open_ids), max_context=max_context_tokens, min_context=min_context_tokens, horizon=reward_horizon,
        k=positions_per_document, strategy=position_strategy, seed=seed, code_version=_CODE_VERSION,
    )
    stats = PositionStats()
    if isinstance(tokenized, Dataset):
        lengths = tokenized["_len"]
        reasons = ["too_short" if r == "" and n < min_tokens else r for r, n in zip(tokenized["_skip"], lengths)]
        stats.documents = len(reasons)
        stats.skipped = {k: v for k, v in Counter(reasons).items() if k}
        for reason, row in zip(reasons, tokenized["_where"]):
            if reason and len(stats.examples.setdefault(reason, [])) < EXAMPLE_ROWS:
                stats.examples[reason].append(row)
        stats.windowed = sum(tokenized["_windowed"])
    positions = tokenized.map(
        _positions, batched=True, with_indices=True, fn_kwargs=positions_kwargs, remove_columns=work_columns
    )
    if isinstance(positions, Dataset):
        stats.positions = len(positions)
        if stats.positions == 0:
            raise UsageError(f"No usable positions: {stats.summary()}. {_no_positions_fix(stats, text_field, min_tokens)}")
    return positions, stats


POSITION_COLUMNS = ("prompt", "context_ids", "target_ids")


def as_dataset(documents, text_field: str = "text") -> Dataset | IterableDataset:
    """`documents` as a `datasets` dataset: a Dataset / IterableDataset as is; a Python list (or tuple) of strings is
    one document per item (column `text_field`), a list of dicts one row per dict. Anything else is a UsageError naming
    what to pass (a path string, for instance, is not loaded here: `rlp_trl.tools.train.load_documents` does that)."""
    if isinstance(documents, (Dataset, IterableDataset)):
        return documents
    if isinstance(documents, (list, tuple)):
        if documents and all(isinstance(d, dict) for d in documents):
            return Dataset.from_list(list(documents))
        if all(isinstance(d, str) or d is None for d in documents):  # None: skipped and counted like any non-string
            return Dataset.from_dict({text_field: list(documents)}, features=Features({text_field: Value("string")}))
    what = f"a {type(documents).__name__}"
    if isinstance(documents, (list, tuple)):
        what += " mixing " + ", ".join(sorted({type(d).__name__ for d in documents}))
    raise UsageError(
        f"train_dataset is {what}; pass a datasets.Dataset or IterableDataset with a {text_field!r} column, a list of "
        f"strings (one document each), or a list of dicts" + (" (to read a file or folder: "
        "rlp_trl.tools.train.load_documents(path))" if isinstance(documents, str) else "")
    )


def to_position_dataset(dataset, tokenizer, args, open_ids: list[int], position_scorer=None):
    """`build_position_dataset` with a run's `RLPConfig`; a dataset that already holds positions (`POSITION_COLUMNS`)
    is used as is, a dict of datasets (splits) is converted split by split. Returns (positions, stats or None)."""
    if isinstance(dataset, dict):
        converted = {k: to_position_dataset(v, tokenizer, args, open_ids, position_scorer) for k, v in dataset.items()}
        return {k: v[0] for k, v in converted.items()}, next((v[1] for v in converted.values() if v[1]), None)
    dataset = as_dataset(dataset, args.dataset_text_field)
    if dataset.column_names is not None and set(POSITION_COLUMNS) <= set(dataset.column_names):
        return dataset, None
    positions, stats = build_position_dataset(
        dataset, tokenizer, open_ids=open_ids, text_field=args.dataset_text_field,
        max_context_tokens=args.max_context_tokens, min_context_tokens=args.min_context_tokens,
        reward_horizon=args.reward_horizon, positions_per_document=args.positions_per_document,
        position_strategy=args.position_strategy, seed=args.seed, max_document_chars=args.max_document_chars,
        position_scorer=position_scorer,
    )
    if stats.documents is not None:
        print(f"[rlp_trl] {stats.summary()}")
    return positions, stats


def _no_positions_fix(stats: PositionStats, text_field: str, min_tokens: int) -> str:
    """What to change when no document gave a position, from why they were skipped."""
    reasons = stats.skipped
    if not stats.documents:
        return "The corpus has no documents: the file or folder is empty (a .txt file holds documents separated by blank lines)."
    if reasons.get("too_short"):
        return (f"Each document needs at least min_context_tokens + reward_horizon = {min_tokens} tokens: lower "
                f"--min_context_tokens, or use longer documents (a .txt file is split at blank lines: join the lines "
                f"of one document).")
    if reasons.get("no_text_field"):
        return f"The rows have no field {text_field!r}: pass --dataset_text_field with the column that holds the text."
    if set(reasons) <= {"empty", "not_a_string"}:
        return (f"Every document in column {text_field!r} is empty, whitespace-only or not a string: check the file's "
                f"content, or pass --dataset_text_field with the column that holds the text.")
    return f"Every row was skipped ({', '.join(sorted(reasons))}): fix the file's rows (see the counts and row numbers)."
