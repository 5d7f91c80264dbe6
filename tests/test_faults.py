"""Faults found by fault injection (issue 14), each reproduced on the tiny model: non-finite state that does not come
from gradients, a NaN teacher, all-excluded reward batches, two writers on one output_dir, a full disk during a save,
and a runaway (finite but absurd) run. Resume-side faults (content hashes, finished runs, mismatched data/settings)
are in tests/test_resume.py; bad rows in tests/test_data_files.py; launchers in tests/test_launch.py."""

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config
from transformers import TrainerCallback

import rlp_trl
import rlp_trl.lock
import rlp_trl.resilience as resilience
import rlp_trl.trainer as trainer_module
from rlp_trl import RLPTrainer, RunConfig
from rlp_trl.lock import LOCK_NAME, OutputDirLockedError
from rlp_trl.resilience import CheckpointSaveError, NonFiniteError, checkpoint_problem, guard


def _finite(module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


class _BeforeOptimizerStep(TrainerCallback):
    """Run `fn(trainer)` right before the optimizer step of step `step` (its gradients are computed and finite)."""

    def __init__(self, step, fn):
        self.step, self.fn, self.trainer = step, fn, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.fn(self.trainer)


class _AtStepEnd(TrainerCallback):
    """Run `fn(trainer)` at the end of optimizer step `step` (before that step's save)."""

    def __init__(self, step, fn):
        self.step, self.fn, self.trainer = step, fn, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.fn(self.trainer)


def _trainer(tiny_model_dir, tmp_path, docs, at=None, run_config=None, **overrides):
    callbacks = [at] if at is not None else None
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, **overrides), train_dataset=docs, callbacks=callbacks)
    if at is not None:
        at.trainer = trainer
    guard(trainer, run_config)  # the run's guarantees (rlp_trl.train uses these)
    return trainer


# ---------------------------------------------------------------------------------------------- fault 1
def _corrupt_optimizer_moments(trainer):
    """NaN first moments of the k_proj / v_proj weights: the next update is NaN although every gradient is finite."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    for name, param in model.named_parameters():
        if "k_proj" in name or "v_proj" in name:
            trainer.optimizer.state[param]["exp_avg"].fill_(float("nan"))


def test_nonfinite_policy_after_the_step_is_not_averaged_nor_saved(tiny_model_dir, tmp_path, tiny_docs):
    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, _BeforeOptimizerStep(2, _corrupt_optimizer_moments),
                       max_steps=4, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteError, match=r"step 2: after the optimizer step the policy holds non-finite weights.*k_proj"):
        rlp_trl.train(trainer)
    assert _finite(trainer.teacher.module) and trainer.teacher.num_updates == 1  # the NaN policy was not averaged in
    out = trainer.args.output_dir
    assert checkpoint_problem(os.path.join(out, "checkpoint-1")) is None
    assert not os.path.exists(os.path.join(out, "checkpoint-2"))  # not saved
    assert not any(n.startswith(resilience.STAGING_PREFIX) for n in os.listdir(out))


def test_checkpoint_is_marked_complete_only_with_finite_tensors(tiny_model_dir, tmp_path, tiny_docs):
    def poison_teacher(trainer):
        with torch.no_grad():
            next(trainer.teacher.module.parameters())[0, 0] = float("nan")

    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, _AtStepEnd(2, poison_teacher),
                       max_steps=3, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteError, match=r"not saving checkpoint-2: non-finite values .* in the EMA teacher \(model"):
        rlp_trl.train(trainer)
    out = trainer.args.output_dir
    assert checkpoint_problem(os.path.join(out, "checkpoint-1")) is None and not os.path.exists(os.path.join(out, "checkpoint-2"))


# ---------------------------------------------------------------------------------------------- fault 2
def test_nonfinite_teacher_stops_the_run(tiny_model_dir, tmp_path, tiny_docs):
    def poison_teacher(trainer):
        with torch.no_grad():
            for p in trainer.teacher.module.parameters():
                p.fill_(float("nan"))

    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, _AtStepEnd(1, poison_teacher), max_steps=30)
    with pytest.raises(NonFiniteError, match=r"step 2: the EMA teacher holds non-finite weights"):
        rlp_trl.train(trainer)
    assert trainer.state.global_step == 1


def test_reward_batches_all_excluded_in_a_row_stop_the_run(tiny_model_dir, tmp_path, tiny_docs, monkeypatch):
    real = trainer_module.information_gain
    monkeypatch.setattr(trainer_module, "information_gain", lambda r, b, d=1.0: real(r, b, d) * float("nan"))
    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=30, run_config=RunConfig(nonfinite_patience=3))
    with pytest.raises(NonFiniteError, match=r"step 3: every group of the last 3 reward batches in a row"):
        rlp_trl.train(trainer)
    assert trainer.state.global_step == 2 and _finite(trainer.teacher.module)  # the teacher is fine: the streak stops it


# ---------------------------------------------------------------------------------------------- fault 5
def test_one_writer_per_output_dir(tiny_model_dir, tmp_path, tiny_docs, caplog):
    out = tmp_path / "out"
    lock_py = rlp_trl.lock.__file__  # alone: no torch import, starts fast
    holder = subprocess.Popen(
        [sys.executable, "-c", "import importlib.util as u, time; s = u.spec_from_file_location('lock', "
         f"{lock_py!r}); m = u.module_from_spec(s); s.loader.exec_module(m); m.OutputDirLock({str(out)!r}).acquire(); "
         "print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, output_dir=str(out), max_steps=1)
        with pytest.raises(OutputDirLockedError, match=rf"in use by another run \(host \S+, pid {holder.pid}"):
            rlp_trl.train(trainer)
        assert trainer.state.global_step == 0
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, stale
        holder.wait()
    assert os.path.isfile(out / LOCK_NAME)
    rlp_trl.train(trainer)  # a dead holder on this host: taken over
    assert trainer.state.global_step == 1 and any("took over the lock" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(out / LOCK_NAME)  # released at the end


# ---------------------------------------------------------------------------------------------- fault 7 (I/O)
def test_disk_full_during_a_save_names_the_last_good_checkpoint(tiny_model_dir, tmp_path, tiny_docs):
    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=3, save_strategy="steps", save_steps=1)
    original = trainer._save_optimizer_and_scheduler

    def full_disk(output_dir):
        if trainer.state.global_step == 2:  # what torch.save reports on ENOSPC
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4310")
        return original(output_dir)

    trainer._save_optimizer_and_scheduler = full_disk
    with pytest.raises(CheckpointSaveError) as err:
        rlp_trl.train(trainer)
    message = str(err.value)
    assert "Saving checkpoint-2 failed" in message and "disk looks full" in message and " free of " in message
    assert os.path.join(trainer.args.output_dir, "checkpoint-1") in message  # the last good one
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-2"))


# ---------------------------------------------------------------------------------------------- fault 8
def test_runaway_learning_rate_is_flagged(tiny_model_dir, tmp_path, tiny_docs, monkeypatch, caplog):
    monkeypatch.setattr(resilience.nonfinite, "ZERO_GRAD_STEPS", 2)
    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, max_steps=5, learning_rate=1e3)
    rlp_trl.train(trainer)  # finite, so nothing stops it: flagged, not stopped
    totals = guard(trainer).nonfinite_guard.totals
    assert totals["runaway"] > 0 and totals["runaway_weights"] > 0, dict(totals)
    flags = [h["rlp/runaway_flags"] for h in trainer.state.log_history if "rlp/runaway_flags" in h]
    assert flags and flags[-1] > 0
    assert any("runaway run?" in r.getMessage() for r in caplog.records)


def test_runaway_gain_and_zero_gradients_are_flagged():
    from types import SimpleNamespace

    from rlp_trl.rewards import exclude_nonfinite_groups

    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(vocab_size=1024)
    accelerator = SimpleNamespace(unwrap_model=lambda m: m, num_processes=1, scaler=None)
    logged = []
    nonfinite_guard = resilience.NonFiniteGuard("skip", 20, accelerator=accelerator, output_dir="/nonexistent",
                                                gain_limit=resilience.runaway_gain_limit(model, 1), log=logged.append)
    state = SimpleNamespace(global_step=4)
    flags = []
    for rewards in ([0.5, -3.0, 1.0, 2.0], [33093.0, -3.0, 1.0, 2.0]):  # sane: |gain| << 10 log(1024) = 69; runaway
        flags.append(nonfinite_guard.on_rewards(None, state, None, found=exclude_nonfinite_groups(torch.tensor(rewards), 4)[1]))
        assert nonfinite_guard.totals["runaway"] == len(flags) - 1
    assert nonfinite_guard.totals["runaway_gain"] == 1 and [f["rlp/runaway_flags"] for f in flags] == [0.0, 1.0]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(resilience.ZERO_GRAD_STEPS):
        nonfinite_guard.on_pre_optimizer_step(None, state, None, model=model)
    assert nonfinite_guard.totals["runaway_zero_grad"] == 1 and logged[-1] == {"rlp/skipped_steps": 0.0}


def test_lock_is_refused_while_held_and_released(tmp_path):
    from rlp_trl.lock import OutputDirLock

    first = OutputDirLock(str(tmp_path)).acquire()
    assert os.path.isfile(tmp_path / LOCK_NAME)
    first.release()
    assert not os.path.exists(tmp_path / LOCK_NAME)
    # a holder on another host with a fresh heartbeat is refused; once its heartbeat is old, taken over
    (tmp_path / LOCK_NAME).write_text('{"host": "elsewhere", "pid": 1, "started": "x", "command": "rlp-train"}')
    with pytest.raises(OutputDirLockedError, match="host elsewhere, pid 1"):
        OutputDirLock(str(tmp_path)).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    lock = OutputDirLock(str(tmp_path)).acquire()
    assert "heartbeat" in lock.taken_over
    lock.release()
