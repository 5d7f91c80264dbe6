"""Bad input (issue 6): every case ends in a clear error or a counted skip, never a deep torch stack trace and never
silent corruption. Documents, tokenizers, think markers, thoughts, context windows, non-finite values, CLI values."""

import dataclasses
import math
import random
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, IterableDataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import rlp_trl
import rlp_trl.trainer as trainer_module
from conftest import nan_first_reward, tiny_config
from rlp_trl import RLPTrainer, RunConfig
from rlp_trl.data import _window, build_position_dataset
from rlp_trl.markers import find_text_marker, split_thought_text
from rlp_trl.resilience import NonFiniteError, NonFiniteGuard, guard
from rlp_trl.rewards import exclude_nonfinite_groups
from tiny_model import _TEXT, EOS, THINK_OPEN, tiny_corpus


# ---------------------------------------------------------------------------------------------- fixtures
def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.fixture(scope="module")
def plain_tokenizer():
    """Byte-level BPE with EOS only: no pad token, no think markers; trained so that ' <' and ' </' merge, i.e. the
    markers tokenize differently after a space than on their own."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_TEXT, *tiny_corpus(200, seed=1234), "so <think> we add </think> 5. " * 50], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, model_max_length=1024)


def _plain_model(tokenizer):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---------------------------------------------------------------------------------------------- documents
def test_bad_documents_are_skipped_by_reason(tokenizer):
    good = tiny_corpus(3, seed=11)
    # a stream of arbitrary Python objects (an Arrow column cannot mix types, a generator can)
    texts = ["", " \n\t", None, 123, ["a", "list"], b"bytes", "lone surrogate \ud800 in a document " * 5, "Short.",
             *good]
    rows, stats = build_position_dataset(
        IterableDataset.from_generator(lambda: ({"text": t} for t in texts)), tokenizer,
        open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=8, reward_horizon=3,
    )
    rows = list(rows)  # streaming: counted only for map-style datasets, but the bad rows are skipped all the same
    assert sorted({r["doc_index"] for r in rows}) == [8, 9, 10]
    for row in rows:
        assert len(row["target_ids"]) == 3  # H never runs past the end of a document
    # map-style (Arrow holds one type per column and no lone surrogates): skips are counted by reason; a document the
    # tokenizer rejects is isolated from the rest of its batch
    texts_ms = ["", " \n\t", None, "POISON " + good[0], "Short.", *good]
    rows, stats = build_position_dataset(
        Dataset.from_dict({"text": texts_ms}), _Fussy(tokenizer), open_ids=tokenizer.encode(THINK_OPEN),
        min_context_tokens=8, reward_horizon=3,
    )
    assert stats.skipped == {"empty": 2, "not_a_string": 1, "tokenizer_error": 1, "too_short": 1}
    assert stats.positions == len(rows) == 3 and sorted(rows["doc_index"]) == [5, 6, 7]
    assert "tokenizer_error=1" in stats.summary()


class _Fussy:
    """A tokenizer that raises on documents containing POISON (as some tokenizers do on odd input)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, **kwargs):
        if "POISON" in (text if isinstance(text, str) else "".join(text)):
            raise ValueError("cannot tokenize this")
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_extremely_long_document_is_windowed(tokenizer):
    rng = random.Random(0)
    words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "the", "sum", "of"]) for _ in range(400_000))
    assert len(words) > 1_500_000
    docs = Dataset.from_dict({"text": [words, tiny_corpus(1)[0]]})
    rows, stats = build_position_dataset(
        docs, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), max_context_tokens=32, min_context_tokens=4,
        max_document_chars=5_000, seed=3,
    )
    assert stats.windowed == 1 and stats.skipped == {} and stats.positions == 2
    assert "1 over max_document_chars windowed" in stats.summary()
    long_row = rows[0]
    assert long_row["doc_index"] == 0 and long_row["position"] < 5_000  # a position inside the 5,000-char window
    window = _window(words, 5_000, random.Random("3:0:window"))
    assert window in words and len(window) <= 5_000 and window == _window(words, 5_000, random.Random("3:0:window"))
    ids = tokenizer(window, add_special_tokens=False)["input_ids"]
    t = long_row["position"]
    assert long_row["context_ids"] == ids[max(0, t - 32) : t] and long_row["target_ids"] == ids[t : t + 1]
    # 0 disables the cap
    _, stats = build_position_dataset(
        docs.select([1]), tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4, max_document_chars=0
    )
    assert stats.windowed == 0


def test_streaming_missing_text_column_lists_the_columns(tokenizer):
    stream = IterableDataset.from_generator(lambda: ({"body": t, "id": i} for i, t in enumerate(tiny_corpus(2))))
    rows, _ = build_position_dataset(stream, tokenizer, open_ids=tokenizer.encode(THINK_OPEN))  # lazy
    with pytest.raises(ValueError) as err:
        next(iter(rows))
    assert "'text'" in str(err.value) and "body" in str(err.value) and "id" in str(err.value)


@pytest.mark.parametrize("docs", [["", "   ", None, 7, "Too short."], []], ids=["all-bad", "empty"])
def test_streaming_dataset_without_usable_rows_fails_at_train_start(tiny_model_dir, tmp_path, docs):
    stream = IterableDataset.from_generator(lambda: ({"text": t} for t in docs))
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2), train_dataset=stream)
    with pytest.raises(ValueError, match="no usable positions"):
        rlp_trl.train(trainer)
    assert trainer.state.global_step == 0


# ---------------------------------------------------------------------------------------------- tokenizer and markers
def test_tokenizer_without_pad_token_uses_eos(plain_tokenizer, tmp_path):
    tok = plain_tokenizer.__class__.from_pretrained(_save(plain_tokenizer, tmp_path / "tok"))
    assert tok.pad_token is None
    trainer = RLPTrainer(
        _plain_model(tok), args=tiny_config(tmp_path, max_steps=1, think_markers_as_text=True),
        processing_class=tok, train_dataset=Dataset.from_dict({"text": tiny_corpus(8)}),
    )
    assert tok.pad_token == EOS
    trainer.train()
    assert trainer.state.global_step == 1


def test_tokenizer_without_eos_is_a_clear_error(plain_tokenizer, tmp_path):
    tok = plain_tokenizer.__class__.from_pretrained(_save(plain_tokenizer, tmp_path / "tok"))
    tok.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        RLPTrainer(_plain_model(tok), args=tiny_config(tmp_path), processing_class=tok,
                   train_dataset=Dataset.from_dict({"text": tiny_corpus(8)}))


def _save(tok, path):
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("as_text", [False, True], ids=["add-special-tokens", "plain-text"])
def test_markers_missing_from_the_vocabulary(plain_tokenizer, tmp_path, as_text):
    tok = plain_tokenizer.__class__.from_pretrained(_save(plain_tokenizer, tmp_path / "tok"))
    vocab = len(tok)
    model = _plain_model(tok)
    trainer = RLPTrainer(
        model, args=tiny_config(tmp_path, max_steps=1, think_markers_as_text=as_text), processing_class=tok,
        train_dataset=Dataset.from_dict({"text": tiny_corpus(8)}),
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    if as_text:  # vocabulary untouched; markers are their standalone token sequences
        assert len(tok) == vocab and model.get_input_embeddings().weight.shape[0] == vocab
        assert trainer.think_open_ids == tok.encode("<think>") and len(trainer.think_open_ids) > 1
        assert trainer.think_close_ids == tok.encode("</think>") and trainer.think_close_id is None
        assert not set(trainer.think_close_ids) & set(trainer.eos_token_ids)  # not stop tokens
    else:  # added as special tokens, embeddings resized
        assert len(tok) == vocab + 2 and model.get_input_embeddings().weight.shape[0] >= vocab + 2
        assert len(trainer.think_open_ids) == 1 and trainer.think_close_ids == [trainer.think_close_id]
    for row in trainer.train_dataset:  # in token space: context ids, then exactly the marker ids
        assert row["prompt"] == row["context_ids"] + trainer.think_open_ids
    captured = {}
    original = trainer._generate_and_score_completions

    def spy(inputs):
        captured["out"] = original(inputs)
        return captured["out"]

    trainer._generate_and_score_completions = spy
    trainer.train()
    out = captured["out"]
    close = torch.tensor(trainer.think_close_ids)
    for ids, mask, tmask in zip(out["completion_ids"], out["completion_mask"], out["tool_mask"]):
        n = int(mask.sum())
        thought = int(tmask[:n].sum())
        assert torch.equal(ids[thought : thought + len(close)], close)  # thought, then the canonical close ids
        assert n == thought + len(close) + 1  # ... then the H = 1 true token
    assert trainer.state.global_step == 1


def test_text_marker_found_however_it_is_tokenized(plain_tokenizer):
    tok = plain_tokenizer
    decode = lambda ids: tok.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    close = tok.encode("</think>")
    before = tok.encode("We add 5")
    # the marker tokenizes differently after a space: 'Ġ</' instead of '<', '/'
    spaced = tok.encode("We add 5 </think> 7")
    assert not any(spaced[i : i + len(close)] == close for i in range(len(spaced)))
    cut = find_text_marker(spaced, "</think>", close, decode)
    assert decode(spaced[:cut]) == "We add 5"
    # canonical ids
    assert find_text_marker(before + close + tok.encode(" 7"), "</think>", close, decode) == len(before)
    # spelled with single-byte tokens
    byte_ids = [tok.convert_tokens_to_ids(c) for c in "</think>"]
    assert None not in byte_ids and byte_ids != close
    assert find_text_marker(before + byte_ids, "</think>", close, decode) == len(before)
    # absent
    assert find_text_marker(before, "</think>", close, decode) is None
    # split: EOS first ends the thought; a thought without marker or EOS is truncated
    eos = tok.eos_token_id
    assert split_thought_text(before + [eos] + close, {eos}, "</think>", close, decode) == (before, False)
    assert split_thought_text(before + close + [eos], {eos}, "</think>", close, decode) == (before, False)
    assert split_thought_text(before, {eos}, "</think>", close, decode) == (before, True)
    assert split_thought_text(close + before, {eos}, "</think>", close, decode) == ([], False)  # zero-length thought


# ---------------------------------------------------------------------------------------------- thoughts and windows
def test_zero_length_and_unclosed_thoughts(tiny_model_dir, tmp_path, tiny_docs):
    # think_close_in_loss=False: an immediately sampled </think> would otherwise be a one-token action
    # (tests/test_thinking.py); here nothing at all should reach the loss
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1, truncated_thoughts="mask",
                                                          think_close_in_loss=False), train_dataset=tiny_docs)
    original = trainer.sample_thoughts
    limit = trainer.args.max_completion_length
    filler = trainer.processing_class.encode(" the", add_special_tokens=False)[0]

    def zero_or_unclosed(prompts, suffixes=None):
        rollouts = original(prompts, suffixes)
        forced = [[trainer.think_close_id] if i % 2 else [filler] * limit for i in range(len(rollouts.sampled_ids))]
        # score the forced thoughts, not the sampled ones
        return dataclasses.replace(rollouts, sampled_ids=forced, suffix_logps=None)

    trainer.sample_thoughts = zero_or_unclosed
    captured = {}
    score = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: captured.setdefault("out", score(inputs))
    before = _params(trainer.model)
    trainer.train()
    out = captured["out"]
    assert out["tool_mask"].sum() == 0  # zero-length thoughts have no token; unclosed ones are masked ("mask")
    assert torch.isfinite(out["advantages"]).all()
    history = [h for h in trainer.state.log_history if "rlp/thought_truncated_frac" in h][0]
    assert history["rlp/thought_truncated_frac"] == 0.5 and history["rlp/thought_length_mean"] == limit / 2
    after = _params(trainer.model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing to learn from: no token in the loss


def test_context_window_smaller_than_thought_plus_horizon(tiny_model_dir, tmp_path, tiny_docs):
    # tiny model: max_position_embeddings = 1024
    # an explicit context length that cannot fit: an error at construction, before any document is tokenized
    args = tiny_config(tmp_path, max_context_tokens=1000, max_completion_length=30, reward_horizon=2)
    with pytest.raises(ValueError) as err:
        RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    message = str(err.value)
    for part in ("max_context_tokens (1000)", "max_completion_length (30)", "reward_horizon (2)", "1034",
                 "max_position_embeddings=1024", "--max_context_tokens 990"):
        assert part in message


def test_g_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError) as err:
        tiny_config(tmp_path, per_device_train_batch_size=6, num_generations=4)
    assert "num_generations" in str(err.value) and "(6)" in str(err.value)


# ---------------------------------------------------------------------------------------------- non-finite values
_ONE_PROCESS = SimpleNamespace(num_processes=1, unwrap_model=lambda m: m, scaler=None)


def test_nonfinite_rewards_guard_unit():
    rewards = torch.tensor([0.1, float("nan"), 0.3, 0.2, 0.5, -0.5, float("inf"), 0.0, 1.0, 2.0, 3.0, 4.0])
    out, found = exclude_nonfinite_groups(rewards, 4)
    assert torch.equal(out[:8], torch.zeros(8)) and torch.equal(out[8:], rewards[8:])  # 2 groups zeroed
    guard = NonFiniteGuard("skip", 20, accelerator=_ONE_PROCESS)
    guard.check_rewards(found, step=7)
    assert guard.totals == {"rewards": 2, "groups": 2}
    assert guard.events[-1] == {"step": 7, "kind": "rewards", "count": 2}
    with pytest.raises(NonFiniteError, match=r"step 7 \(train\): 2 non-finite reward\(s\) in 2 of 3 group"):
        NonFiniteGuard("raise", 20, accelerator=_ONE_PROCESS).check_rewards(found, step=7)


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_nonfinite_rewards_in_training(tiny_model_dir, tmp_path, tiny_docs, monkeypatch, mode, caplog):
    monkeypatch.setattr(trainer_module, "information_gain", nan_first_reward(trainer_module.information_gain))
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2), train_dataset=tiny_docs)
    nonfinite_guard = guard(trainer, RunConfig(on_nonfinite=mode)).nonfinite_guard
    if mode == "raise":
        before = _params(trainer.model)
        with pytest.raises(NonFiniteError, match=r"step 1 \(train\): 1 non-finite reward"):
            rlp_trl.train(trainer)
        assert all(torch.equal(before[k], v) for k, v in _params(trainer.model).items())
        return
    rlp_trl.train(trainer)
    assert trainer.state.global_step == 2
    assert nonfinite_guard.totals["rewards"] == 2  # one per step, reported with its step
    assert [e["step"] for e in nonfinite_guard.events] == [1, 2]
    assert all(torch.isfinite(v).all() for v in _params(trainer.model).values())
    logged = [h["rlp/nonfinite_rewards"] for h in trainer.state.log_history if "rlp/nonfinite_rewards" in h]
    assert logged == [1.0, 1.0]


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_nonfinite_gradients_never_reach_the_weights(tiny_model_dir, tmp_path, tiny_docs, mode):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2), train_dataset=tiny_docs)
    nonfinite_guard = guard(trainer, RunConfig(on_nonfinite=mode)).nonfinite_guard
    model = trainer.accelerator.unwrap_model(trainer.model)

    def poison(module, args, output):  # NaN hidden states only in the training forward (sampling/scoring: no grad)
        return output * float("nan") if torch.is_grad_enabled() else output

    handle = model.model.norm.register_forward_hook(poison)
    before = _params(model)
    if mode == "raise":
        with pytest.raises(NonFiniteError, match="step 1: non-finite gradients"):
            rlp_trl.train(trainer)
    else:
        rlp_trl.train(trainer)
        assert trainer.state.global_step == 2 and nonfinite_guard.totals["steps"] == 2
        assert trainer.optimizer.state == {} or all(
            not s for s in trainer.optimizer.state.values()
        )  # AdamW never stepped: no moments
    handle.remove()
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_degenerate_weights_fail_at_train_start(tiny_model_dir, tmp_path, tiny_docs):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1), train_dataset=tiny_docs)
    with torch.no_grad():
        trainer.accelerator.unwrap_model(trainer.model).model.norm.weight[0] = math.inf
    with pytest.raises(NonFiniteError, match="model.norm.weight"):
        rlp_trl.train(trainer)


# ---------------------------------------------------------------------------------------------- CLI values
@pytest.mark.parametrize(
    "flag, value, field",
    [
        ("--max_context_tokens", "-5", "max_context_tokens"),
        ("--max_completion_length", "-1", "max_completion_length"),
        ("--min_context_tokens", "-1", "min_context_tokens"),
        ("--reward_horizon", "0", "reward_horizon"),
        ("--ema_decay", "1.5", "ema_decay"),
        ("--ema_decay", "0", "ema_decay"),
        ("--epsilon", "0", "epsilon"),
        ("--epsilon", "-0.2", "epsilon"),
        ("--epsilon_high", "0", "epsilon_high"),
        ("--num_generations", "1", "num_generations"),
        ("--per_device_train_batch_size", "0", "per_device_train_batch_size"),
        ("--temperature", "0", "temperature"),
        ("--learning_rate", "-1e-6", "learning_rate"),
        ("--top_p", "1.5", "top_p"),
        ("--on_nonfinite", "ignore", "on_nonfinite"),
        ("--max_document_chars", "-1", "max_document_chars"),
        ("--nonfinite_patience", "0", "nonfinite_patience"),
        ("--resume_mismatch", "ignore", "resume_mismatch"),
    ],
)
def test_cli_rejects_bad_values_at_start(tmp_path, flag, value, field, monkeypatch):
    from rlp_trl.tools import train as cli

    def no_model(*args, **kwargs):
        raise AssertionError("the config must be rejected before anything is loaded")

    monkeypatch.setattr(cli, "load_documents", no_model)
    monkeypatch.setattr(cli, "RLPTrainer", no_model)
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--model_name_or_path", "x", "--dataset_name", "y", f"{flag}={value}"]
    with pytest.raises(ValueError, match=rf"(RLPConfig|RunConfig): {field}\b"):
        cli.main(argv)


def test_run_options_live_in_run_config_checked_once_each():
    from rlp_trl import RLPConfig
    from rlp_trl.resilience.options import CHECKS

    names = [name for name, _, _ in CHECKS]
    assert sorted(names) == sorted(RunConfig.__dataclass_fields__)  # every run option has exactly one check
    with pytest.raises(ValueError, match=r"RunConfig: nonfinite_patience must be an integer >= 1, got 0"):
        RunConfig(nonfinite_patience=0)
    with pytest.raises(TypeError, match="on_nonfinite"):  # moved out of the algorithm's config
        RLPConfig(output_dir="x", on_nonfinite="skip")
    from rlp_trl.config import FIELD_CHECKS

    names = [name for name, _, _ in FIELD_CHECKS]
    assert len(names) == len(set(names))  # the algorithm's fields: one check each too
    assert all(name in RLPConfig.__dataclass_fields__ for name in names)
    with pytest.raises(ValueError, match=r"num_generations must be an integer >= 2") as err:
        RLPConfig(output_dir="x", num_generations=1)
    assert str(err.value).count("num_generations") == 1
