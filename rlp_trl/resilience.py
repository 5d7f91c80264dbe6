"""Reliability for long, unattended RLP runs (see docs/reliability.md).

* Atomic checkpoints: a checkpoint is written into a hidden staging folder (`.rlp-staging-checkpoint-N/`), its files
  are flushed to disk, a completion marker listing every file and its size is written last, and only then is the
  folder renamed to `checkpoint-N`. A save interrupted midway therefore never looks like a checkpoint, and resume
  (`resume_from_checkpoint=True` / `"auto"`) only picks folders whose marker verifies.
* Exact resume: on top of the Trainer's model, optimizer, scheduler, RNG and data position, and the EMA teacher
  (saved by `RLPTrainer`), each process saves its micro-step counter and, when the checkpoint falls inside a
  generation cycle (`steps_per_generation * num_iterations > gradient_accumulation_steps`), the buffered rollouts of
  that cycle (trl#3247, PR #3148 only regenerates them), so the resumed run continues with the same batches.
* Graceful interruption: SIGTERM / SIGINT during `train()` finish the current optimizer step, save a complete
  checkpoint and stop; `RLPTrainer.interrupted` names the signal. A second signal aborts at once.
* Non-finite values: rewards (S_pred, S_ema) and gradients are checked; per `on_nonfinite` the offending groups /
  optimizer steps are excluded (`"skip"`, counted and reported with the step) or training stops (`"raise"`). Non-finite
  values never reach the weights.
* Pre-flight checks at the start of `train()`: the model's context window holds context + markers + thought +
  horizon, the weights are finite, a streaming dataset yields at least one usable position.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections import Counter, deque

import torch
from datasets import Dataset, IterableDataset
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from .config import NONFINITE_MODES

logger = logging.get_logger("rlp_trl")

COMPLETE_MARKER = "rlp_checkpoint_complete.json"
RESUME_STATE = "rlp_resume_state_{rank}.pt"
STAGING_PREFIX = ".rlp-staging-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class NonFiniteError(RuntimeError):
    """Raised when non-finite rewards or gradients are met with `on_nonfinite="raise"` (or cannot be skipped)."""


# ---------------------------------------------------------------------------------------------- tokenizer
def ensure_pad_token(tokenizer) -> None:
    """Use EOS as the pad token when there is none; fail clearly when the tokenizer has neither.

    Padding positions are always masked (contexts are left-padded with an explicit attention mask), so reusing EOS is
    safe. An EOS token is required: TRL ends completions on it, and RLP adds the think-close marker to that set.
    """
    if tokenizer.eos_token is None:
        raise ValueError(
            "The tokenizer has no EOS token. RLP (through TRL) stops generation on EOS and the think-close marker; set "
            "one before building the trainer, e.g. tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'}) "
            "(and resize the model's embeddings if the token is new)."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# ---------------------------------------------------------------------------------------------- checkpoints
def _fsync_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:  # not every filesystem allows fsync on a read-only handle; the rename is still atomic
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _list_files(directory: str) -> dict[str, int]:
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel != COMPLETE_MARKER and os.path.isfile(path):
                files[rel] = os.path.getsize(path)
    return files


def write_complete_marker(directory: str, global_step: int) -> None:
    """Flush every file of a written checkpoint to disk, then record them (name -> size) in the completion marker."""
    files = _list_files(directory)
    for rel in files:
        _fsync_file(os.path.join(directory, rel))
    for root, _, _ in os.walk(directory):
        _fsync_dir(root)
    tmp = os.path.join(directory, COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": global_step, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, COMPLETE_MARKER))
    _fsync_dir(directory)


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete rlp_trl checkpoint, or None when its completion marker verifies."""
    if not os.path.isdir(path):
        return "not a directory"
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return f"no {COMPLETE_MARKER} (the save did not finish, or the folder was not written by RLPTrainer)"
    try:
        with open(marker) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {COMPLETE_MARKER}: {err}"
    for rel, size in files.items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != size:
            return f"{rel} has {os.path.getsize(full)} bytes, the marker recorded {size}"
    return None


def list_checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders of `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, dict[str, str]]:
    """The newest checkpoint whose completion marker verifies, and the newer ones skipped (path -> reason)."""
    skipped = {}
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped[path] = problem
    return None, skipped


def resolve_resume_checkpoint(value, output_dir: str) -> str | None:
    """Turn `resume_from_checkpoint` into a verified checkpoint path (or None to start fresh).

    * None / False / "" / "false" / "no": start fresh.
    * True / "true" / "last": the newest *complete* checkpoint of `output_dir`; error if there is none.
    * "auto": the newest complete checkpoint if any, else start fresh (the same command works for the first launch
      and every requeue of a preemptible job).
    * a path: used if its completion marker verifies; a folder without a marker that still has `trainer_state.json`
      (written by a plain Trainer or an older rlp_trl) is accepted with a warning; anything else is an error.
    """
    if value is None or value is False:
        return None
    keyword = value.strip().lower() if isinstance(value, str) else value
    if keyword in ("", "false", "no", "none"):
        return None
    if keyword is True or keyword in ("true", "last", "latest", "auto"):
        path, skipped = last_complete_checkpoint(output_dir)
        for bad, reason in skipped.items():
            logger.warning(f"[rlp_trl] not resuming from {bad}: {reason}")
        if path is None and keyword != "auto":
            detail = "; skipped: " + "; ".join(f"{p} ({r})" for p, r in skipped.items()) if skipped else ""
            raise ValueError(f"resume_from_checkpoint={value!r}: no complete checkpoint in {output_dir}{detail}")
        if path is not None:
            logger.warning(f"[rlp_trl] resuming from {path}")
        return path
    path = str(value)
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, COMPLETE_MARKER)) and os.path.isfile(
        os.path.join(path, "trainer_state.json")
    ):
        logger.warning(f"[rlp_trl] {path} has no {COMPLETE_MARKER}; it cannot be verified, resuming from it anyway")
        return path
    newest, _ = last_complete_checkpoint(os.path.dirname(os.path.abspath(path)))
    hint = f" The newest complete checkpoint next to it is {newest}." if newest else ""
    raise ValueError(f"Cannot resume from {path}: {problem}.{hint}")


def remove_stale_staging(output_dir: str) -> list[str]:
    """Delete staging folders left by saves that were interrupted (they never became checkpoints)."""
    removed = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


@contextlib.contextmanager
def staged_checkpoint(trainer, trial):
    """Make `Trainer._save_checkpoint` atomic (see the module docstring). Used by `RLPTrainer._save_checkpoint`.

    While active, `trainer._get_output_dir` returns the staging root, so everything the Trainer, TRL and RLP write
    for this checkpoint lands in `<staging root>/checkpoint-N`. On success the per-process resume state is added, the
    marker written and the folder renamed into place; older checkpoints are then rotated (`save_total_limit`). With
    `push_to_hub` (uploads read the folder asynchronously) the folder is written in place and only marked complete.
    """
    args = trainer.args
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    final_dir = os.path.join(run_dir, name)
    stage = not args.push_to_hub
    staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
    if stage:
        if args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
            os.makedirs(staging_root, exist_ok=True)
        trainer.accelerator.wait_for_everyone()
        trainer._rlp_staging_root = staging_root
    try:
        yield
    finally:
        trainer._rlp_staging_root = None
    written = os.path.join(staging_root, name) if stage else final_dir
    save_resume_state(trainer, written)
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        best = trainer.state.best_model_checkpoint
        if stage and best is not None and os.path.abspath(best).startswith(os.path.abspath(staging_root)):
            trainer.state.best_model_checkpoint = final_dir
            trainer.state.save_to_json(os.path.join(written, "trainer_state.json"))
        write_complete_marker(written, trainer.state.global_step)
        if stage:
            replaced = staging_root + "-replaced"
            if os.path.exists(final_dir):  # e.g. an unverifiable folder of the same step: move it aside first
                shutil.rmtree(replaced, ignore_errors=True)
                os.rename(final_dir, replaced)
            os.rename(written, final_dir)
            _fsync_dir(run_dir)
            shutil.rmtree(replaced, ignore_errors=True)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir, save_total_limit=args.save_total_limit,
                best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True,
            )
    trainer.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- resume state
def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def data_fingerprint(dataset) -> dict:
    if isinstance(dataset, Dataset):
        return {"type": "Dataset", "rows": len(dataset), "fingerprint": getattr(dataset, "_fingerprint", None)}
    if isinstance(dataset, IterableDataset):
        return {"type": "IterableDataset", "rows": None, "fingerprint": None}
    return {"type": type(dataset).__name__, "rows": None, "fingerprint": None}


def save_resume_state(trainer, directory: str) -> None:
    """What the Trainer does not save: GRPO's micro-step counter and buffered rollouts, the non-finite totals."""
    os.makedirs(directory, exist_ok=True)
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    mid_cycle = trainer._step % generate_every != 0 and trainer._buffered_inputs is not None
    state = {
        "version": 1,
        "global_step": trainer.state.global_step,
        "micro_step": trainer._step,
        "world_size": trainer.accelerator.num_processes,
        "buffered_inputs": _to(trainer._buffered_inputs, "cpu") if mid_cycle else None,
        "nonfinite": dict(nonfinite_guard(trainer).totals),
        "data": data_fingerprint(trainer.train_dataset),
    }
    path = os.path.join(directory, RESUME_STATE.format(rank=trainer.accelerator.process_index))
    torch.save(state, path)


def load_resume_state(trainer, checkpoint: str) -> bool:
    """Restore what `save_resume_state` wrote; returns False (and keeps TRL's behaviour) when there is nothing."""
    path = os.path.join(checkpoint, RESUME_STATE.format(rank=trainer.accelerator.process_index))
    if not os.path.isfile(path):
        logger.warning(f"[rlp_trl] {checkpoint} has no {os.path.basename(path)}: buffered rollouts are regenerated")
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["world_size"] != trainer.accelerator.num_processes:
        logger.warning(
            f"[rlp_trl] {checkpoint} was written by {state['world_size']} processes, resuming on "
            f"{trainer.accelerator.num_processes}: buffered rollouts are regenerated, batches may differ"
        )
        return False
    trainer._step = state["micro_step"]
    if state["buffered_inputs"] is not None:
        trainer._buffered_inputs = _to(state["buffered_inputs"], trainer.accelerator.device)
    nonfinite_guard(trainer).totals.update(state.get("nonfinite", {}))
    saved, now = state.get("data") or {}, data_fingerprint(trainer.train_dataset)
    if saved and (saved.get("rows"), saved.get("type")) != (now.get("rows"), now.get("type")):
        logger.warning(
            f"[rlp_trl] the training data differs from the checkpoint's ({saved} vs {now}): the data position of the "
            f"resumed run is not the one the interrupted run would have reached"
        )
    return True


# ---------------------------------------------------------------------------------------------- interruption
class GracefulStop(TrainerCallback):
    """SIGTERM / SIGINT: finish the optimizer step, save a complete checkpoint, stop. A second signal aborts."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, trainer):
        self.trainer = trainer
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous = {}

    def install(self) -> None:
        self.received = self.stopped_at = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("[rlp_trl] train() is not running in the main thread: SIGTERM/SIGINT are not intercepted")
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:  # second signal: stop waiting for the step to end
            sys.stderr.write(f"\n[rlp_trl] second {name}: aborting without saving\n")
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        sys.stderr.write(
            f"\n[rlp_trl] {name} received: finishing the current optimizer step, then saving a checkpoint and stopping "
            f"(send it again to abort without saving)\n"
        )

    def requested(self) -> bool:
        flag = self.received is not None
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:  # every process must stop at the same step
            flag = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum").item() > 0
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


# ---------------------------------------------------------------------------------------------- non-finite values
class NonFiniteGuard(TrainerCallback):
    """Detects non-finite rewards (before advantages) and gradients (before the optimizer step).

    `"skip"`: a group with a non-finite reward gets all-zero rewards, hence zero advantages and no gradient; an
    optimizer step whose gradients are not all finite is not applied (the gradients are dropped, so the optimizer
    leaves every parameter and its moments untouched). Each event is logged with the step and the count and totalled
    in `totals` (saved with checkpoints). After `max_consecutive_skips` skipped steps in a row the model is taken to be
    degenerate and training stops. `"raise"`: the first event stops training with a `NonFiniteError`.
    Under DeepSpeed the gradients are not visible as `.grad` and only the reward check applies; with fp16 loss scaling
    the scaler already skips such steps, and the guard only counts them.
    """

    max_consecutive_skips = 20

    def __init__(self, trainer, mode: str = "skip"):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {mode!r}")
        self.trainer = trainer
        self.mode = mode
        self.totals = Counter()
        self.events = deque(maxlen=1000)
        self._consecutive = 0

    def _record(self, kind: str, step: int, count: int, message: str) -> None:
        self.totals[kind] += count
        self.events.append({"step": step, "kind": kind, "count": count})
        if self.mode == "raise":
            raise NonFiniteError(f"{message}. Training stopped (on_nonfinite='raise'; 'skip' excludes them instead).")
        logger.warning(f"[rlp_trl] {message}: excluded (on_nonfinite='skip')")

    def check_rewards(self, rewards: torch.Tensor, num_generations: int, mode: str = "train") -> torch.Tensor:
        """Rewards of all processes, `[num_groups * G]`; returns them with every group holding a non-finite one zeroed."""
        bad = ~torch.isfinite(rewards)
        count = int(bad.sum().item())
        metrics = self.trainer._metrics[mode]
        metrics["rlp/nonfinite_rewards"].append(float(count))
        if count == 0:
            return rewards
        groups = bad.view(-1, num_generations).any(dim=1)
        step = self.trainer.state.global_step + 1
        self._record(
            "rewards", step, count,
            f"step {step} ({mode}): {count} non-finite reward(s) in {int(groups.sum())} of {groups.numel()} group(s)",
        )
        self.totals["groups"] += int(groups.sum())
        out = rewards.clone()
        out.view(-1, num_generations)[groups] = 0.0
        return out

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if getattr(trainer, "is_deepspeed_enabled", False):
            return
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        if not params:
            return
        device = params[0].grad.device
        # one flag per tensor, summed on one device: a single host sync per optimizer step
        bad = torch.stack([(~torch.isfinite(p.grad)).any().to(device) for p in params]).sum().float()
        if trainer.accelerator.num_processes > 1:  # sharded gradients (FSDP) differ per process
            bad = trainer.accelerator.reduce(bad, reduction="sum")
        bad = int(bad.item())
        trainer._metrics["train"]["rlp/skipped_steps"].append(float(self.totals["steps"] + (bad > 0)))
        if bad == 0:
            self._consecutive = 0
            return
        step = state.global_step + 1
        if trainer.accelerator.scaler is not None:  # fp16: GradScaler skips this step itself
            self.totals["steps"] += 1
            return
        self._consecutive += 1
        self._record(
            "steps", step, 1, f"step {step}: non-finite gradients in {bad} parameter tensor(s), optimizer step skipped"
        )
        for p in params:
            p.grad = None
        if self._consecutive >= self.max_consecutive_skips:
            raise NonFiniteError(
                f"step {step}: {self._consecutive} optimizer steps in a row had non-finite gradients; the model or "
                f"the learning rate is degenerate. Training stopped."
            )


def nonfinite_guard(trainer) -> NonFiniteGuard:
    guard = getattr(trainer, "_rlp_nonfinite_guard", None)
    if guard is None:
        guard = NonFiniteGuard(trainer, getattr(trainer.args, "on_nonfinite", "skip"))
        trainer._rlp_nonfinite_guard = guard
    return guard


# ---------------------------------------------------------------------------------------------- pre-flight
def check_context_window(model, args, open_len: int, close_len: int) -> None:
    """Context + open marker + thought + close marker + horizon must fit in the model's positions."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "max_position_embeddings", None)
    need = args.max_context_tokens + open_len + args.max_completion_length + close_len + args.reward_horizon
    if isinstance(window, int) and need > window:
        raise ValueError(
            f"RLPConfig: max_context_tokens ({args.max_context_tokens}) + think_open ({open_len} token(s)) + "
            f"max_completion_length ({args.max_completion_length}) + think_close ({close_len}) + reward_horizon "
            f"({args.reward_horizon}) = {need} tokens, more than the model's context window "
            f"(max_position_embeddings={window}). Lower max_context_tokens or max_completion_length."
        )


def check_finite_weights(model) -> None:
    for name, param in model.named_parameters():
        if param.numel() and not torch.isfinite(param.detach()).all():
            raise NonFiniteError(
                f"The model's parameter {name} holds non-finite values (NaN/inf) before training: the checkpoint is "
                f"degenerate, nothing sensible can be sampled from it."
            )


def check_stream_nonempty(dataset, needed: int = 1) -> None:
    """A streaming dataset is lazy: read its first `needed` positions (one generation batch of contexts), so a stream
    without enough usable rows fails at start instead of 'training' zero steps."""
    if not isinstance(dataset, IterableDataset):
        return
    found = sum(1 for _ in zip(range(needed), dataset))
    if found < needed:
        raise ValueError(
            f"The streaming training dataset yields no usable positions for a full batch ({found} found, one generation "
            f"batch needs {needed} contexts): its documents are empty, not strings, or shorter than "
            f"min_context_tokens + reward_horizon tokens (or the stream is empty)."
        )


# ---------------------------------------------------------------------------------------------- trainer mixin
class ResilienceMixin:
    """Trainer-side hooks of this module. `RLPTrainer` inherits it; its `_save_checkpoint` uses `staged_checkpoint`
    and its scoring calls `nonfinite_guard(self).check_rewards`."""

    interrupted: str | None = None

    @property
    def nonfinite_guard(self) -> NonFiniteGuard:
        return nonfinite_guard(self)

    def _get_output_dir(self, trial):
        staging = getattr(self, "_rlp_staging_root", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _rlp_preflight(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        check_context_window(
            model, self.args, len(getattr(self, "think_open_ids", []) or []), len(getattr(self, "think_close_ids", [0]))
        )
        check_finite_weights(model)
        check_stream_nonempty(self.train_dataset, max(1, self.args.generation_batch_size // self.num_generations))

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._rlp_preflight()
        if self.args.should_save:
            for name in remove_stale_staging(self.args.output_dir):
                logger.warning(f"[rlp_trl] removed {name}: a checkpoint save that never completed")
        guard = nonfinite_guard(self)
        if guard not in self.callback_handler.callbacks:
            self.add_callback(guard)
        stop = getattr(self, "_rlp_graceful_stop", None)
        if stop is None:
            stop = self._rlp_graceful_stop = GracefulStop(self)
            self.add_callback(stop)
        self.interrupted = None
        if getattr(self.args, "handle_signals", True):
            stop.install()
        try:
            output = super().train(
                resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        finally:
            stop.uninstall()
        if stop.received is not None and stop.stopped_at is None:
            logger.warning("[rlp_trl] a stop signal arrived after the last step: training had already completed")
        elif stop.received is not None:
            self.interrupted = signal.Signals(stop.received).name
            last, _ = last_complete_checkpoint(self.args.output_dir)
            logger.warning(
                f"[rlp_trl] stopped by {self.interrupted} after step {self.state.global_step}; checkpoint: {last}. "
                f"Resume with resume_from_checkpoint=True (CLI: --resume_from_checkpoint true)."
            )
        return output

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            load_resume_state(self, checkpoint)

    def _generate(self, prompts):
        if getattr(self, "think_markers_text", False):
            # multi-token text markers: the sampler cannot stop on the close marker, so it cannot score </think> + x_t
            # in its cache either; S_pred comes from the separate scoring pass over the post-hoc cut thought
            self._forced_suffixes = None
        try:
            return super()._generate(prompts)
        except RuntimeError as err:
            if "probability tensor contains" not in str(err):
                raise
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: sampling thoughts failed because the policy produced non-finite "
                f"probabilities (NaN/inf logits). The weights or activations are degenerate (check the learning rate "
                f"and the dtype; fp16 overflows more easily than bf16)."
            ) from err
