"""The fast paths of issue 4 compute the same thing as the straightforward ones (tiny model, float tolerance).

* prefix-shared sampling (`rlp_trl.fast.generation`) draws the same tokens as `model.generate` on the same rows, with
  greedy decoding and with a fixed seed, including early stops, `min_new_tokens` and left padding;
* the in-cache suffix scores equal a separate forward over prompt + thought + suffix;
* `score_sequence_ends` (one teacher pass per distinct context, prefixes folded in) equals one forward per row;
* RLPTrainer's rewards with `prefix_sharing=True` equal a per-rollout recomputation, and equal the rewards of
  `prefix_sharing=False` (TRL's `generate` + a separate S_pred pass) under the same seed;
* the loss pass with one forward per distinct prompt gives TRL's log-probs, entropies and gradients.
"""

import pytest
import torch
from conftest import tiny_config
from datasets import Dataset
from tiny_model import THINK_CLOSE
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rlp_trl import RLPTrainer
from rlp_trl.fast.generation import prefix_shared_sample, uses_prefix_sharing
from rlp_trl.fast.scoring import pad_rows, plan_prefix_passes, score_last_tokens, score_sequence_ends
from rlp_trl.fast.shared_prefix import shared_prefix_logps

G = 4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tokenizer, tokenizer.convert_tokens_to_ids(THINK_CLOSE)


def _prompts():
    """Three contexts of two lengths (left padding), each repeated G times as in a GRPO batch."""
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (7, 12, 12)]
    return [c for c in contexts for _ in range(G)]


def _first_stop(row, stops):
    return row[: next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("early_stops", [False, True])
def test_prefix_shared_sampling_matches_generate(tiny, do_sample, early_stops):
    model, tokenizer, close = tiny
    prompts = _prompts()
    kwargs = dict(
        max_new_tokens=10, do_sample=do_sample, temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.1,
        min_new_tokens=2, pad_token_id=tokenizer.pad_token_id,
    )
    ids, mask = pad_rows(prompts, tokenizer.pad_token_id, "cpu")
    stops = [tokenizer.eos_token_id, close]
    if early_stops:  # extra stop ids make rows stop at different steps
        if do_sample:
            stops += list(range(200))
        else:  # greedy: stop the first context's rows on a later token of theirs that no other row emits
            free = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(**kwargs))
            first, others = free[0, ids.size(1) :].tolist(), set(free[G:, ids.size(1) :].flatten().tolist())
            stops += [next(t for t in first[2:] if t not in first[:2] and t not in others)]
    config = GenerationConfig(**kwargs, eos_token_id=stops)
    torch.manual_seed(3)
    shared = prefix_shared_sample(model, prompts, config)
    torch.manual_seed(3)
    reference = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.size(1) :]
    reference = [_first_stop(row, set(stops)) for row in reference.tolist()]
    assert shared.completion_ids == reference
    if early_stops:
        assert len({len(c) for c in reference}) > 1  # the case with rows stopping at different steps is exercised
    assert shared.prefill_tokens == 3 * ids.size(1)  # one prefill per distinct context, not per row


@pytest.mark.parametrize("horizon", [1, 3])
def test_in_cache_suffix_scores_equal_separate_pass(tiny, horizon):
    model, tokenizer, close = tiny
    prompts = _prompts()
    stops = {tokenizer.eos_token_id, close, *range(100)}
    config = GenerationConfig(
        max_new_tokens=10, do_sample=True, temperature=0.7, eos_token_id=sorted(stops),
        pad_token_id=tokenizer.pad_token_id,
    )
    targets = [[11 + i, 40 + i, 70][:horizon] for i in range(len(prompts))]
    torch.manual_seed(1)
    shared = prefix_shared_sample(model, prompts, config, suffixes=[[close] + y for y in targets])
    thoughts = [c[:-1] if c and c[-1] in stops else c for c in shared.completion_ids]
    assert any(len(t) == 10 for t in thoughts) and any(len(t) < 10 for t in thoughts)  # truncated and stopped rows
    sequences = [p + t + [close] + y for p, t, y in zip(prompts, thoughts, targets)]
    ids, mask = pad_rows(sequences, tokenizer.pad_token_id, "cpu")
    reference = score_last_tokens(model, ids, mask, horizon + 1, batch_size=5)
    torch.testing.assert_close(shared.suffix_logps, reference, rtol=0, atol=1e-5)


def test_prefix_plan_and_teacher_scores_match_per_row_forwards(tiny):
    model, tokenizer, _ = tiny
    doc = torch.randint(5, 1000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    other = torch.randint(5, 1000, (25,), generator=torch.Generator().manual_seed(2)).tolist()
    # positions 12 and 30 of one document (the first is a prefix of the second), a duplicate, another document
    sequences = [doc[:13], doc[:31], doc[:31], other, doc[:13], doc[5:20]]
    unique = list(dict.fromkeys(map(tuple, sequences)))
    plan = plan_prefix_passes(unique)
    assert plan[unique.index(tuple(doc[:13]))] == unique.index(tuple(doc[:31]))  # scored inside the longer pass
    assert len(set(plan)) == 3
    for horizon in (1, 2):
        fast = score_sequence_ends(model, sequences, horizon, batch_size=2, pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            slow = torch.stack([
                torch.log_softmax(model(torch.tensor([s])).logits[0, -horizon - 1 : -1], -1)
                .gather(-1, torch.tensor(s[-horizon:])[:, None]).squeeze(-1)
                for s in sequences
            ])
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def _rollout(tiny_model_dir, tiny_docs, tmp_path, prefix_sharing):
    args = tiny_config(tmp_path, prefix_sharing=prefix_sharing, num_generations=G, per_device_train_batch_size=2 * G)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    sample, seen = trainer.sample_thoughts, []
    trainer.sample_thoughts = lambda *a, **k: seen.append(sample(*a, **k)) or seen[-1]  # keep what the sampler returned
    torch.manual_seed(11)
    output = trainer._generate_and_score_completions(inputs)
    rewards = torch.tensor(list(trainer._logs["rewards"]["info_gain"])[-len(inputs):])
    return trainer, inputs, output, rewards, seen[-1]


def test_trainer_rewards_equal_straightforward_computation(tiny_model_dir, tiny_docs, tmp_path):
    trainer, inputs, output, rewards, rollouts = _rollout(tiny_model_dir, tiny_docs, tmp_path / "fast", prefix_sharing=True)
    assert rollouts.suffix_logps is not None and rollouts.prefill_tokens is not None  # the fast path ran
    policy = trainer.accelerator.unwrap_model(trainer.model)
    horizon = trainer.args.reward_horizon
    expected = []
    with torch.no_grad(), trainer.teacher.scoring(policy) as teacher:
        for i, x in enumerate(inputs):
            # S_pred: one forward of this rollout alone (prompt + thought + </think> + x_t), full logits, temperature 1
            completion = output["completion_ids"][i][output["completion_mask"][i].bool()].tolist()
            seq = torch.tensor([list(x["prompt"]) + completion])
            s_pred = torch.log_softmax(policy(seq).logits[0, -horizon - 1 : -1], -1)[0, seq[0, -1]]
            # S_ema: one teacher forward of this rollout's context + x_t
            ctx = torch.tensor([list(x["context_ids"]) + list(x["target_ids"])])
            s_ema = torch.log_softmax(teacher(input_ids=ctx).logits[0, -horizon - 1 : -1], -1)[0, ctx[0, -1]]
            expected.append((s_pred - s_ema).item())
    torch.testing.assert_close(rewards, torch.tensor(expected), rtol=0, atol=1e-5)

    # same seed, TRL's default generation + a separate S_pred pass: same thoughts, same rewards
    slow, _, slow_output, slow_rewards, slow_rollouts = _rollout(tiny_model_dir, tiny_docs, tmp_path / "slow", prefix_sharing=False)
    assert slow_rollouts.suffix_logps is None and slow_rollouts.prefill_tokens is None  # TRL's generate path
    torch.testing.assert_close(slow_output["completion_ids"], output["completion_ids"], rtol=0, atol=0)
    torch.testing.assert_close(slow_rewards, rewards, rtol=0, atol=1e-5)
    torch.testing.assert_close(slow_output["advantages"], output["advantages"], rtol=0, atol=1e-5)
    # the prefix-shared sampler bypasses TRL's _generate: it logs TRL's completion metrics itself, with TRL's values
    logged = [k for k in slow._metrics["train"] if k.startswith("completions/") or k == "num_tokens"]
    assert len(logged) >= 8 and slow.state.num_input_tokens_seen == trainer.state.num_input_tokens_seen > 0
    assert {k: trainer._metrics["train"][k] for k in logged} == {k: slow._metrics["train"][k] for k in logged}


def test_prefix_sharing_falls_back_for_vllm_flag(tiny_model_dir, tmp_path):
    args = tiny_config(tmp_path)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_dict({"text": ["a b c " * 30]}))
    assert trainer.shares_sampling
    backend = dict(vllm=False, continuous_batching=False, zero_stage=None, ds3_gather_for_generation=True)
    assert uses_prefix_sharing(True, **backend)
    assert not uses_prefix_sharing(True, **{**backend, "vllm": True})  # vLLM keeps its own generation (and caching)
    assert not uses_prefix_sharing(True, **{**backend, "continuous_batching": True})
    assert not uses_prefix_sharing(True, **{**backend, "zero_stage": 3, "ds3_gather_for_generation": False})
    assert uses_prefix_sharing(True, **{**backend, "zero_stage": 3})  # gathered ZeRO-3 weights: generate as usual
    assert not uses_prefix_sharing(False, **backend)


def test_shared_prefix_loss_pass_equals_full_pass(tiny_model_dir, tiny_docs, tmp_path):
    """The loss pass with one forward per distinct prompt gives TRL's log-probs, entropies and gradients."""
    trainer, _, output, _, _ = _rollout(tiny_model_dir, tiny_docs, tmp_path, prefix_sharing=True)
    model = trainer.model
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    width = output["completion_ids"].size(1)
    unwrapped = trainer.accelerator.unwrap_model(model)
    assert shared_prefix_logps(model, unwrapped, ids, mask, width, False, trainer.accelerator.autocast) is not None
    results = []
    for share in (True, False):
        trainer.args.prefix_sharing = share
        model.zero_grad()
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, width, compute_entropy=True)
        (logps * output["completion_mask"]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropies.detach(), grads))
    (fast_logps, fast_ent, fast_grads), (logps, ent, grads) = results
    mask = output["completion_mask"].bool()
    torch.testing.assert_close(fast_logps[mask], logps[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_ent[mask], ent[mask], rtol=0, atol=1e-5)
    assert fast_grads.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6)
