"""The likelihood terms beside eq. 8 (`RLPConfig.reader_nll_coef`, `nothink_nll_coef`; rlp_trl/likelihood.py).

On one captured batch of the tiny model, the loss with the terms minus TRL's loss without them equals a hand
computation: each row's prompt + completion (and context alone) run through the plain model at temperature 1, the
true tokens' NLL weighted by `reward_discount**j`, averaged per thought, then over thoughts, divided by the
accumulation steps; the same holds for the parameter gradients. Single-token and text markers, horizon 1 and 2,
prefix sharing on and off (same gradients), sampling temperature 0.7 (so the terms' temperature-1 log-probs differ
from the loss pass's own).
"""

import pytest
import torch

from conftest import tiny_config
from rlp_trl import RLPTrainer

TEXT_MARKERS = dict(think_open="<reason>", think_close="</reason>", think_markers_as_text=True)


def _trainer(tmp_path, tiny_model_dir, tiny_docs, **overrides):
    args = tiny_config(tmp_path, **{"temperature": 0.7, "max_steps": 1, **overrides})
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop; every term divides by it
    return trainer


def _batch(trainer):
    inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    torch.manual_seed(3)
    return trainer._generate_and_score_completions(inputs)


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _rows(batch):
    """Per row: the unpadded prompt and completion token lists."""
    out = []
    for p, pm, c, cm in zip(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]):
        out.append((p[pm.bool()].tolist(), c[cm.bool()].tolist()))
    return out


def _hand_terms(model, batch, open_len, horizon, discount):
    """(reader NLL, no-think NLL), each the mean over rows of the discounted mean NLL of the last `horizon`
    completion tokens: after prompt + thought + close, and after the context alone (prompt minus the open marker)."""
    weights = discount ** torch.arange(horizon, dtype=torch.float32)
    reader, nothink = [], []
    for prompt, completion in _rows(batch):
        targets = completion[-horizon:]

        def nll(prefix):
            ids = torch.tensor([prefix + targets])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, -horizon - 1 : -1].float(), -1)
            token = logps.gather(-1, torch.tensor(targets)[:, None]).squeeze(-1)
            return -(token * weights).sum() / weights.sum()

        reader.append(nll(prompt + completion[:-horizon]))
        nothink.append(nll(prompt[:-open_len]))
    return torch.stack(reader).mean(), torch.stack(nothink).mean()


@pytest.mark.parametrize(
    "markers,horizon", [("single", 1), ("single", 2), ("text", 1)], ids=["single-H1", "single-H2", "text-H1"]
)
def test_terms_equal_a_hand_computation(tiny_model_dir, tmp_path, tiny_docs, markers, horizon):
    extra = TEXT_MARKERS if markers == "text" else {}
    trainer = _trainer(tmp_path, tiny_model_dir, tiny_docs, reward_horizon=horizon, reward_discount=0.5, **extra)
    batch = _batch(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    open_len = len(trainer.think_open_ids)
    assert (open_len > 1) == (markers == "text")

    trainer.args.reader_nll_coef = trainer.args.nothink_nll_coef = 0.0
    base_loss, base_grads = _loss_and_grads(trainer, batch)
    trainer.args.reader_nll_coef, trainer.args.nothink_nll_coef = 0.7, 0.3
    loss, grads = _loss_and_grads(trainer, batch)

    model.zero_grad(set_to_none=True)
    reader, nothink = _hand_terms(model, batch, open_len, horizon, 0.5)
    hand = (0.7 * reader + 0.3 * nothink) / 2
    hand.backward()
    torch.testing.assert_close(loss - base_loss, hand.detach(), rtol=1e-5, atol=1e-6)
    metrics = trainer._metrics["train"]
    assert metrics["rlp/reader_nll"][-1] == pytest.approx(reader.item(), rel=1e-5)
    assert metrics["rlp/nothink_nll"][-1] == pytest.approx(nothink.item(), rel=1e-5)
    assert reader.item() > 0 and nothink.item() > 0
    compared = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = grads[name] - base_grads.get(name, torch.zeros_like(grads[name]))
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
        compared += p.grad.abs().sum() > 0
    assert compared > 0


def test_the_reader_term_uses_temperature_one_not_the_sampling_temperature(tiny_model_dir, tmp_path, tiny_docs):
    """The loss pass's own log-probs of x_t are at the sampling temperature; the term must not use them."""
    trainer = _trainer(tmp_path, tiny_model_dir, tiny_docs, reader_nll_coef=1.0)
    batch = _batch(trainer)
    trainer.compute_loss(trainer.model, batch)
    reader = trainer._metrics["train"]["rlp/reader_nll"][-1]
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1), batch["completion_ids"].size(1),
        )
    last = batch["completion_mask"].sum(1) - 1
    tempered = -logps.gather(1, last[:, None]).mean().item()
    assert abs(reader - tempered) > 1e-3


def test_prefix_sharing_on_and_off_give_the_same_terms_and_gradients(tiny_model_dir, tmp_path, tiny_docs):
    trainer = _trainer(tmp_path, tiny_model_dir, tiny_docs, reader_nll_coef=1.0, nothink_nll_coef=1.0)
    batch = _batch(trainer)
    results = []
    for share in (True, False):
        trainer.args.prefix_sharing = share
        results.append(_loss_and_grads(trainer, batch) + (trainer._metrics["train"]["rlp/reader_nll"][-1],
                                                          trainer._metrics["train"]["rlp/nothink_nll"][-1]))
    (loss_on, grads_on, reader_on, nothink_on), (loss_off, grads_off, reader_off, nothink_off) = results
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    assert reader_on == pytest.approx(reader_off, rel=1e-5) and nothink_on == pytest.approx(nothink_off, rel=1e-5)
    assert grads_on.keys() == grads_off.keys()
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-6)


def test_training_with_the_terms_runs_and_logs_them(tiny_model_dir, tmp_path, tiny_docs):
    trainer = _trainer(tmp_path, tiny_model_dir, tiny_docs, reader_nll_coef=1.0, nothink_nll_coef=0.5, max_steps=2)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rlp/reader_nll" in h]
    assert len(logged) == 2 and all(h["rlp/reader_nll"] > 0 and h["rlp/nothink_nll"] > 0 for h in logged)


@pytest.mark.parametrize("name", ["reader_nll_coef", "nothink_nll_coef"])
def test_negative_coefficients_are_refused_with_one_line(tmp_path, name):
    from rlp_trl.usage import UsageError

    with pytest.raises(UsageError, match=f"{name} must be a finite number >= 0"):
        tiny_config(tmp_path, **{name: -0.1})


# ------------------------------------------------------------------ think_marker_lr_multiplier (rlp_trl/marker_lr.py)
def _one_step_embeddings(tmp_path, tiny_model_dir, tiny_docs, multiplier):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1, think_marker_lr_multiplier=multiplier),
                         train_dataset=tiny_docs)
    model = trainer.accelerator.unwrap_model(trainer.model)
    start = model.get_input_embeddings().weight.detach().clone()
    trainer.train()
    rows = [*trainer.think_open_ids, trainer.think_close_id]
    return start, model.get_input_embeddings().weight.detach().clone(), rows, model


def test_marker_rows_move_multiplier_times_as_far(tiny_model_dir, tmp_path, tiny_docs):
    start, plain, rows, _ = _one_step_embeddings(tmp_path / "a", tiny_model_dir, tiny_docs, 1.0)
    start_fast, fast, rows_fast, model = _one_step_embeddings(tmp_path / "b", tiny_model_dir, tiny_docs, 10.0)
    assert rows == rows_fast and torch.equal(start, start_fast)
    step, fast_step = plain - start, fast - start
    assert step[rows].abs().sum() > 0
    torch.testing.assert_close(fast_step[rows], 10.0 * step[rows], rtol=1e-4, atol=1e-7)
    others = torch.ones(step.size(0), dtype=torch.bool)
    others[rows] = False
    torch.testing.assert_close(fast_step[others], step[others], rtol=0, atol=0)
    if model.config.tie_word_embeddings:  # one tensor: the output rows are the same rows, scaled once
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_marker_multiplier_with_text_markers_is_refused_with_one_line(tiny_model_dir, tmp_path, tiny_docs):
    from rlp_trl.usage import UsageError

    with pytest.raises(UsageError, match="needs single-token markers"):
        RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, think_marker_lr_multiplier=100.0, **TEXT_MARKERS),
                   train_dataset=tiny_docs)


def test_marker_multiplier_under_lora_scales_only_trainable_rows(tiny_model_dir, tmp_path, tiny_docs):
    from peft import LoraConfig

    from rlp_trl.marker_lr import MarkerLRCallback

    def callback(trainer):
        return next(c for c in trainer.callback_handler.callbacks if isinstance(c, MarkerLRCallback))

    frozen = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path / "a", think_marker_lr_multiplier=100.0),
                        train_dataset=tiny_docs, peft_config=LoraConfig(r=4, target_modules="all-linear"))
    assert callback(frozen).params == []  # embeddings frozen: nothing to scale (a warning says how to train them)
    saved = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path / "b", think_marker_lr_multiplier=100.0),
                       train_dataset=tiny_docs,
                       peft_config=LoraConfig(r=4, target_modules="all-linear", modules_to_save=["embed_tokens"]))
    params = callback(saved).params
    assert len(params) == 1 and params[0].requires_grad
    saved.train()
