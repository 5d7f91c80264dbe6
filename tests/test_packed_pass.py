"""The packed shared-prefix pass (`rlp_trl.fast.shared_prefix.packed_logps`) equals TRL's per-row pass.

Each distinct prompt runs once, followed in the same sequence by its rows' completions under a 4D mask; the
log-probs, entropies and parameter gradients must equal the plain per-row pass (`padded_logps`, TRL's pass with
position ids from the mask) to float tolerance: on the tiny Llama (rotary) and the tiny GPT-2 (absolute positions),
with left-padded prompts of different lengths, groups split unevenly (as TRL's shuffled micro-batches split them),
`sdpa` and `eager` attention, gradient checkpointing on and off, with LoRA, and with the likelihood terms' log-probs.
The trainer picks it where the KV-cache pass cannot run (gradient checkpointing here; DeepSpeed and FSDP alike).
"""

import contextlib

import pytest
import torch
from conftest import tiny_config
from tiny_model import build_tiny_gpt2

from rlp_trl import RLPTrainer
from rlp_trl.likelihood import LikelihoodRequest
from rlp_trl.fast.scoring import pad_rows
from rlp_trl.fast.shared_prefix import packable, packed_logps, padded_logps


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2_packed")))


def _batch(pad_id, vocab=200, horizon=1):
    """Three prompts (two lengths, left padding) with 4, 3 and 2 rows (uneven groups, interleaved), and completions
    of different lengths (right padding), as TRL lays them out."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (6, 11, 11)]
    order = [0, 1, 0, 2, 1, 0, 2, 1, 0]
    completions = [torch.randint(5, vocab, (3 + (i * 5) % 6,), generator=g).tolist() for i in range(len(order))]
    p_ids, p_mask = pad_rows([prompts[k] for k in order], pad_id, "cpu", "left")
    c_ids, c_mask = pad_rows(completions, pad_id, "cpu", "right")
    return torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_ids.size(1)


def _run(pass_fn, model, ids, mask, width, request):
    model.zero_grad(set_to_none=True)
    logps, entropy, extra = pass_fn(model, model, ids, mask, width, True, contextlib.nullcontext, request=request)
    loss = (logps * mask[:, -width:]).sum() + (entropy * mask[:, -width:]).sum() * 0.1
    if extra is not None:
        loss = loss + extra.reader.sum() + extra.nothink.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropy.detach(), extra, grads


def _load(path, attn, checkpointing, lora):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@pytest.mark.parametrize(
    "arch,attn,checkpointing,lora",
    [("llama", "sdpa", False, False), ("llama", "eager", True, False), ("llama", "sdpa", True, True),
     ("gpt2", "sdpa", False, False), ("gpt2", "eager", True, False)],
    ids=["llama-sdpa", "llama-eager-gc", "llama-lora-gc", "gpt2-sdpa", "gpt2-eager-gc"],
)
def test_packed_pass_equals_the_per_row_pass(tiny_model_dir, gpt2_dir, arch, attn, checkpointing, lora):
    model = _load(tiny_model_dir if arch == "llama" else gpt2_dir, attn, checkpointing, lora)
    ids, mask, width = _batch(pad_id=0)
    request = LikelihoodRequest(horizon=2, open_len=1, nothink=True)
    fast, fast_ent, fast_extra, fast_grads = _run(packed_logps, model, ids, mask, width, request)
    slow, slow_ent, slow_extra, slow_grads = _run(padded_logps, model, ids, mask, width, request)
    real = mask[:, -width:].bool()
    torch.testing.assert_close(fast[real], slow[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_ent[real], slow_ent[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_extra.reader, slow_extra.reader, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_extra.nothink, slow_extra.nothink, rtol=0, atol=1e-5)
    assert slow_grads and fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-5)


def test_packed_pass_declines_without_a_repeated_prompt(tiny_model_dir):
    model = _load(tiny_model_dir, "sdpa", False, False)
    ids, mask, width = _batch(pad_id=0)
    first = torch.tensor([0, 1, 3])  # one row of each prompt
    assert packed_logps(model, model, ids[first], mask[first], width, False, contextlib.nullcontext) is None


def test_sliding_window_and_flash_attention_keep_the_per_row_pass(tiny_model_dir):
    model = _load(tiny_model_dir, "sdpa", False, False)
    assert packable(model)
    model.config.sliding_window = 16
    assert not packable(model)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"
    assert not packable(model)


def test_trainer_packs_under_gradient_checkpointing_and_trains(tiny_model_dir, tmp_path, tiny_docs):
    """With gradient checkpointing the KV-cache pass cannot run; the trainer packs instead, and its loss pass
    equals the plain one."""
    args = tiny_config(tmp_path, gradient_checkpointing=True, max_steps=1, reader_nll_coef=1.0, nothink_nll_coef=1.0)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    assert trainer._loss_pass_sharing(trainer.model) == "packed"
    trainer.train()
    assert trainer.state.global_step == 1
    args.prefix_sharing = False
    assert trainer._loss_pass_sharing(trainer.model) is None


def test_rows_per_packed_sequence_follow_the_flop_estimate():
    """Dense-mask attention grows with the square of the packed length: a short prompt behind long completions keeps
    the per-row pass (k = 1), the paper's shapes pack a few rows per sequence, short thoughts pack the whole group."""
    from transformers import LlamaConfig

    from rlp_trl.fast.shared_prefix import segments_per_sequence

    qwen = LlamaConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128)  # Qwen3-1.7B's shape
    smol = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3)  # SmolLM2-135M's shape
    assert segments_per_sequence(smol, 513, 66, 8) == 8  # the CPU headline shape: one sequence per group
    assert segments_per_sequence(qwen, 2049, 67, 16) == 16
    assert 1 < segments_per_sequence(qwen, 2049, 2051, 16) < 16  # the paper's 2048-token thoughts: a few per sequence
    assert segments_per_sequence(smol, 129, 514, 4) == 1  # packing would cost more than the per-row pass


def test_chunked_packing_equals_the_per_row_pass(tiny_model_dir, monkeypatch):
    """With fewer rows per sequence than the group (two sequences for one prompt), values and gradients still
    equal the per-row pass."""
    import rlp_trl.fast.shared_prefix as shared_prefix

    monkeypatch.setattr(shared_prefix, "segments_per_sequence", lambda config, p, w, group: 2)
    model = _load(tiny_model_dir, "sdpa", False, False)
    ids, mask, width = _batch(pad_id=0)
    request = LikelihoodRequest(horizon=1, open_len=1, nothink=True)
    fast, fast_ent, fast_extra, fast_grads = _run(shared_prefix.packed_logps, model, ids, mask, width, request)
    slow, slow_ent, slow_extra, slow_grads = _run(padded_logps, model, ids, mask, width, request)
    real = mask[:, -width:].bool()
    torch.testing.assert_close(fast[real], slow[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_extra.nothink, slow_extra.nothink, rtol=0, atol=1e-5)
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-5)


def test_s_pred_without_the_sampler_cache_is_packed_and_equals_the_per_row_scores(tiny_model_dir, tmp_path, tiny_docs):
    """Text markers (and vLLM) leave S_pred to a forward pass: with prefix sharing it is one packed forward per
    distinct prompt, equal to scoring every row's prompt + completion on its own."""
    from rlp_trl.fast.shared_prefix import completion_scores

    args = tiny_config(tmp_path, think_open="<reason>", think_close="</reason>", think_markers_as_text=True,
                       reward_horizon=2)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    inputs = next(iter(trainer.get_train_dataloader()))
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(inputs)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    model, width = trainer.accelerator.unwrap_model(trainer.model), batch["completion_ids"].size(1)
    packed = completion_scores(model, ids, mask, width, 2, 64, share=True, pad_id=0)
    per_row = completion_scores(model, ids, mask, width, 2, 64, share=False, pad_id=0)
    assert packed.shape == per_row.shape == (ids.size(0), 2)
    torch.testing.assert_close(packed, per_row, rtol=0, atol=1e-5)
    by_hand = []
    for row, m in zip(ids, mask):
        tokens = row[m.bool()][None]
        logps = torch.log_softmax(model(input_ids=tokens).logits[0, -3:-1].float(), -1)
        by_hand.append(logps.gather(-1, tokens[0, -2:, None]).squeeze(-1))
    torch.testing.assert_close(packed, torch.stack(by_hand), rtol=0, atol=1e-5)


def test_the_reference_model_pass_shares_its_prompts_too(tiny_model_dir, tmp_path, tiny_docs):
    """beta > 0 (the KL ablation): the reference model's log-probs come from the shared pass and equal TRL's."""
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, beta=0.04), train_dataset=tiny_docs)
    assert trainer.ref_model is not None and trainer._loss_pass_sharing(trainer.ref_model) == "cache"
    inputs = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(inputs)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].size(1)
    with torch.no_grad():
        shared = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, width)[0]
        trainer.args.prefix_sharing = False
        plain = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, width)[0]
    real = batch["completion_mask"].bool()
    torch.testing.assert_close(shared[real], plain[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch["ref_per_token_logps"][real], shared[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"], ids=["zero2", "zero3"])
def test_packed_pass_equals_the_per_row_pass_under_deepspeed(config, tiny_model_dir, tmp_path):
    """A real run under DeepSpeed (one CPU process, gradient checkpointing on): the trainer's shared pass is the packed
    one, and through the engine it gives the per-row pass's log-probs and entropies."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = tmp_path / "report.json"
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "-q", "--config_file",
           os.path.join(root, "examples", "accelerate_configs", config), "--num_processes", "1",
           "--mixed_precision", "no", "--main_process_port", "0", os.path.join(root, "tests", "packed_zero_worker.py")]
    env = {**os.environ, "RLP_REPORT": str(report), "RLP_OUTPUT": str(tmp_path / "out"), "RLP_TINY_MODEL": tiny_model_dir,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(report.read_text())
    assert result["mode"] == "packed" and result["trained_steps"] == 1
    assert result["zero_stage"] == int(config[len("deepspeed_zero")])
    assert result["logps"] < 1e-5 and result["entropies"] < 1e-5
