"""The entry point that composes the run's guarantees around an `RLPTrainer`: `train(trainer, ...)`.

`RLPTrainer` is the algorithm; a run also needs one writer per output folder, a verified checkpoint to resume from,
a no-op for a finished run, pre-flight checks, graceful SIGTERM / SIGINT, the non-finite and runaway guards and
atomic checkpoints. `guard(trainer, run_config)` builds those pieces once per trainer and registers the ones that are
callbacks; `train(trainer, ...)` (also `rlp_trl.train`, used by `rlp-train`) runs `trainer.train()` inside them.

What a plain `trainer.train()` keeps (docs/reliability.md has the table):
* without `guard`: the algorithm's own handling of a non-finite reward (its group gets zero advantages, counted in
  `rlp/nonfinite_rewards`: `rlp_trl.rewards.exclude_nonfinite_groups`) and the teacher saved with checkpoints;
* after `guard(trainer)`: also the non-finite / runaway guard, graceful signals (once installed), finite-state checks
  before every save, atomic checkpoints and exact resume state written with them;
* only through `train(trainer, ...)`: the output-folder lock, `resume_from_checkpoint` `True` / `"last"` / `"auto"`
  resolved to the newest verified checkpoint (and the refusal to resume onto other data or settings), finished runs
  as a no-op, pre-flight checks, exact resume of GRPO's micro-step and buffered rollouts, signal handlers installed
  for the length of the run, and a sampling failure on NaN/inf probabilities reported as a `NonFiniteError`.
"""

import weakref
from dataclasses import dataclass

from transformers.trainer_utils import TrainOutput

from .checkpoints import finished_at, load_finished
from .nonfinite import NonFiniteGuard, runaway_gain_limit, sampling_error, verify_state_finite
from .options import RunConfig
from .preflight import preflight
from .resume import ResumeState
from .signals import GracefulStop
from .staging import CheckpointStager, claimed_output_dir


@dataclass
class RunResult:
    """What `train` returns: Trainer's `TrainOutput`, the signal that stopped the run after a saved checkpoint (None
    when it ran to its end) and, when the checkpoint resumed from was already at `max_steps`, its step (nothing was
    trained)."""

    output: TrainOutput
    interrupted: str | None = None
    finished_at: int | None = None


class GuardedRun:
    """The run's guarantees for one trainer (built by `guard`): `nonfinite_guard`, `graceful_stop`,
    `checkpoint_stager`, `resume_state`, and `train`."""

    def __init__(self, trainer, config: RunConfig):
        self.trainer, self.config = trainer, config
        args, accelerator = trainer.args, trainer.accelerator
        metrics = trainer._metrics["train"]
        self.nonfinite_guard = NonFiniteGuard(
            config.on_nonfinite, config.nonfinite_patience, accelerator=accelerator,
            teacher=trainer.teacher if args.no_think_baseline == "ema" else None, output_dir=args.output_dir,
            gain_limit=runaway_gain_limit(accelerator.unwrap_model(trainer.model), args.reward_horizon),
            deepspeed=trainer.is_deepspeed_enabled,
            log=lambda values: [metrics[key].append(value) for key, value in values.items()],
        )
        self.graceful_stop = GracefulStop(accelerator)
        self.checkpoint_stager = CheckpointStager(args, accelerator)
        self.resume_state = ResumeState(args, accelerator, trainer.train_dataset, self.nonfinite_guard.totals,
                                        mismatch=config.resume_mismatch)
        trainer.add_callback(self.nonfinite_guard)
        trainer.add_callback(self.graceful_stop)
        self._make_checkpoints_atomic()

    def configure(self, config: RunConfig) -> None:
        """Apply other run options to the pieces already built."""
        self.config = config
        self.nonfinite_guard.mode, self.nonfinite_guard.patience = config.on_nonfinite, config.nonfinite_patience
        self.resume_state.mismatch = config.resume_mismatch

    def _make_checkpoints_atomic(self) -> None:
        """Every checkpoint the Trainer writes is checked finite first, written into a staging folder (with the exact
        resume state), marked complete and renamed into place (`CheckpointStager`). transformers has no hook before a
        checkpoint is written, so this wraps the two Trainer methods that write one, on this instance only: the one
        place where the run reaches into the trainer."""
        trainer, stager = self.trainer, self.checkpoint_stager
        save_checkpoint, output_dir = trainer._save_checkpoint, trainer._get_output_dir

        def atomic_save_checkpoint(model, trial):
            step = trainer.state.global_step
            verify_state_finite(trainer.accelerator, trainer.model, trainer.teacher, trainer.optimizer, step,
                                trainer.args.output_dir)
            with stager.stage(output_dir(trial), trainer.state) as checkpoint_dir:
                save_checkpoint(model, trial)
                # what the Trainer does not save: GRPO's micro-step and buffered rollouts, data and settings fingerprints
                self.resume_state.save(checkpoint_dir, step, trainer._step, trainer._buffered_inputs)

        def staged_output_dir(trial):
            # while a checkpoint is written, everything the Trainer, TRL and RLP save for it goes to the staging folder
            return stager.staging_dir if stager.staging_dir is not None else output_dir(trial)

        trainer._save_checkpoint, trainer._get_output_dir = atomic_save_checkpoint, staged_output_dir

    def train(self, resume_from_checkpoint=None, **train_kwargs) -> RunResult:
        """`trainer.train` with one writer per output folder, a verified checkpoint to resume from (`True` / `"last"`
        / `"auto"` / a path), pre-flight checks and graceful SIGTERM / SIGINT (docs/reliability.md)."""
        trainer, args, accelerator = self.trainer, self.trainer.args, self.trainer.accelerator
        with claimed_output_dir(accelerator, args.output_dir, resume_from_checkpoint) as checkpoint:
            done = finished_at(checkpoint, args) if checkpoint is not None else None
            if done is not None:  # the checkpoint is already at max_steps: nothing to train
                trainer.state = load_finished(checkpoint, done, accelerator)
                return RunResult(TrainOutput(trainer.state.global_step, 0.0, {}), finished_at=done)
            if checkpoint is not None:
                self._restore(checkpoint)
            contexts_per_batch = max(1, args.generation_batch_size // trainer.num_generations)
            largest_weight = preflight(accelerator.unwrap_model(trainer.model), args, len(trainer.think_open_ids),
                                       len(trainer.think_close_ids), trainer.train_dataset, contexts_per_batch)
            self.nonfinite_guard.initial_weight_max = largest_weight or None  # the runaway check's reference
            if self.config.handle_signals:
                self.graceful_stop.install()
            try:
                output = trainer.train(resume_from_checkpoint=checkpoint, **train_kwargs)
            except RuntimeError as err:
                nonfinite = sampling_error(err, trainer.state.global_step + 1)  # NaN/inf probabilities: say so
                if nonfinite is None:
                    raise
                raise nonfinite from err
            finally:
                self.graceful_stop.uninstall()
            return RunResult(output, self.graceful_stop.report(trainer.state.global_step, args.output_dir))

    def _restore(self, checkpoint: str) -> None:
        """GRPO's micro-step and the rollouts buffered mid-cycle (trl#3247: TRL does not save them), after refusing
        (or warning about) a resume onto other data or settings; the Trainer restores the rest in `train`."""
        restored = self.resume_state.load(checkpoint)
        if restored is not None:
            self.trainer._step, buffered = restored
            if buffered is not None:
                self.trainer._buffered_inputs = buffered


_runs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def guard(trainer, run_config: RunConfig | None = None) -> GuardedRun:
    """The run's guarantees for `trainer`, built once per trainer (later calls return the same pieces, with
    `run_config` applied when given)."""
    run = _runs.get(trainer)
    if run is None:
        run = _runs[trainer] = GuardedRun(trainer, run_config or RunConfig())
    elif run_config is not None:
        run.configure(run_config)
    return run


def train(trainer, resume_from_checkpoint=None, run_config: RunConfig | None = None, **train_kwargs) -> RunResult:
    """Train `trainer` (an `RLPTrainer`) with every guarantee of the run (module docstring); `resume_from_checkpoint`:
    None (start fresh), a checkpoint folder, `True` / `"last"` (the newest verified checkpoint; an error if there is
    none) or `"auto"` (that checkpoint if there is one, else start fresh)."""
    return guard(trainer, run_config).train(resume_from_checkpoint, **train_kwargs)


__all__ = ["GuardedRun", "RunResult", "guard", "train"]
