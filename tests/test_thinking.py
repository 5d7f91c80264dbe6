"""The thinking channel: which tokens are the action (the sampled close marker is), dropout off in every policy pass,
position ids for left-padded rows of absolute-position models, and marker rows initialised from text."""

import dataclasses
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from conftest import loss_with_logps_grad, tiny_config
from rlp_trl import RLPTrainer
from rlp_trl.loss import action_mask
from rlp_trl.markers import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE
from rlp_trl.markers import prepare_think_markers
from test_trainer import capture, rows_of, thought_logps
from tiny_model import build_tiny_gpt2


# ---------------------------------------------------------------------------------------------- the action's tokens
def test_action_mask_per_ending():
    assert action_mask(3, SAMPLED_CLOSE, 1, 1) == [1, 1, 1, 1, 0]  # |c| + 1 tokens: the close was sampled
    assert action_mask(3, OTHER_STOP, 1, 1) == [1, 1, 1, 0, 0]  # the close replaced a sampled EOS
    assert action_mask(3, LENGTH_LIMIT, 1, 2) == [1, 1, 1, 0, 0, 0]  # the trainer closed it
    assert action_mask(2, SAMPLED_CLOSE, 3, 1) == [1, 1, 1, 1, 1, 0]  # a multi-token text marker spelled exactly
    assert action_mask(3, SAMPLED_CLOSE, 1, 1, close_in_loss=False) == [1, 1, 1, 0, 0]  # ablation
    assert action_mask(3, LENGTH_LIMIT, 1, 1, mask_thought=True) == [0, 0, 0, 0, 0]  # truncated_thoughts="mask"


def force_endings(trainer):
    """Rows of each group end, in turn: a sampled </think> after 2 tokens, a sampled EOS after 2 tokens, the length
    limit, a sampled </think> after 1 token. Everything downstream is the trainer's real code."""
    original = trainer.sample_thoughts
    eos, close, limit = trainer.processing_class.eos_token_id, trainer.think_close_id, trainer.args.max_completion_length
    words = trainer.processing_class.encode(" the sum of two", add_special_tokens=False)

    def wrapped(prompts, suffixes=None):
        rollouts = original(prompts, suffixes)
        kinds = [words[:2] + [close], words[1:3] + [eos], (words * limit)[:limit], words[3:4] + [close]]
        forced = [kinds[i % 4] for i in range(len(rollouts.sampled_ids))]
        # the in-cache S_pred was for the sampled thoughts: score the forced ones
        return dataclasses.replace(rollouts, sampled_ids=forced, suffix_logps=None)

    trainer.sample_thoughts = wrapped
    return ["close", "stop", "limit", "close"]


@pytest.mark.parametrize("close_in_loss", [True, False])
def test_gradient_reaches_only_a_sampled_close(tiny_model_dir, tmp_path, tiny_docs, close_in_loss):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1, think_close_in_loss=close_in_loss),
                         train_dataset=tiny_docs)
    expected_ends = force_endings(trainer)
    records = capture(trainer)
    trainer.train()
    (record,) = records
    batch = dict(record["output"])
    _, grad, _ = loss_with_logps_grad(trainer, batch)
    limit = trainer.args.max_completion_length
    for i, r in enumerate(rows_of(record, trainer)):
        n, g = len(r["thought"]), grad[i]
        assert r["end"] == expected_ends[i % 4]
        assert n == {0: 2, 1: 2, 2: limit, 3: 1}[i % 4]
        assert batch["advantages"][i] != 0
        assert torch.all(g[:n] != 0)  # every thought token is trained
        close_grad = g[n]  # </think>: sampled (rows 0, 3), written in place of EOS (row 1), written at the limit (row 2)
        assert (close_grad != 0) == (close_in_loss and r["end"] == "close")
        assert torch.all(g[n + 1 :] == 0)  # the true next token x_t and the padding: never
        # eq. 8's per-thought mean runs over the action's tokens: |c| + 1 for a sampled close
        tokens = n + int(close_in_loss and r["end"] == "close")
        n_rows = grad.size(0)
        torch.testing.assert_close(g[0], -batch["advantages"][i] / (tokens * n_rows), rtol=1e-5, atol=1e-8)
    m = record["metrics"]
    assert m["rlp/thought_closed_frac"] == 0.5 and m["rlp/thought_truncated_frac"] == 0.25
    trainer.model.zero_grad(set_to_none=True)


def test_loss_value_against_a_hand_computation(tiny_model_dir, tmp_path, tiny_docs):
    """Off-policy (theta_old != theta) so ratios move and clip on both sides; eq. 8 by hand in float64."""
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1, epsilon=0.1, epsilon_high=0.3),
                         train_dataset=tiny_docs)
    force_endings(trainer)
    records = capture(trainer)
    trainer.train()
    (record,) = records
    batch = dict(record["output"])
    rows = rows_of(record, trainer)
    temperature = trainer.args.temperature
    model = trainer.accelerator.unwrap_model(trainer.model)
    current = [thought_logps(model, r["prompt"], r["thought"] + [r["close"]] + r["target"], temperature) for r in rows]
    width = batch["completion_ids"].size(1)
    shift = torch.tensor([[0.4 * math.sin(3 * i + j) for j in range(width)] for i in range(len(rows))])
    old = torch.stack([torch.nn.functional.pad(c, (0, width - c.numel())) for c in current]) - shift
    batch["old_per_token_logps"] = old
    loss, _, _ = loss_with_logps_grad(trainer, batch)
    expected = 0.0
    for i, r in enumerate(rows):
        a = batch["advantages"][i].item()
        terms = []
        for u, on in enumerate(r["tool_mask"]):
            if on:
                rho = math.exp(current[i][u].item() - old[i, u].item())
                terms.append(-min(rho * a, min(max(rho, 1 - 0.1), 1 + 0.3) * a))
        expected += sum(terms) / len(terms)
    expected /= len(rows)
    assert abs(loss.item() - expected) < 1e-5
    trainer.model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- dropout
@pytest.fixture(scope="module")
def gpt2_with_dropout(tmp_path_factory):
    return build_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2_dropout")), dropout=0.1)


def _one_step_rewards(model_dir, tmp_path, docs, **overrides):
    args = tiny_config(tmp_path, max_steps=1, learning_rate=0.0, **overrides)
    trainer = RLPTrainer(model_dir, args=args, train_dataset=docs)
    records = capture(trainer)
    trainer.train()
    return torch.tensor(records[0]["rewards"]), [r["thought"] for r in rows_of(records[0], trainer)]


def test_dropout_is_off_in_sampling_and_scoring(gpt2_with_dropout, tmp_path, tiny_docs):
    """GPT-2 has dropout 0.1 in its config: with the default, prefix sharing on and off sample the same thoughts and
    give the same rewards under one seed; with the model's dropout left on they do not."""
    on, thoughts_on = _one_step_rewards(gpt2_with_dropout, tmp_path / "a", tiny_docs, prefix_sharing=True)
    off, thoughts_off = _one_step_rewards(gpt2_with_dropout, tmp_path / "b", tiny_docs, prefix_sharing=False)
    assert thoughts_on == thoughts_off
    torch.testing.assert_close(on, off, atol=1e-5, rtol=1e-5)
    noisy_a, _ = _one_step_rewards(gpt2_with_dropout, tmp_path / "c", tiny_docs, prefix_sharing=True, disable_dropout=False)
    noisy_b, _ = _one_step_rewards(gpt2_with_dropout, tmp_path / "d", tiny_docs, prefix_sharing=False, disable_dropout=False)
    assert (noisy_a - noisy_b).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- positions
@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_left_padded_rows_of_gpt2_are_scored_where_they_were_sampled(tmp_path, tiny_docs, prefix_sharing):
    model_dir = build_tiny_gpt2(str(tmp_path / "gpt2"))
    trainer = RLPTrainer(model_dir, args=tiny_config(tmp_path, prefix_sharing=prefix_sharing), train_dataset=tiny_docs)
    tok = trainer.processing_class
    pad_id = tok.pad_token_id
    prompts = [tok.encode(t) for t in ("The sum of 3 and 4", "A teacher reads the answer before lunch and")]
    prompts = [p for p in prompts for _ in range(2)]  # G = 2 rows share each prompt
    completions = [tok.encode(t) for t in (" is 7.", " x", " writes it again.", " then")]
    P, C = max(map(len, prompts)), max(map(len, completions))
    ids = torch.tensor([[pad_id] * (P - len(p)) + p + c + [pad_id] * (C - len(c)) for p, c in zip(prompts, completions)])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (C - len(c)) for p, c in zip(prompts, completions)])
    model = trainer.model
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, C)
        trl_logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, C)
    worst_trl = 0.0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        alone = thought_logps(model, p, c, trainer.args.temperature)  # the row by itself, unpadded
        torch.testing.assert_close(logps[i, : len(c)], alone, atol=1e-5, rtol=1e-5)
        worst_trl = max(worst_trl, (trl_logps[i, : len(c)] - alone).abs().max().item())
    assert worst_trl > 1e-2  # TRL's pass gives left-padded rows no position ids: GPT-2 scores them shifted


# ---------------------------------------------------------------------------------------------- marker rows
def test_added_marker_rows_start_from_their_init_text(tmp_path):
    model_dir = build_tiny_gpt2(str(tmp_path / "gpt2"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lt, gt = tok.encode("<", add_special_tokens=False), tok.encode(" (", add_special_tokens=False)
    open_ids, close_id, model = prepare_think_markers(tok, model, "<reason>", "</reason>", True, "text", ("<", " ("))
    emb = model.get_input_embeddings().weight
    assert len(open_ids) == 1 and emb.size(0) == len(tok)
    torch.testing.assert_close(emb[open_ids[0]], emb[lt].mean(0))
    torch.testing.assert_close(emb[close_id], emb[gt].mean(0))
    assert model.get_output_embeddings().weight is emb  # tied: the output row is the same row
    # the same call on a fresh copy gives the same rows (rlp-eval's base model matches the trained model's start)
    tok2, model2 = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    prepare_think_markers(tok2, model2, "<reason>", "</reason>", True, "text", ("<", " ("))
    torch.testing.assert_close(model2.get_input_embeddings().weight, emb)


# ---------------------------------------------------------------------------------------------- the demo's summary
def test_window_stats_pools_the_spread():
    from rlp_trl.tools.train import window_stats

    history = [
        {"rlp/info_gain_mean": -1.0, "rlp/info_gain_std": 1.0, "rlp/thought_closed_frac": 0.5, "rlp/thought_truncated_frac": 0.25},
        {"rlp/info_gain_mean": 1.0, "rlp/info_gain_std": 1.0, "rlp/thought_closed_frac": 1.0, "rlp/thought_truncated_frac": 0.0},
    ]
    s = window_stats(history, rollouts_per_step=8)
    assert s["gain"] == 0.0 and abs(s["gain_sd"] - 2**0.5) < 1e-12  # within-step var 1 + between-step var 1
    assert s["closed"] == 0.75 and s["truncated"] == 0.125 and s["rollouts"] == 16


def test_summary_says_whether_thinking_is_learning(tiny_model_dir, tmp_path, tiny_docs):
    from rlp_trl.tools.train import summarize

    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=4), train_dataset=tiny_docs)
    trainer.train()
    text = summarize(trainer)
    history = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    assert "is thinking learning? first 1 step(s) -> last 1 step(s), over 8 rollouts each" in text
    assert f"{history[0]['rlp/info_gain_mean']:+.2f} (sd" in text and f"{history[-1]['rlp/info_gain_mean']:+.2f} (sd" in text
    assert "closed by </think>" in text and "docs/learning_curve.md" in text


# ---------------------------------------------------------------------------------------------- LoRA outputs
def test_lora_output_holds_the_trained_adapter_only_and_reloads(tiny_model_dir, tmp_path, tiny_docs):
    """Markers missing from the vocabulary + LoRA: the saved folder has the trained adapter (and the resized
    embeddings it needs), not the `rlp_ema` teacher adapter, and `AutoPeftModelForCausalLM` reloads it exactly."""
    from peft import AutoPeftModelForCausalLM, LoraConfig
    from safetensors import safe_open

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = tiny_config(tmp_path, max_steps=1, think_open="<reason>", think_close="</reason>")
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs, peft_config=lora)
    trainer.train()
    out = str(tmp_path / "final")
    trainer.save_model(out)
    with safe_open(f"{out}/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "rlp_ema" in k]
    assert any("embed_tokens" in k for k in keys)  # the base lacks the marker rows: PEFT saves the resized matrix
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    ids = torch.tensor([trainer.processing_class.encode("The sum of 3 and 4<reason> is</reason> 7")])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
