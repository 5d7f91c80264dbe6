"""Ablation options: RPT's prefix-match reward, the live no-think baseline, and `surprising` positions."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tiny_config
from rlp_trl import RLPTrainer
from rlp_trl.data import build_position_dataset, sample_positions
from rlp_trl.rewards import prefix_match_reward
from rlp_trl.surprise import document_token_logps, lowest_logprob_positions, make_position_scorer
from tiny_model import THINK_OPEN, tiny_corpus


def test_prefix_match_reward_hand_cases():
    prefixes = [" Paris", " Paris is"]  # decoded first 1 and first 2 true tokens
    thoughts = [
        "the capital\nParis",  # last line equals the first token (whitespace-stripped)
        "maybe\n Paris is ",  # equals the first two tokens
        "Par",  # a byte prefix, but not on a token boundary
        "Paris\nLondon",  # only the last line counts
        "thinking...\n",  # empty last line
        " Paris",  # a single line is its own last line
    ]
    rewards = prefix_match_reward(thoughts, [prefixes] * len(thoughts))
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_lowest_logprob_positions():
    logps = [0.0, -1.0, -5.0, -0.1, -5.0, -3.0]
    assert lowest_logprob_positions(logps, 1, 5, 2) == [2, 4]  # tie at -5: both, sorted
    assert lowest_logprob_positions(logps, 1, 3, 1) == [2]
    assert lowest_logprob_positions(logps, 3, 5, 2) == [4, 5]
    assert sample_positions(6, 1, 1, 2, "surprising", None, token_logps=logps) == [2, 4]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_document_token_logps_windows(tiny):
    model, tok = tiny
    doc = tok(tiny_corpus(1)[0])["input_ids"][:40]
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([doc])).logits[0, :-1], -1).gather(-1, torch.tensor(doc[1:])[:, None])[:, 0]
    whole = document_token_logps(model, [doc, doc[:7]], window=64)
    assert whole[0][0] == 0.0 and whole[0][1:] == pytest.approx(full.tolist(), abs=1e-4)
    assert whole[1][1:] == pytest.approx(full[:6].tolist(), abs=1e-4)
    windowed = document_token_logps(model, [doc], window=16)[0]
    assert windowed[1:16] == pytest.approx(full[:15].tolist(), abs=1e-4)  # the first window sees the document start
    assert all(v != 0.0 for v in windowed[1:])  # every token after the first gets a score
    # token 20 is read from the window starting at 8 (>= 8 tokens of context)
    with torch.no_grad():
        piece = doc[8:24]
        ref = torch.log_softmax(model(torch.tensor([piece])).logits[0, 20 - 8 - 1], -1)[doc[20]].item()
    assert windowed[20] == pytest.approx(ref, abs=1e-4)


def test_surprising_positions_are_the_least_likely_tokens(tiny):
    model, tok = tiny
    docs = Dataset.from_dict({"text": tiny_corpus(4)})
    scorer = make_position_scorer(model, window=64, pad_id=tok.pad_token_id)
    positions, _ = build_position_dataset(
        docs, tok, open_ids=[tok.convert_tokens_to_ids(THINK_OPEN)], max_context_tokens=64, min_context_tokens=4,
        positions_per_document=2, position_strategy="surprising", position_scorer=scorer,
    )
    assert set(positions.column_names) >= {"prompt", "context_ids", "target_ids", "position"}
    for i, text in enumerate(docs["text"]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        logps = document_token_logps(model, [ids], window=64)[0]
        chosen = [p for p, d in zip(positions["position"], positions["doc_index"]) if d == i]
        worst = sorted(range(4, len(ids)), key=lambda t: (logps[t], t))[:2]
        assert chosen == sorted(worst)
    with pytest.raises(ValueError, match="position_scorer"):
        build_position_dataset(docs, tok, open_ids=[1], position_strategy="surprising")


def test_trainer_with_rpt_reward_live_baseline_and_surprising_positions(tiny_model_dir, tiny_docs, tmp_path):
    args = tiny_config(
        tmp_path, reward_type="rpt_prefix_match", no_think_baseline="live", position_strategy="surprising", max_steps=1
    )
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rlp/reward_mean" in h]
    assert logged and logged[0]["rlp/reward_mean"] in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    assert "rlp/info_gain_mean" in logged[0]  # the information gain is still logged
    assert not trainer.teacher.initialized  # the live baseline keeps no EMA copy


def test_config_rejects_unknown_variants(tmp_path):
    with pytest.raises(ValueError, match="reward_type"):
        tiny_config(tmp_path, reward_type="accuracy")
    with pytest.raises(ValueError, match="no_think_baseline"):
        tiny_config(tmp_path, no_think_baseline="frozen")


def test_document_token_logps_caps_rows_per_forward(tiny):
    """Under a small logits budget the documents are scored one window per forward, with the same values."""
    model, tok = tiny
    docs = [tok(t)["input_ids"][:30] for t in tiny_corpus(3)]
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        reference = document_token_logps(model, docs, window=32, batch_size=8)
        assert len(calls) == 1  # the three documents in one forward
        one_window = 32 * model.config.vocab_size
        capped = document_token_logps(model, docs, window=32, batch_size=8, logits_budget=one_window)
    finally:
        hook.remove()
    assert len(calls) == 1 + 3  # then one forward per document
    for a, b in zip(capped, reference):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_kl_ablation_beta_trains_against_the_reference_model(tiny_model_dir, tmp_path, tiny_docs, use_peft):
    """beta > 0 (not the paper): the reference log-probs TRL's loss needs are computed (reference model, or the base
    under a LoRA adapter), and the KL is logged; at step 1 the policy equals the reference, so the KL is 0."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if use_peft else None
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2, beta=0.04), train_dataset=tiny_docs,
                         peft_config=lora)
    trainer.train()
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert len(kl) == 2 and abs(kl[0]) < 1e-6 and kl[1] > 0
