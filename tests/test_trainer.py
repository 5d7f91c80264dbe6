"""RLPTrainer end to end on the tiny model, through TRL's real GRPOTrainer machinery (generation, buffering,
optimizer, callbacks, checkpoints). Rewards, advantages, masks, gradients and the EMA teacher are checked against
independent recomputations with plain forward passes."""

import dataclasses
import math
import os

import pytest
import torch
from safetensors.torch import load_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import loss_with_logps_grad, tiny_config
from rlp_trl import RLPConfig, RLPTrainer, group_advantages
from rlp_trl.teacher import TEACHER_STATE, TEACHER_WEIGHTS
from tiny_model import THINK_CLOSE, THINK_OPEN

RLP_METRICS = [
    "rlp/info_gain_mean",
    "rlp/info_gain_std",
    "rlp/reasoned_logp_mean",
    "rlp/baseline_logp_mean",
    "rlp/positive_gain_frac",
    "rlp/thought_length_mean",
    "rlp/thought_length_max",
    "rlp/thought_truncated_frac",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
]


# ---------------------------------------------------------------------------------------------- helpers
def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _unwrap(trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


def capture(trainer) -> list[dict]:
    """Record every generation batch: the inputs, the output dict, the weights that produced it, the logged rewards."""
    records = []
    original = trainer._generate_and_score_completions
    cut, ends = trainer.thought_cutter, []

    class Recording:  # the trainer's ThoughtCutter, noting how each thought ended
        close_ids = cut.close_ids

        def __call__(self, sampled):
            thought, end = cut(sampled)
            ends.append(end)
            return thought, end

    trainer.thought_cutter = Recording()

    def wrapped(inputs):
        record = {
            "step": trainer.state.global_step,
            "teacher_initialized_before": trainer.teacher.initialized,
            "teacher_updates_before": trainer.teacher.num_updates,
            "teacher_before": _state(trainer.teacher.module) if trainer.teacher.initialized else None,
            "policy": _state(_unwrap(trainer)),
            "inputs": [dict(x) for x in inputs],
        }
        ends.clear()
        output = original(inputs)
        n = len(inputs)
        record["ends"] = list(ends)  # how each thought ended: "close" (sampled), "stop" (EOS), "limit"
        record["output"] = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in output.items()}
        record["teacher"] = _state(trainer.teacher.module)
        record["rewards"] = list(trainer._logs["rewards"]["info_gain"])[-n:]
        record["logged_advantages"] = list(trainer._logs["advantages"])[-n:]
        record["metrics"] = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
        records.append(record)
        return output

    trainer._generate_and_score_completions = wrapped
    return records


def rows_of(record, trainer):
    """Per rollout: prompt ids, thought, close id, targets, thought-mask and completion-mask, as plain lists."""
    out, horizon, close = record["output"], trainer.args.reward_horizon, trainer.think_close_id
    rows = []
    for i, x in enumerate(record["inputs"]):
        prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
        completion_mask = out["completion_mask"][i].tolist()
        length = sum(completion_mask)
        assert completion_mask == [1] * length + [0] * (len(completion_mask) - length)  # right-padded
        completion = out["completion_ids"][i][:length].tolist()
        thought, closing, target = completion[: -1 - horizon], completion[-1 - horizon], completion[-horizon:]
        rows.append(dict(
            prompt=prompt, thought=thought, close=closing, target=target, tool_mask=out["tool_mask"][i].tolist(),
            completion_mask=completion_mask, context=list(x["context_ids"]), target_ids=list(x["target_ids"]),
            input_prompt=list(x["prompt"]), end=record["ends"][i],
        ))
        assert closing == close
    return rows


def load_tiny(model_dir, state=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing)  # tied head
    return model.eval()


@torch.no_grad()
def logp_of_last(model, ids: list[int], k: int) -> torch.Tensor:
    """log p(ids[-k:] | prefix) with one plain full forward pass (no padding, no KV cache) and log_softmax."""
    logits = model(torch.tensor([ids])).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    n = len(ids)
    return torch.stack([logps[n - k - 1 + j, ids[n - k + j]] for j in range(k)])


@torch.no_grad()
def thought_logps(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log p of each completion token given everything before it, at the sampling temperature (as GRPO's
    per-token log-probs are), from one plain forward pass."""
    ids = prompt + completion
    logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float() / temperature, dim=-1)
    return torch.stack([logps[len(prompt) - 1 + j, completion[j]] for j in range(len(completion))])


def make_trainer(model_dir, tmp_path, docs, **overrides):
    return RLPTrainer(model_dir, args=tiny_config(tmp_path, **overrides), train_dataset=docs)


def force_mixed_thoughts(trainer, thought_len=2):
    """Wrap `sample_thoughts` so that even rollouts run to the length limit without closing (truncated) and odd
    rollouts close after `thought_len` tokens; everything downstream is the trainer's real code."""
    original = trainer.sample_thoughts
    stops = set(trainer.eos_token_ids)
    limit = trainer.args.max_completion_length
    filler = trainer.processing_class.encode(" the", add_special_tokens=False)[0]
    assert filler not in stops

    def wrapped(prompts, suffixes=None):
        rollouts = original(prompts, suffixes)
        forced = []
        for i, sampled in enumerate(rollouts.sampled_ids):
            sampled = [t for t in sampled if t not in stops]
            sampled = (sampled + [filler] * limit)[:limit]
            forced.append(sampled if i % 2 == 0 else sampled[:thought_len] + [trainer.think_close_id])
        # the in-cache S_pred was for the sampled thoughts: score the forced ones
        return dataclasses.replace(rollouts, sampled_ids=forced, suffix_logps=None)

    trainer.sample_thoughts = wrapped


# ---------------------------------------------------------------------------------------------- a shared 2-step run
@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from datasets import Dataset

    from tiny_model import tiny_corpus

    tmp = tmp_path_factory.mktemp("run")
    trainer = make_trainer(tiny_model_dir, tmp, Dataset.from_dict({"text": tiny_corpus(40)}), max_steps=2, ema_decay=0.9)
    initial = _state(trainer.model)
    records = capture(trainer)
    trainer.train()
    return dict(trainer=trainer, initial=initial, records=records)


def test_run_logs_finite_rlp_metrics(run):
    trainer = run["trainer"]
    history = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    assert trainer.state.global_step == 2 and [h["step"] for h in history] == [1, 2]
    limit = trainer.args.max_completion_length
    for h in history:
        for key in RLP_METRICS:
            assert key in h, key
            assert math.isfinite(h[key]), (key, h[key])
        assert 0.0 <= h["rlp/positive_gain_frac"] <= 1.0
        assert 0.0 <= h["rlp/thought_truncated_frac"] <= 1.0
        assert 1.0 <= h["rlp/thought_length_mean"] <= h["rlp/thought_length_max"] <= limit
        assert h["rlp/info_gain_std"] > 0  # the rollouts do not all get the same reward
        # H = 1: mean gain = mean S_pred - mean S_ema
        assert h["rlp/info_gain_mean"] == pytest.approx(h["rlp/reasoned_logp_mean"] - h["rlp/baseline_logp_mean"], abs=1e-4)
        assert h["rlp/reasoned_logp_mean"] < 0 and h["rlp/baseline_logp_mean"] < 0
    assert [h["rlp/teacher_updates"] for h in history] == [0.0, 1.0]


def test_run_metrics_match_the_batch(run):
    trainer = run["trainer"]
    for record in run["records"]:
        rows, m = rows_of(record, trainer), record["metrics"]
        lengths = [len(r["thought"]) for r in rows]
        assert m["rlp/thought_length_mean"] == pytest.approx(sum(lengths) / len(lengths))
        assert m["rlp/thought_length_max"] == max(lengths)
        rewards = torch.tensor(record["rewards"])
        assert m["rlp/info_gain_mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
        assert m["rlp/positive_gain_frac"] == pytest.approx((rewards > 0).float().mean().item())


def test_run_changes_trainable_parameters(run):
    final = _state(run["trainer"].model)
    assert final.keys() == run["initial"].keys()
    for name, before in run["initial"].items():
        assert (final[name] - before).abs().max() > 1e-5, f"{name} did not move"


def test_teacher_is_lazily_initialised_to_the_policy_at_the_first_batch(run):
    first = run["records"][0]
    assert not first["teacher_initialized_before"]
    assert first["teacher"].keys() == first["policy"].keys()
    for name, theta in first["policy"].items():
        assert first["teacher"][name].dtype == torch.float32
        assert torch.equal(first["teacher"][name], theta), name
    assert all(torch.equal(first["policy"][k], v) for k, v in run["initial"].items())


def test_teacher_is_ema_of_policy_after_each_step(run):
    """phi_k = phi_{k-1} + (1 - tau)(theta_k - phi_{k-1}) with theta_k the weights after optimizer step k."""
    trainer, (r1, r2) = run["trainer"], run["records"]
    tau = trainer.args.ema_decay
    phi0, theta1, phi1 = r1["teacher"], r2["policy"], r2["teacher"]
    theta2, phi2 = _state(trainer.model), _state(trainer.teacher.module)
    for name in phi0:
        torch.testing.assert_close(phi1[name], phi0[name] + (1 - tau) * (theta1[name] - phi0[name]), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(phi2[name], phi1[name] + (1 - tau) * (theta2[name] - phi1[name]), rtol=1e-5, atol=1e-7)
        assert not torch.equal(phi1[name], phi0[name]) and not torch.equal(phi1[name], theta1[name])
    assert trainer.teacher.num_updates == 2


def check_rewards_against_plain_recomputation(trainer, record, model_dir):
    """S_pred on context+<think>+thought+</think>+target under the policy, S_ema on context+target under the teacher,
    each from a plain full forward pass per rollout (weights as captured when the batch was scored); the in-trainer
    reward, advantage and logged means must match."""
    G, horizon, discount = trainer.args.num_generations, trainer.args.reward_horizon, trainer.args.reward_discount
    policy, teacher = load_tiny(model_dir, record["policy"]), load_tiny(model_dir, record["teacher"])
    weights = discount ** torch.arange(horizon, dtype=torch.float32)
    rows = rows_of(record, trainer)
    reasoned, baseline = [], []
    for r in rows:
        assert r["prompt"] == r["input_prompt"] == r["context"] + trainer.think_open_ids
        assert r["target"] == r["target_ids"] and len(r["target"]) == horizon
        reasoned.append(logp_of_last(policy, r["prompt"] + r["thought"] + [r["close"]] + r["target"], horizon))
        baseline.append(logp_of_last(teacher, r["context"] + r["target"], horizon))
    reasoned, baseline = torch.stack(reasoned), torch.stack(baseline)
    expected = ((reasoned - baseline) * weights).sum(1)
    torch.testing.assert_close(torch.tensor(record["rewards"]), expected, atol=2e-4, rtol=1e-4)
    # groups of G rollouts share one context (RepeatSampler): advantages are eq. 7 within each group
    for g in range(0, len(rows), G):
        assert all(rows[g + j]["context"] == rows[g]["context"] for j in range(G))
    torch.testing.assert_close(record["output"]["advantages"], group_advantages(expected, G), atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(record["logged_advantages"]), record["output"]["advantages"])
    m = record["metrics"]
    assert m["rlp/reasoned_logp_mean"] == pytest.approx(reasoned.sum(1).mean().item(), abs=2e-4)
    assert m["rlp/baseline_logp_mean"] == pytest.approx(baseline.sum(1).mean().item(), abs=2e-4)


def test_rewards_equal_a_plain_recomputation_first_batch(run, tiny_model_dir):
    """Step 1: the teacher was just set to the policy (phi0 = theta0)."""
    check_rewards_against_plain_recomputation(run["trainer"], run["records"][0], tiny_model_dir)


def test_rewards_use_the_lagged_teacher_after_an_update(run, tiny_model_dir):
    """Step 2: the teacher is phi1 = phi0 + (1 - tau)(theta1 - phi0), no longer the policy, and S_ema must come from
    it. Regression: a deep copy of the policy kept TRL's instance-level fused-LM-head `forward`, whose closure calls
    the policy's forward, so the 'teacher' scored with the policy's weights (a baseline with no lag)."""
    record = run["records"][1]
    assert record["teacher_updates_before"] == 1
    assert not torch.equal(record["teacher"]["model.norm.weight"], record["policy"]["model.norm.weight"])
    check_rewards_against_plain_recomputation(run["trainer"], record, tiny_model_dir)


def test_teacher_forward_uses_the_teacher_weights(run, tiny_model_dir):
    trainer = run["trainer"]
    ids = torch.tensor([trainer.train_dataset[0]["prompt"]])
    reference = load_tiny(tiny_model_dir, _state(trainer.teacher.module))
    with torch.no_grad():
        got = trainer.teacher.module(input_ids=ids).logits
        want = reference(input_ids=ids).logits
        policy = _unwrap(trainer)(input_ids=ids).logits
    assert not torch.allclose(want, policy, atol=1e-5)  # precondition: the teacher lags the policy
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_thoughts_are_sampled_and_well_formed(run):
    trainer = run["trainer"]
    stops = set(trainer.eos_token_ids)
    assert trainer.think_close_id in stops
    lengths = set()
    for record in run["records"]:
        for r in rows_of(record, trainer):
            assert 1 <= len(r["thought"]) <= trainer.args.max_completion_length  # |c| >= 1 (Alg. 1 line 7)
            assert not stops & set(r["thought"])  # the thought ends at the first stop token
            lengths.add(tuple(r["thought"]))
    assert len(lengths) > 1  # sampled, not identical


def test_tool_mask_covers_exactly_the_action(run):
    trainer, horizon = run["trainer"], run["trainer"].args.reward_horizon
    for record in run["records"]:
        width = record["output"]["completion_ids"].size(1)
        for r in rows_of(record, trainer):
            n, close = len(r["thought"]), int(r["end"] == "close")
            # the thought and a sampled </think>; not a written </think>, not the target(s), not padding
            assert r["tool_mask"] == [1] * n + [close] + [0] * (width - n - 1)
            assert r["completion_mask"][: n + 1 + horizon] == [1] * (n + 1 + horizon)
        assert record["output"]["num_items_in_batch"].item() == record["output"]["tool_mask"].sum().item()


def test_only_thought_tokens_receive_gradient(run):
    trainer = run["trainer"]
    batch = dict(run["records"][-1]["output"])
    mask = (batch["completion_mask"] * batch["tool_mask"]).float()
    loss, grad, _ = loss_with_logps_grad(trainer, batch)
    assert torch.isfinite(loss)
    # on-policy (old = current): rho = 1, so d loss / d logp_u = -A / (|c| * N) on thought tokens, 0 elsewhere
    adv = batch["advantages"][:, None]
    expected = -adv * mask / (mask.sum(1, keepdim=True).clamp(min=1) * mask.size(0))
    torch.testing.assert_close(grad, expected / trainer.current_gradient_accumulation_steps, atol=1e-7, rtol=1e-5)
    assert torch.all(grad[mask == 0] == 0)
    assert (grad[mask == 1] != 0).any()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    trainer.model.zero_grad(set_to_none=True)


def test_model_card_mentions_rlp(run, tmp_path):
    trainer = run["trainer"]
    trainer.save_model(str(tmp_path / "final"))
    trainer.create_model_card(model_name="tiny-rlp")
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    assert "RLP" in card and "2510.01265" in card and "Reinforcement as a Pretraining Objective" in card
    assert os.path.isfile(tmp_path / "final" / "model.safetensors")


# ---------------------------------------------------------------------------------------------- exact EMA after one step
def test_teacher_after_exactly_one_optimizer_step(tiny_model_dir, tmp_path, tiny_docs):
    trainer = make_trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=1, ema_decay=0.9, learning_rate=1e-3)
    phi0 = _state(load_tiny(tiny_model_dir))
    trainer.train()
    theta1, phi1 = _state(trainer.model), _state(trainer.teacher.module)
    assert trainer.teacher.num_updates == 1 and phi1.keys() == phi0.keys()
    moved = 0.0
    for name in phi0:
        expected = phi0[name] + 0.1 * (theta1[name] - phi0[name])
        torch.testing.assert_close(phi1[name], expected, rtol=1e-6, atol=1e-7)
        moved = max(moved, (phi1[name] - phi0[name]).abs().max().item())
    assert moved > 5e-5  # lr 1e-3 moves theta by ~1e-3, the teacher by ~1e-4


# ---------------------------------------------------------------------------------------------- truncated thoughts
@pytest.mark.parametrize("mode", ["close", "mask"])
def test_truncated_thoughts(tiny_model_dir, tmp_path, tiny_docs, mode):
    trainer = make_trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=1, truncated_thoughts=mode)
    force_mixed_thoughts(trainer, thought_len=2)
    records = capture(trainer)
    trainer.train()
    (record,) = records
    limit, width = trainer.args.max_completion_length, record["output"]["completion_ids"].size(1)
    for i, r in enumerate(rows_of(record, trainer)):
        if i % 2 == 0:  # hit the limit without </think>: closed and scored either way, in the loss only for "close"
            assert len(r["thought"]) == limit
            assert r["tool_mask"] == ([1] * limit if mode == "close" else [0] * limit) + [0] * (width - limit)
        else:
            assert len(r["thought"]) == 2 and r["tool_mask"] == [1, 1, 1] + [0] * (width - 3)  # + the sampled close
        assert math.isfinite(record["rewards"][i])
    m = record["metrics"]
    assert m["rlp/thought_truncated_frac"] == 0.5
    assert m["rlp/thought_length_max"] == limit and m["rlp/thought_length_mean"] == (limit + 2) / 2
    check_rewards_against_plain_recomputation(trainer, record, tiny_model_dir)  # scored on the forced thoughts
    _, grad, _ = loss_with_logps_grad(trainer, dict(record["output"]))
    assert (grad[1::2, :2] != 0).any()  # closed thoughts always train
    if mode == "mask":
        assert torch.all(grad[0::2] == 0)  # truncated thoughts get zero loss weight
    else:
        assert (grad[0::2, :limit] != 0).any()
    trainer.model.zero_grad(set_to_none=True)


def test_min_thought_tokens_is_enforced_in_generation(tiny_model_dir, tmp_path, tiny_docs):
    """Make </think> overwhelmingly likely: every thought must still have exactly min_thought_tokens tokens."""
    trainer = make_trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=1, min_thought_tokens=3)
    trainer.generation_config.sequence_bias = {(trainer.think_close_id,): 60.0}
    records = capture(trainer)
    trainer.train()
    rows = rows_of(records[0], trainer)
    assert [len(r["thought"]) for r in rows] == [3] * len(rows)
    assert records[0]["metrics"]["rlp/thought_truncated_frac"] == 0.0


# ---------------------------------------------------------------------------------------------- horizon H = 2
def test_reward_horizon_two(tiny_model_dir, tmp_path, tiny_docs):
    trainer = make_trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=2, reward_horizon=2, reward_discount=0.5)
    assert all(len(t) == 2 for t in trainer.train_dataset["target_ids"])
    records = capture(trainer)
    trainer.train()
    assert trainer.state.global_step == 2 and len(records) == 2
    for record in records:
        width = record["output"]["completion_ids"].size(1)
        for r in rows_of(record, trainer):
            assert len(r["target"]) == 2 and r["target"] == r["target_ids"]
            n, close = len(r["thought"]), int(r["end"] == "close")
            assert r["tool_mask"] == [1] * n + [close] + [0] * (width - n - 1)  # both targets excluded
    # discounted 2-token gains (teacher = policy at step 1, so this is independent of the teacher-forward bug)
    check_rewards_against_plain_recomputation(trainer, records[0], tiny_model_dir)
    for h in trainer.state.log_history[:-1]:
        assert all(math.isfinite(h[k]) for k in RLP_METRICS)


def test_rewards_without_prefix_sharing(tiny_model_dir, tmp_path, tiny_docs):
    """TRL's own `generate` path plus a separate S_pred forward: same reward definition as the in-cache scoring."""
    if "prefix_sharing" not in RLPConfig.__dataclass_fields__:
        pytest.skip("this RLPConfig has no prefix_sharing option (only one generation path)")
    trainer = make_trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=1, prefix_sharing=False)
    records = capture(trainer)
    trainer.train()
    check_rewards_against_plain_recomputation(trainer, records[0], tiny_model_dir)


# ---------------------------------------------------------------------------------------------- behaviour snapshot
def test_old_logps_are_the_behaviour_policy(tiny_model_dir, tmp_path, tiny_docs):
    """steps_per_generation=2: one generation batch serves two optimizer steps, so theta_old is stored; it must be
    the policy's log-probs of the thought tokens at generation time."""
    trainer = make_trainer(
        tiny_model_dir, tmp_path, tiny_docs, max_steps=2, steps_per_generation=2, per_device_train_batch_size=4
    )
    records = capture(trainer)
    trainer.train()
    assert trainer.state.global_step == 2 and len(records) == 1  # generated once for both steps
    record = records[0]
    old = record["output"]["old_per_token_logps"]
    assert old.shape == record["output"]["completion_ids"].shape
    policy = load_tiny(tiny_model_dir, record["policy"])
    for i, r in enumerate(rows_of(record, trainer)):
        n = len(r["thought"])
        expected = thought_logps(policy, r["prompt"], r["thought"] + [r["close"]] + r["target"], trainer.temperature)
        torch.testing.assert_close(old[i, : n + 2], expected, atol=2e-4, rtol=1e-4)
    history = [h for h in trainer.state.log_history if "clip_ratio/region_mean" in h]
    assert len(history) == 2 and all(math.isfinite(h["clip_ratio/region_mean"]) for h in history)


# ---------------------------------------------------------------------------------------------- checkpoints and resume
def _saved_teacher(model_dir, checkpoint):
    """Teacher weights from a checkpoint, by parameter name (tied duplicates are stored once by safetensors)."""
    model = load_tiny(model_dir)
    load_model(model, os.path.join(checkpoint, TEACHER_WEIGHTS))
    return _state(model)


def test_checkpoint_and_resume_restore_teacher_and_step(tiny_model_dir, tmp_path, tiny_docs):
    first = make_trainer(
        tiny_model_dir, tmp_path / "a", tiny_docs, max_steps=2, save_strategy="steps", save_steps=1, ema_decay=0.9
    )
    first_records = capture(first)
    first.train()
    out = first.args.output_dir
    ckpt1, ckpt2 = os.path.join(out, "checkpoint-1"), os.path.join(out, "checkpoint-2")
    for ckpt in (ckpt1, ckpt2):
        assert os.path.isfile(os.path.join(ckpt, TEACHER_WEIGHTS)) and os.path.isfile(os.path.join(ckpt, TEACHER_STATE))
        assert os.path.isfile(os.path.join(ckpt, "trainer_state.json"))
    card = open(os.path.join(out, "README.md")).read()
    assert "RLP" in card and "2510.01265" in card

    # the saved teacher is the in-memory teacher after step 1 (what scored step 2), in float32
    saved1 = _saved_teacher(tiny_model_dir, ckpt1)
    phi1 = first_records[1]["teacher"]
    assert saved1.keys() == phi1.keys()
    for name, value in phi1.items():
        assert saved1[name].dtype == torch.float32 and torch.equal(saved1[name], value), name
    saved2 = _saved_teacher(tiny_model_dir, ckpt2)
    assert all(torch.equal(saved2[k], v) for k, v in _state(first.teacher.module).items())
    assert not torch.equal(saved1["model.norm.weight"], saved2["model.norm.weight"])

    second = make_trainer(
        tiny_model_dir, tmp_path / "b", tiny_docs, max_steps=2, save_strategy="no", ema_decay=0.9
    )
    second_records = capture(second)
    second.train(resume_from_checkpoint=ckpt1)
    resumed = second_records[0]
    assert resumed["step"] == 1  # the global step was restored
    assert resumed["teacher_initialized_before"] and resumed["teacher_updates_before"] == 1
    assert resumed["teacher_before"].keys() == phi1.keys()
    for name, value in phi1.items():  # bit for bit, not re-initialised from the policy
        assert torch.equal(resumed["teacher_before"][name], value), name
    theta1 = first_records[1]["policy"]
    assert all(torch.equal(resumed["policy"][k], v) for k, v in theta1.items())
    assert second.state.global_step == 2 and second.teacher.num_updates == 2
    assert len(second_records) == 1  # only step 2 ran


# ---------------------------------------------------------------------------------------------- markers
def test_missing_markers_are_added_and_embeddings_resized(tiny_model_dir, tmp_path, tiny_docs):
    trainer = make_trainer(
        tiny_model_dir, tmp_path, tiny_docs, max_steps=1, think_open="<reason>", think_close="</reason>"
    )
    tok = trainer.processing_class
    assert len(tok.encode("<reason>", add_special_tokens=False)) == 1
    assert trainer.think_open_ids == tok.encode("<reason>", add_special_tokens=False)
    assert trainer.think_close_id == tok.convert_tokens_to_ids("</reason>")
    assert _unwrap(trainer).get_input_embeddings().weight.shape[0] >= len(tok)
    assert all(p[-1:] == trainer.think_open_ids for p in trainer.train_dataset["prompt"])
    trainer.train()
    assert trainer.teacher.module.get_input_embeddings().weight.shape[0] >= len(tok)


def test_missing_markers_without_add_think_tokens_raise(tiny_model_dir, tmp_path, tiny_docs):
    with pytest.raises(ValueError, match="not single tokens"):
        make_trainer(tiny_model_dir, tmp_path, tiny_docs, think_open="<reason>", think_close="</reason>",
                     add_think_tokens=False)


def test_tiny_markers_are_native_single_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok.encode(THINK_OPEN, add_special_tokens=False)) == 1
    assert len(tok.encode(THINK_CLOSE, add_special_tokens=False)) == 1


def test_trainer_requires_rlp_config(tiny_model_dir, tmp_path):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="RLPConfig"):
        RLPTrainer(tiny_model_dir, args=GRPOConfig(str(tmp_path), use_cpu=True, report_to=[]))


# ---------------------------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(ema_decay=1.5), "ema_decay"),
        (dict(ema_decay=0.0), "ema_decay"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon_high=-0.1), "epsilon_high"),
        (dict(max_completion_length=-1), "max_completion_length"),
        (dict(max_context_tokens=-5), "max_context_tokens"),
        (dict(min_context_tokens=-1), "min_context_tokens"),
        (dict(min_context_tokens=100, max_context_tokens=64), "min_context_tokens"),
        (dict(reward_horizon=0), "reward_horizon"),
        (dict(reward_horizon=-2), "reward_horizon"),
        (dict(positions_per_document=-1), "positions_per_document"),
        (dict(min_thought_tokens=0), "min_thought_tokens"),
        (dict(min_thought_tokens=9, max_completion_length=8), "min_thought_tokens"),
        (dict(position_strategy="entropy"), "position_strategy"),
        (dict(truncated_thoughts="drop"), "truncated_thoughts"),
        (dict(teacher_dtype="bf16"), "teacher_dtype"),
        (dict(reward_discount=0.0), "reward_discount"),
        (dict(reward_discount=1.5), "reward_discount"),
        (dict(think_open="</think>"), "think_open"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(tmp_path, **overrides)


def test_config_paper_defaults(tmp_path):
    args = RLPConfig(str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=16)
    assert args.num_generations == 16 and args.temperature == 0.7 and args.learning_rate == 1e-6
    assert args.lr_scheduler_type == "constant" and args.beta == 0.0 and args.ema_decay == 0.999
    assert args.max_completion_length == 2048 and args.loss_type == "grpo" and args.scale_rewards == "none"
    assert args.reward_horizon == 1 and args.teacher_dtype == "float32" and args.truncated_thoughts == "close"
    assert args.min_thought_tokens == 1 and args.position_strategy == "random"


def test_config_defaults_are_valid_on_one_process(tmp_path):
    args = RLPConfig(str(tmp_path), use_cpu=True, report_to=[])
    assert args.generation_batch_size % args.num_generations == 0


def test_trainer_without_args_builds_a_default_config(tiny_model_dir, tiny_docs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the paper's defaults need 2048 context + 2048 thought tokens; the tiny (rotary) model declares a 1024 window
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.max_position_embeddings = 4200
    trainer = RLPTrainer(model, train_dataset=tiny_docs)
    assert isinstance(trainer.args, RLPConfig) and trainer.args.output_dir.endswith("-RLP")
    assert trainer.args.max_context_tokens == 2048 and trainer.args.max_completion_length == 2048


def test_default_settings_on_a_too_small_window_fail_at_construction_naming_values_that_fit(
    tiny_model_dir, tiny_docs, tmp_path, monkeypatch
):
    from rlp_trl.usage import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="more than the model's context window.*Values that fit"):
        RLPTrainer(tiny_model_dir, train_dataset=tiny_docs)  # a 2048-token thought alone exceeds the 1024 window
