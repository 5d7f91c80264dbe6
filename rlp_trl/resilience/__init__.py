"""The run's guarantees, composed around an `RLPTrainer` by `rlp_trl.train(trainer, ...)` (docs/reliability.md).

`run`: the entry point, `train(trainer, resume_from_checkpoint, run_config)`, and `guard(trainer)`, which builds the
pieces below once per trainer and registers those that are callbacks; `options`: `RunConfig`, the run's options. The
pieces, one concern each:

* `checkpoints`: the checkpoint format. A completion marker listing every file with its size and sha256 is written
  last; resume (`True` / `"last"` / `"auto"`) picks the newest folder whose marker verifies (sizes, hashes, parseable
  state files) and says which newer ones it skipped and why. Resuming a finished run (already at `max_steps`) trains
  nothing.
* `staging`: `CheckpointStager` writes a checkpoint into a hidden staging folder (`.rlp-staging-checkpoint-N/`),
  marks it complete and only then renames it to `checkpoint-N`; a save interrupted midway never looks like a
  checkpoint. I/O errors during a save (a full disk) are reported as `CheckpointSaveError` naming the last complete
  checkpoint. `claim_output_dir`: one writer per `output_dir` (`rlp_trl.lock`), the resume checkpoint resolved, stale
  staging folders removed.
* `resume`: `ResumeState`, exact resume (GRPO's micro-step counter and buffered rollouts, trl#3247) and the refusal
  (`resume_mismatch="error"`) or warning (`"warn"`) for a resume onto different data or optimisation settings.
* `signals`: `GracefulStop`, SIGTERM / SIGINT during `train()` finish the current optimizer step, save a complete
  checkpoint and stop (`RunResult.interrupted` names the signal); a second signal aborts; `rlp-launch` registration.
* `nonfinite`: `NonFiniteGuard`, non-finite rewards, gradients and weights (`on_nonfinite`), runaway flags;
  `verify_state_finite` before every save; `sampling_error` for sampling on NaN/inf probabilities.
* `preflight`: checks at the start of `train()` (context window, finite weights, a non-empty stream).

The tokenizer's pad-token fallback is `rlp_trl.tokens.ensure_pad_token` (re-exported here).
"""

from ..lock import OutputDirLock, OutputDirLockedError
from ..tokens import ensure_pad_token
from .checkpoints import (
    COMPLETE_MARKER,
    MARKER_VERSION,
    STAGING_PREFIX,
    checkpoint_problem,
    finished_at,
    last_complete_checkpoint,
    list_checkpoints,
    load_finished,
    resolve_resume_checkpoint,
    write_complete_marker,
)
from .nonfinite import (
    RUNAWAY_GAIN_FACTOR,
    RUNAWAY_WEIGHT_FACTOR,
    ZERO_GRAD_STEPS,
    NonFiniteError,
    NonFiniteGuard,
    optimizer_tensors,
    runaway_gain_limit,
    sampling_error,
    scan_tensors,
    teacher_tensors,
    verify_state_finite,
)
from .preflight import check_context_window, check_finite_weights, check_launch, check_stream_nonempty, preflight
from .resume import (
    CONTENT_ROWS,
    IGNORED_ON_RESUME,
    RESUME_STATE,
    ResumeState,
    content_fingerprint,
    data_fingerprint,
    optimisation_settings,
    shape_fingerprint,
)
from .run import GuardedRun, RunResult, guard, train
from .signals import DUPLICATE_WINDOW_S, REGISTRY_ENV, GracefulStop
from .staging import (
    CheckpointSaveError,
    CheckpointStager,
    claim_output_dir,
    claimed_output_dir,
    on_main_then_everywhere,
    remove_stale_staging,
    save_failure,
)

__all__ = [
    "COMPLETE_MARKER", "CONTENT_ROWS", "DUPLICATE_WINDOW_S", "IGNORED_ON_RESUME", "MARKER_VERSION", "REGISTRY_ENV",
    "RESUME_STATE", "RUNAWAY_GAIN_FACTOR", "RUNAWAY_WEIGHT_FACTOR", "STAGING_PREFIX", "ZERO_GRAD_STEPS",
    "CheckpointSaveError", "CheckpointStager", "GracefulStop", "GuardedRun", "RunResult", "guard", "train", "NonFiniteError", "NonFiniteGuard", "OutputDirLock",
    "OutputDirLockedError", "ResumeState", "check_context_window", "check_finite_weights", "check_launch",
    "check_stream_nonempty", "checkpoint_problem", "claim_output_dir", "claimed_output_dir", "content_fingerprint",
    "data_fingerprint", "ensure_pad_token", "finished_at", "last_complete_checkpoint", "list_checkpoints", "load_finished",
    "on_main_then_everywhere", "optimisation_settings", "optimizer_tensors", "preflight", "remove_stale_staging",
    "resolve_resume_checkpoint", "runaway_gain_limit", "sampling_error", "save_failure", "scan_tensors", "shape_fingerprint",
    "teacher_tensors", "verify_state_finite", "write_complete_marker",
]
