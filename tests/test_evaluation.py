"""Evaluation tools: `rlp-eval` metrics and statistics, the offline benchmarks and their scorers, the lm-eval bridge,
and the compute-matched CPT budget. Math is checked against hand-computed values; model code runs on the tiny model."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config  # noqa: F401  (sets the offline environment before transformers is used)
from datasets import Dataset
from tiny_model import THINK_CLOSE, THINK_OPEN, tiny_corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlp_trl.tools import bench as benchmarks
from rlp_trl.tools import cpt
from rlp_trl.tools.heldout import heldout_split, reasoned_logps
from rlp_trl.tools.stats import compare_positions, mean_ci, position_metrics, summarize_positions, wilson_ci
from rlp_trl.fast.scoring import pad_rows, score_last_tokens


# ---------------------------------------------------------------------------------------------- rlp-eval: math
def test_position_metrics_hand_computed():
    nothink = torch.tensor([-1.0, -2.0])
    reasoned = torch.tensor([[-0.5, -1.5], [-3.0, -2.0]])
    m = position_metrics(nothink, reasoned)
    assert m["nll_nothink"].tolist() == [1.0, 2.0]
    assert m["nll_reasoned"].tolist() == pytest.approx([1.0, 2.5])
    # -log((e^-0.5 + e^-1.5) / 2) = 0.5 - log((1 + e^-1) / 2); the second row is the same shifted by 1.5
    assert m["nll_marginal"].tolist() == pytest.approx([0.879885, 2.379885], abs=1e-5)
    assert m["info_gain"].tolist() == pytest.approx([0.0, -0.5])
    assert m["positive_thought_frac"].tolist() == [0.5, 0.0]  # ties (-2 vs -2) do not count as helping


def test_confidence_intervals_hand_computed():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])  # s = 1.290994, se = 0.645497, half width = 1.959964 * se = 1.265151
    assert ci["mean"] == 2.5 and ci["n"] == 4
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((1.234849, 3.765151), abs=1e-5)
    w = wilson_ci(3, 10)  # the textbook Wilson interval for 3/10: [0.1078, 0.6032]
    assert w["mean"] == 0.3
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((0.10779, 0.60323), abs=1e-4)
    assert wilson_ci(0, 5)["ci_low"] == pytest.approx(0.0, abs=1e-12) and wilson_ci(0, 5)["ci_high"] > 0


def test_summary_and_paired_comparison():
    a = position_metrics(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([[-1.0], [-1.0], [-4.0]]))
    b = position_metrics(torch.tensor([-0.5, -1.5, -2.5]), torch.tensor([[-1.0], [-1.0], [-4.0]]))
    s = summarize_positions(a)
    assert s["nll_nothink"]["mean"] == pytest.approx(2.0)
    assert s["ppl_nothink"]["mean"] == pytest.approx(math.exp(2.0))
    assert s["thinking_helps_frac"]["mean"] == pytest.approx(1 / 3)  # gains 0, +1, -1
    diff = compare_positions(a, b)
    assert diff["nll_nothink"]["mean"] == pytest.approx(-0.5)
    assert diff["nll_nothink"]["ci_low"] == pytest.approx(-0.5)  # identical differences: zero-width interval
    assert diff["info_gain"]["mean"] == pytest.approx(-0.5)


def test_heldout_split_is_deterministic_and_disjoint():
    docs = Dataset.from_dict({"text": tiny_corpus(60)})
    train, held = heldout_split(docs, fraction=0.2)
    again, held_again = heldout_split(docs.shuffle(seed=3), fraction=0.2)
    assert len(train) + len(held) == 60 and 0 < len(held) < 30
    assert set(held["text"]) == set(held_again["text"]) and not set(held["text"]) & set(train["text"])


# ---------------------------------------------------------------------------------------------- rlp-eval: model side
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tok


def test_reasoned_logps_match_a_teacher_forced_pass(tiny):
    """Each in-cache score is log p(x_t | prompt, thought, </think>) of the returned thought, as a separate pass."""
    model, tok = tiny
    open_id, close_id = tok.convert_tokens_to_ids(THINK_OPEN), tok.convert_tokens_to_ids(THINK_CLOSE)
    ids = [tok(t)["input_ids"] for t in tiny_corpus(3)]
    prompts, targets = [d[:10] + [open_id] for d in ids], [d[10:11] for d in ids]
    torch.manual_seed(0)
    scores, thoughts, truncated = reasoned_logps(
        model, prompts, targets, close_id=close_id, stop_ids={close_id, tok.eos_token_id}, num_thoughts=2,
        max_thought_tokens=5, temperature=0.7, pad_id=tok.pad_token_id, batch_size=2,
    )
    assert scores.shape == (3, 2) and len(thoughts) == 6 and len(truncated) == 6
    assert all(1 <= len(t) <= 5 and close_id not in t for t in thoughts)
    rows = [p + t + [close_id] + y for p, y, t in zip([p for p in prompts for _ in range(2)], [y for y in targets for _ in range(2)], thoughts)]
    seq, mask = pad_rows(rows, tok.pad_token_id, "cpu")
    expected = score_last_tokens(model, seq, mask, 1, 8)[:, 0].view(3, 2)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_rlp_eval_cli_writes_json_and_plot(tiny_model_dir, tmp_path):
    from rlp_trl.tools.eval import format_table, main

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(6)))
    out = tmp_path / "eval"
    report = main([
        "--model_name_or_path", tiny_model_dir, "--compare_to", tiny_model_dir, "--dataset_name", str(path),
        "--num_documents", "6", "--doc_nll_documents", "4", "--num_thoughts", "2", "--max_thought_tokens", "4", "--min_context_tokens", "4",
        "--output_dir", str(out),
    ])
    assert (out / "eval.png").stat().st_size > 1000
    saved = json.loads((out / "eval.json").read_text())
    assert len(saved["models"]) == 2 and len(saved["comparisons"]) == 1
    summary = saved["models"][next(iter(saved["models"]))]["summary"]
    assert summary["nll_nothink"]["n"] == 6 and summary["nll_nothink"]["mean"] > 0
    assert summary["doc_nll"]["n"] == 4 and summary["doc_token_ppl"]["mean"] > 1
    # same checkpoint twice, same seed: identical positions, thoughts and scores, so every paired difference is 0
    diff = next(iter(saved["comparisons"].values()))
    assert diff["info_gain"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert "no-think NLL" in format_table(report)


# ---------------------------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize(
    "text, expected",
    [
        (" 42\nQuestion: next", "42"),
        (" The answer is 7.", "7"),
        (" 5 - 3 - 6 = -4", "-4"),
        ("\n\n $3/2$ \n", "3/2"),
        ("so \\boxed{12} done", "12"),
        ("", ""),
    ],
)
def test_extract_answer(text, expected):
    assert benchmarks.extract_answer(text) == expected


def test_champ_score():
    assert benchmarks.champ_score("252", "C(10, 5), or equivalently 252") == 1.0
    assert benchmarks.champ_score("c(10,5)", "C(10, 5), or equivalently 252") == 1.0
    assert benchmarks.champ_score("1.5", "3/2") == 1.0
    assert benchmarks.champ_score("2**(n-1)", "2^(n-1)") == 1.0
    assert benchmarks.champ_score("no", "No") == 1.0
    assert benchmarks.champ_score("253", "C(10, 5), or equivalently 252") == 0.0
    assert benchmarks.champ_score("", "0") == 0.0


def test_offline_problems_are_seeded_and_gold_answers_score():
    for task in ("basic_arithmetic", "champ"):
        first = benchmarks.load_problems(task, 3, seed=1)
        again = benchmarks.load_problems(task, 3, seed=1)
        assert [p.question for p in first] == [p.question for p in again] and len(first) == 3
    arithmetic = benchmarks.load_problems("basic_arithmetic", 3, seed=1)
    assert all(p.score(p.answer) == 1.0 for p in arithmetic)
    assert all(p.score("not a number") == 0.0 for p in arithmetic)
    champ = [p for p in benchmarks.load_problems("champ", 20, seed=0) if "equivalently" not in p.answer]
    assert all(p.score(p.answer) == 1.0 for p in champ)


def test_benchmarks_run_both_modes_on_tiny_model(tiny):
    model, tok = tiny
    open_ids = [tok.convert_tokens_to_ids(THINK_OPEN)]
    close_id = tok.convert_tokens_to_ids(THINK_CLOSE)
    res = benchmarks.run_benchmarks(
        model, tok, open_ids, close_id, tasks=["chain_sum"], num_problems=2, max_thought_tokens=4,
        max_answer_tokens=4, batch_size=2,
    )
    for mode in ("direct", "think"):
        r = res["chain_sum"][mode]
        assert r["accuracy"]["n"] == 2 and 0.0 <= r["mean_score"] <= 1.0
        assert all(THINK_CLOSE not in e["answer"] for e in r["examples"])
    assert res["chain_sum"]["think"]["examples"][0]["thought"] != ""
    assert "chain_sum/think" in benchmarks.format_benchmarks({"tiny": res})


def test_lm_eval_bridge_command(capsys):
    cmd = benchmarks.lm_eval_command("outputs/rlp", list(benchmarks.PAPER_SUITE), backend="vllm", limit=10)
    assert cmd[1:4] == ["-m", "lm_eval", "run"]
    assert cmd[cmd.index("--model") + 1] == "vllm"
    assert cmd[cmd.index("--model_args") + 1] == "pretrained=outputs/rlp,dtype=bfloat16"
    assert cmd[cmd.index("--tasks") + 1] == "aime25,minerva_math500,gsm8k,mmlu,mmlu_pro,gpqa_diamond_zeroshot"
    assert cmd[cmd.index("--limit") + 1] == "10"
    assert benchmarks.main(["--model_name_or_path", "m", "--lm_eval", "paper", "--dry_run", "true"]) == 0
    assert "lm_eval run --model hf --model_args pretrained=m,dtype=bfloat16" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["rlp-bench", "rlp-cpt"])
def test_console_scripts_exit_zero(script, tiny_model_dir, tmp_path):
    """The installed entry points exit 0 on success (a `main` returning its report to `sys.exit` would exit 1)."""
    exe = os.path.join(os.path.dirname(sys.executable), script)
    if script == "rlp-bench":
        argv = [exe, "--model_name_or_path", tiny_model_dir, "--lm_eval", "gsm8k", "--dry_run", "true"]
    else:
        config = tmp_path / "rlp.yaml"
        config.write_text(f"model_name_or_path: {tiny_model_dir}\nper_device_train_batch_size: 8\nnum_generations: 4\n"
                          "max_steps: 2\nmax_completion_length: 8\nmax_context_tokens: 32\nmin_context_tokens: 4\n")
        corpus = tmp_path / "docs.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(10)))
        argv = [exe, "--rlp_config", str(config), "--dataset_name", str(corpus), "--dry_run", "true",
                "--output_dir", str(tmp_path / "cpt")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- CPT budget
def test_budget_reproduces_the_papers_6b_tokens():
    # Sec. 11: 170M input tokens, 200 steps x 512 contexts x 16 rollouts, thoughts of 2048 tokens -> "about 6B"
    b = cpt.RLPBudget(contexts_per_step=512, num_generations=16, steps=200, mean_context_tokens=1660, thought_tokens=2048)
    assert b.input_tokens == 512 * 200 * 1660 == 169_984_000
    assert b.seq_len == 3708
    assert b.rollout_tokens == 16 * 3708 * 512 * 200 == 6_075_187_200
    assert b.tokens("flops") == 6_245_171_200 and b.tokens("tokens") == b.input_tokens
    with pytest.raises(ValueError, match="match"):
        b.tokens("steps")


def test_budget_from_a_config(tmp_path):
    path = tmp_path / "rlp.yaml"
    path.write_text("per_device_train_batch_size: 8\nnum_generations: 4\nmax_steps: 10\nmax_completion_length: 32\n")
    values = cpt.rlp_config_values(str(path))
    assert values["gradient_accumulation_steps"] == 1 and values["max_context_tokens"] == 2048  # RLPConfig defaults
    assert cpt.contexts_per_step(values) == 2 and cpt.contexts_per_step(values, num_processes=4) == 8


def test_pack_documents():
    assert cpt.pack_documents([[1, 2, 3], [4, 5]], eos_id=0, block_size=3) == [[1, 2, 3], [0, 4, 5]]
    assert cpt.pack_documents([[1, 2, 3], [4, 5]], eos_id=None, block_size=2) == [[1, 2], [3, 4]]


def test_train_cpt_matches_the_rlp_budget(tiny_model_dir, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(20)))
    config = tmp_path / "rlp.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset_name: {corpus}\nper_device_train_batch_size: 8\n"
        "num_generations: 4\nmax_steps: 3\nmax_completion_length: 8\nmax_context_tokens: 32\nmin_context_tokens: 4\n"
        "learning_rate: 0.001\n"
    )
    out = tmp_path / "cpt"
    plan = cpt.main(["--rlp_config", str(config), "--match", "tokens", "--per_device_train_batch_size", "2",
                     "--output_dir", str(out)])
    rlp = plan["rlp"]
    assert rlp["contexts_per_step"] == 2 and rlp["steps"] == 3 and 4 <= rlp["mean_context_tokens"] <= 32
    assert plan["target_tokens"] == pytest.approx(2 * 3 * rlp["mean_context_tokens"])
    assert plan["steps"] == math.ceil(plan["target_tokens"] / (32 * 2)) and plan["trained_tokens"] >= plan["target_tokens"]
    assert plan["learning_rate"] == 0.001  # taken from the RLP config
    assert (out / "model.safetensors").exists() and json.loads((out / "cpt_budget.json").read_text())["match"] == "tokens"
    flops = cpt.main(["--rlp_config", str(config), "--match", "flops", "--output_dir", str(out), "--dry_run", "true"])
    assert flops["target_tokens"] == pytest.approx(rlp["input_tokens"] + 4 * (rlp["mean_context_tokens"] + 8) * 2 * 3)
    assert os.path.exists(out / "cpt_budget.json")
