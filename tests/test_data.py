"""Positions in token space (`rlp_trl.data`): bounds, determinism, exact targets, truncation, skip accounting."""

import random

import pytest
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer

from rlp_trl.data import build_position_dataset, sample_positions
from tiny_model import THINK_OPEN, tiny_corpus


# ---------------------------------------------------------------------------------------------- sample_positions
@pytest.mark.parametrize("strategy", ["random", "stride"])
@pytest.mark.parametrize(
    "n, min_context, horizon, k",
    [(50, 4, 1, 3), (50, 0, 1, 5), (20, 16, 1, 2), (20, 16, 4, 1), (200, 10, 3, 17), (30, 5, 2, 1), (9, 3, 2, 4)],
)
def test_sample_positions_bounds(strategy, n, min_context, horizon, k):
    positions = sample_positions(n, min_context, horizon, k, strategy, random.Random(0))
    available = n - horizon - max(min_context, 1) + 1
    assert len(positions) == min(k, max(available, 0))
    assert positions == sorted(set(positions))  # sorted and distinct
    for t in positions:
        assert t >= min_context and t >= 1  # enough context (and never an empty one)
        assert t + horizon <= n  # H true tokens exist from t on


@pytest.mark.parametrize("strategy", ["random", "stride"])
def test_sample_positions_too_short_is_empty(strategy):
    # first valid t is max(min_context, 1) = 8, last is n - H = 7
    assert sample_positions(10, 8, 3, 2, strategy, random.Random(0)) == []
    assert sample_positions(0, 0, 1, 2, strategy, random.Random(0)) == []
    assert sample_positions(1, 0, 1, 2, strategy, random.Random(0)) == []  # t = 0 would have no context


def test_sample_positions_exact_fit_gives_the_single_position():
    assert sample_positions(10, 8, 2, 3, "random", random.Random(0)) == [8]


@pytest.mark.parametrize("strategy", ["random", "stride"])
def test_sample_positions_k_larger_than_available_returns_all(strategy):
    assert sample_positions(12, 4, 2, 100, strategy, random.Random(0)) == list(range(4, 11))
    assert sample_positions(12, 4, 2, 7, strategy, random.Random(0)) == list(range(4, 11))


def test_sample_positions_random_is_seeded():
    draw = lambda seed: sample_positions(500, 16, 1, 5, "random", random.Random(seed))  # noqa: E731
    assert draw(3) == draw(3)
    assert len({tuple(draw(s)) for s in range(6)}) > 1  # different seeds give different positions


def test_sample_positions_random_covers_the_range():
    seen = set()
    for seed in range(300):
        seen.update(sample_positions(20, 4, 1, 2, "random", random.Random(seed)))
    assert seen == set(range(4, 20))


def test_sample_positions_stride_is_evenly_spread():
    # valid t in [1, 99] (99 positions), k = 3: step 33, centred in each stride
    assert sample_positions(100, 0, 1, 3, "stride", random.Random(0)) == [17, 50, 83]
    positions = sample_positions(1000, 16, 1, 10, "stride", random.Random(0))
    gaps = [b - a for a, b in zip(positions, positions[1:])]
    assert max(gaps) - min(gaps) <= 1
    first, last = 16, 999
    assert positions[0] - first <= gaps[0] and last - positions[-1] <= gaps[0]  # no crowding at one end
    # deterministic: independent of the rng state
    assert positions == sample_positions(1000, 16, 1, 10, "stride", random.Random(123))


def test_sample_positions_unknown_strategy():
    with pytest.raises(ValueError, match="unknown position strategy 'entropy'"):
        sample_positions(100, 4, 1, 2, "entropy", random.Random(0))


# ---------------------------------------------------------------------------------------------- build_position_dataset
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def open_ids(tokenizer):
    ids = tokenizer.encode(THINK_OPEN, add_special_tokens=False)
    assert len(ids) == 1
    return ids


def _encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("strategy", ["random", "stride"])
def test_targets_are_the_exact_corpus_tokens(tokenizer, open_ids, tiny_docs, horizon, strategy):
    max_context, min_context = 32, 4
    rows, stats = build_position_dataset(
        tiny_docs, tokenizer, open_ids=open_ids, max_context_tokens=max_context, min_context_tokens=min_context,
        reward_horizon=horizon, positions_per_document=3, position_strategy=strategy, seed=7,
    )
    docs = tiny_docs["text"]
    assert stats.documents == len(docs) and stats.positions == len(rows) and stats.skipped == {}
    assert len(rows) == 3 * len(docs)  # every tiny document has far more than 3 valid positions
    truncated = 0
    for row in rows:
        ids = _encode(tokenizer, docs[row["doc_index"]])
        t = row["position"]
        assert min_context <= t and t + horizon <= len(ids)
        assert row["target_ids"] == ids[t : t + horizon]
        assert len(row["target_ids"]) == horizon
        assert row["context_ids"] == ids[max(0, t - max_context) : t]  # left-truncated: the most recent tokens
        assert row["prompt"] == row["context_ids"] + open_ids
        assert len(row["prompt"]) <= max_context + len(open_ids)
        truncated += t > max_context
    assert truncated > 0  # the left truncation was exercised


def test_positions_are_deterministic_and_seed_dependent(tokenizer, open_ids, tiny_docs):
    build = lambda seed: build_position_dataset(  # noqa: E731
        tiny_docs, tokenizer, open_ids=open_ids, max_context_tokens=64, min_context_tokens=4, seed=seed
    )[0]["position"]
    assert build(0) == build(0)
    assert build(0) != build(1)


def test_positions_per_document_are_distinct(tokenizer, open_ids, tiny_docs):
    rows, _ = build_position_dataset(
        tiny_docs, tokenizer, open_ids=open_ids, max_context_tokens=64, min_context_tokens=4, positions_per_document=4
    )
    by_doc = {}
    for d, t in zip(rows["doc_index"], rows["position"]):
        by_doc.setdefault(d, []).append(t)
    assert sorted(by_doc) == list(range(len(tiny_docs)))
    assert all(len(v) == 4 and len(set(v)) == 4 for v in by_doc.values())


def test_skipped_documents_are_counted(tokenizer, open_ids):
    long_docs = tiny_corpus(3, seed=5)
    texts = ["", "   \n\t ", None, "Paris.", long_docs[0], None, long_docs[1], "", long_docs[2]]
    rows, stats = build_position_dataset(
        Dataset.from_dict({"text": texts}), tokenizer, open_ids=open_ids, max_context_tokens=64, min_context_tokens=8
    )
    assert stats.documents == len(texts)
    assert stats.skipped == {"empty": 3, "not_a_string": 2, "too_short": 1}
    assert stats.positions == len(rows) == 3
    assert sorted(rows["doc_index"]) == [4, 6, 8]  # indices into the original dataset
    summary = stats.summary()
    assert "9 documents -> 3 positions" in summary and "empty=3" in summary and "too_short=1" in summary


def test_too_short_boundary(tokenizer, open_ids):
    text = "The capital of France is Paris, and the capital of Japan is Tokyo."
    n, horizon = len(_encode(tokenizer, text)), 2
    data = Dataset.from_dict({"text": [text]})
    rows, stats = build_position_dataset(
        data, tokenizer, open_ids=open_ids, min_context_tokens=n - horizon, reward_horizon=horizon, max_context_tokens=n
    )
    assert rows["position"] == [n - horizon] and stats.skipped == {}
    assert rows["target_ids"][0] == _encode(tokenizer, text)[-horizon:]
    with pytest.raises(ValueError, match="No usable positions"):
        build_position_dataset(
            data, tokenizer, open_ids=open_ids, min_context_tokens=n - horizon + 1, reward_horizon=horizon,
            max_context_tokens=n,
        )


def test_nothing_usable_raises_with_the_counts(tokenizer, open_ids):
    data = Dataset.from_dict({"text": ["", None, "Short one.", "  "]})
    with pytest.raises(ValueError) as err:
        build_position_dataset(data, tokenizer, open_ids=open_ids, min_context_tokens=16)
    message = str(err.value)
    assert "No usable positions" in message
    assert "empty=2" in message and "not_a_string=1" in message and "too_short=1" in message
    assert "min_context_tokens" in message


def test_missing_text_column_lists_the_columns(tokenizer, open_ids):
    data = Dataset.from_dict({"content": ["some text here"], "title": ["t"]})
    with pytest.raises(ValueError) as err:
        build_position_dataset(data, tokenizer, open_ids=open_ids)
    message = str(err.value)
    assert "'text'" in message and "content" in message and "title" in message


def test_custom_text_field(tokenizer, open_ids):
    docs = tiny_corpus(4, seed=9)
    rows, stats = build_position_dataset(
        Dataset.from_dict({"body": docs, "id": list(range(4))}), tokenizer, open_ids=open_ids, text_field="body",
        min_context_tokens=4,
    )
    assert stats.positions == 4
    assert set(rows.column_names) == {"prompt", "context_ids", "target_ids", "doc_index", "position"}


# Formerly xfail (document columns leaked into streaming rows); fixed in rlp_trl/data.py by removing columns by name.
@pytest.mark.parametrize(
    "k, extra_docs", [(2, []), (1, ["", None]), (1, [])], ids=["k=2", "k=1-with-skipped", "k=1-columns-leak"]
)
def test_streaming_dataset_gives_the_same_rows(tokenizer, open_ids, k, extra_docs):
    data = Dataset.from_dict({"text": tiny_corpus(10, seed=4) + extra_docs})
    kwargs = dict(open_ids=open_ids, max_context_tokens=48, min_context_tokens=4, positions_per_document=k, seed=3)
    eager, _ = build_position_dataset(data, tokenizer, **kwargs)
    lazy, stats = build_position_dataset(data.to_iterable_dataset(), tokenizer, **kwargs)
    assert isinstance(lazy, IterableDataset)
    assert stats.documents is None and stats.positions is None
    assert [dict(r) for r in lazy] == [dict(r) for r in eager]


def test_bos_is_kept_as_context(tiny_model_dir, open_ids):
    """A tokenizer that prepends BOS: the document ids start with it, so early contexts include it."""
    from tokenizers.processors import TemplateProcessing

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tok.eos_token
    tok.bos_token = bos
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.eos_token_id)])
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    docs = tiny_corpus(6, seed=2)
    rows, _ = build_position_dataset(
        Dataset.from_dict({"text": docs}), tok, open_ids=open_ids, max_context_tokens=1000, min_context_tokens=2,
        positions_per_document=2,
    )
    for row in rows:
        ids = [tok.bos_token_id] + _encode(tok, docs[row["doc_index"]])
        t = row["position"]
        assert row["context_ids"] == ids[:t] and row["context_ids"][0] == tok.bos_token_id
        assert row["target_ids"] == ids[t : t + 1]
