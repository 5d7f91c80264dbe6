"""The trainer and the run (docs/reliability.md, "The trainer and the run"): what a plain `trainer.train()` keeps, what
`guard(trainer)` adds, and what only `rlp_trl.train(trainer, ...)` does."""

import os

import torch

import rlp_trl
import rlp_trl.trainer as trainer_module
from conftest import nan_first_reward, tiny_config
from rlp_trl import RLPTrainer, RunConfig
from rlp_trl.resilience import COMPLETE_MARKER, RESUME_STATE, guard


def test_plain_train_keeps_the_algorithm_only(tiny_model_dir, tmp_path, tiny_docs, monkeypatch):
    monkeypatch.setattr(trainer_module, "information_gain", nan_first_reward(trainer_module.information_gain))
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                         train_dataset=tiny_docs)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN group was excluded by the step itself
    logged = [h["rlp/nonfinite_rewards"] for h in trainer.state.log_history if "rlp/nonfinite_rewards" in h]
    assert logged == [1.0, 1.0]
    assert not any("rlp/runaway_flags" in h or "rlp/skipped_steps" in h for h in trainer.state.log_history)  # no guard
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, "rlp_teacher.safetensors"))  # the teacher is the algorithm's
    assert not os.path.exists(os.path.join(checkpoint, COMPLETE_MARKER))  # atomic checkpoints are the run's
    assert not os.path.exists(os.path.join(checkpoint, RESUME_STATE.format(rank=0)))


def test_guard_makes_plain_train_checkpoints_atomic_once(tiny_model_dir, tmp_path, tiny_docs):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                         train_dataset=tiny_docs)
    run = guard(trainer, RunConfig(nonfinite_patience=3))
    assert guard(trainer) is run and run.nonfinite_guard.patience == 3  # one set of pieces per trainer
    assert guard(trainer, RunConfig(on_nonfinite="raise")).nonfinite_guard.mode == "raise"
    callbacks = trainer.callback_handler.callbacks
    assert sum(cb is run.nonfinite_guard for cb in callbacks) == 1 and sum(cb is run.graceful_stop for cb in callbacks) == 1
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER))
    assert os.path.isfile(os.path.join(checkpoint, RESUME_STATE.format(rank=0)))
    assert any("rlp/skipped_steps" in h for h in trainer.state.log_history)


def test_the_entry_point_returns_what_happened(tiny_model_dir, tmp_path, tiny_docs):
    args = tiny_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    result = rlp_trl.train(trainer)
    assert result.interrupted is None and result.finished_at is None and result.output.global_step == 2
    again = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=2), train_dataset=tiny_docs)
    result = rlp_trl.train(again, resume_from_checkpoint="auto")
    assert result.finished_at == 2 and again.state.global_step == 2  # nothing trained
    assert args.model_init_kwargs is None  # the one place args changes restores what it hid from TRL
