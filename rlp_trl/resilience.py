"""Reliability for long, unattended RLP runs (see docs/reliability.md).

* Atomic, verified checkpoints: the in-memory state (policy, EMA teacher, optimizer moments) is checked to be finite
  (one reduction per tensor) before a checkpoint is written; it is written into a hidden staging folder
  (`.rlp-staging-checkpoint-N/`), its files are flushed to disk and hashed (sha256), a completion marker listing every
  file with its size and hash is written last, and only then is the folder renamed to `checkpoint-N`. A save
  interrupted midway never looks like a checkpoint; resume (`True` / `"last"` / `"auto"`) picks the newest folder whose
  marker verifies (sizes, hashes, parseable state files) and says which newer ones it skipped and why. I/O errors
  during a save (a full disk) are reported as `CheckpointSaveError` naming the last complete checkpoint.
* Exact resume: on top of the Trainer's model, optimizer, scheduler, RNG and data position, and the EMA teacher
  (saved by `RLPTrainer`), each process saves its micro-step counter and, when the checkpoint falls inside a
  generation cycle (`steps_per_generation * num_iterations > gradient_accumulation_steps`), the buffered rollouts of
  that cycle (trl#3247, PR #3148 only regenerates them), so the resumed run continues with the same batches. A resume
  onto different data (content fingerprint) or with optimisation settings the checkpoint would override
  (`learning_rate`, ...) is refused (`resume_mismatch="error"`) or warned about (`"warn"`). Resuming a finished run
  (already at `max_steps`) trains nothing.
* One writer per `output_dir`: `rlp_trl.lock`.
* Graceful interruption: SIGTERM / SIGINT during `train()` finish the current optimizer step, save a complete
  checkpoint and stop; `RLPTrainer.interrupted` names the signal. A second signal (more than `DUPLICATE_WINDOW_S`
  after the first) aborts at once. Under `rlp-launch` (`rlp_trl.launch`) the training processes register themselves,
  so the launcher signals exactly them and waits.
* Non-finite values: rewards (S_pred, S_ema) and gradients are checked; per `on_nonfinite` the offending groups /
  optimizer steps are excluded (`"skip"`, counted and reported with the step) or training stops (`"raise"`). After
  the optimizer step, before the EMA update, the policy's weights are checked: a non-finite policy stops training and
  is neither averaged into the teacher nor saved. A non-finite teacher, or `nonfinite_patience` reward batches in a
  row with every group excluded (or skipped optimizer steps in a row), stop training with `NonFiniteError`.
* Runaway runs (finite but absurd): |information gain| above `RUNAWAY_GAIN_FACTOR * H * log(vocabulary)`, weights
  above `RUNAWAY_WEIGHT_FACTOR` times their largest value at the start, or an exactly zero gradient for
  `ZERO_GRAD_STEPS` steps in a row are logged as warnings and counted (`rlp/runaway_flags`).
* Pre-flight checks at the start of `train()`: the model's context window holds context + markers + thought +
  horizon, the weights are finite, a streaming dataset yields at least one usable position.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import zipfile
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import torch
from datasets import Dataset, IterableDataset
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints
from transformers.utils import logging

from .config import NONFINITE_MODES
from .lock import OutputDirLock, OutputDirLockedError  # noqa: F401  (re-exported)
from .usage import UsageError

logger = logging.get_logger("rlp_trl")

COMPLETE_MARKER = "rlp_checkpoint_complete.json"
MARKER_VERSION = 2
RESUME_STATE = "rlp_resume_state_{rank}.pt"
STAGING_PREFIX = ".rlp-staging-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")

# settings restored from the checkpoint's optimizer state: a new value on resume would be silently ignored
IGNORED_ON_RESUME = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "optim")
RUNAWAY_GAIN_FACTOR = 10.0
RUNAWAY_WEIGHT_FACTOR = 10.0
ZERO_GRAD_STEPS = 10
DUPLICATE_WINDOW_S = 5.0
REGISTRY_ENV = "RLP_LAUNCH_REGISTRY"


class NonFiniteError(RuntimeError):
    """Raised when non-finite rewards or gradients are met with `on_nonfinite="raise"` (or cannot be skipped)."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (I/O error, full disk); the message names the last complete checkpoint."""


# ---------------------------------------------------------------------------------------------- tokenizer
def ensure_pad_token(tokenizer) -> None:
    """Use EOS as the pad token when there is none; fail clearly when the tokenizer has neither.

    Padding positions are always masked (contexts are left-padded with an explicit attention mask), so reusing EOS is
    safe. An EOS token is required: TRL ends completions on it, and RLP adds the think-close marker to that set.
    """
    if tokenizer.eos_token is None:
        raise UsageError(
            "The tokenizer has no EOS token. RLP (through TRL) stops generation on EOS and the think-close marker; set "
            "one before building the trainer, e.g. tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'}) "
            "(and resize the model's embeddings if the token is new)."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# ---------------------------------------------------------------------------------------------- finite tensors
def _local(t: torch.Tensor) -> torch.Tensor:
    return t.ds_tensor if hasattr(t, "ds_tensor") else t  # ZeRO-3: this process's shard


def scan_tensors(named) -> tuple[list[str], float]:
    """(names of tensors holding NaN/inf, largest finite |value|) over `(name, tensor)` pairs.

    One reduction per tensor (`aminmax`, which propagates NaN), stacked per device: one host sync per device."""
    by_device: dict = {}
    for name, t in named:
        t = _local(t).detach()
        if t.numel() and t.is_floating_point():
            by_device.setdefault(t.device, []).append((name, t))
    bad, largest = [], 0.0
    for items in by_device.values():
        values = []
        for _, t in items:
            low, high = t.aminmax()
            values.append(torch.maximum(-low, high).float())
        values = torch.stack(values).cpu()
        finite = torch.isfinite(values)
        bad += [name for (name, _), ok in zip(items, finite.tolist()) if not ok]
        if finite.any():
            largest = max(largest, values[finite].max().item())
    return bad, largest


def _reduce_scan(accelerator, bad: list[str], largest: float) -> tuple[int, float]:
    """Across processes: total count of bad tensors, largest finite |value| (one collective)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return len(bad), largest
    local = torch.tensor([[float(len(bad)), largest]], device=accelerator.device)
    every = accelerator.gather(local).view(-1, 2)
    return int(every[:, 0].sum().item()), float(every[:, 1].max().item())


def teacher_tensors(teacher) -> list:
    if teacher is None or not teacher.initialized:
        return []
    if hasattr(teacher, "named_state_tensors"):
        return list(teacher.named_state_tensors())
    return list(teacher.module.named_parameters())


def optimizer_tensors(trainer) -> list:
    optimizer = getattr(trainer, "optimizer", None)
    state = getattr(optimizer, "state", None) if optimizer is not None else None
    if not state:
        return []
    names = {id(p): n for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
    out = []
    try:
        for i, (param, values) in enumerate(state.items()):
            for key, value in (values or {}).items():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                    out.append((f"{key} of {names.get(id(param), f'parameter #{i}')}", value))
    except (AttributeError, TypeError):  # an optimizer whose state is not torch's layout
        return out
    return out


def verify_state_finite(trainer) -> None:
    """Before a checkpoint is written: the policy, the EMA teacher and the optimizer moments hold no NaN/inf.
    Called on every process (one collective)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    groups = {
        "the policy": [(n, p) for n, p in model.named_parameters()],
        "the EMA teacher": teacher_tensors(getattr(trainer, "teacher", None)),
        "the optimizer state": optimizer_tensors(trainer),
    }
    found = {what: scan_tensors(named)[0] for what, named in groups.items()}
    local = [f"{what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" for what, names in found.items() if names]
    count, _ = _reduce_scan(trainer.accelerator, local, 0.0)
    if count:
        step = trainer.state.global_step
        last, _ = last_complete_checkpoint(trainer.args.output_dir, verify_content=False)
        where = "; ".join(local) if local else "on another process"
        raise NonFiniteError(
            f"step {step}: not saving {PREFIX_CHECKPOINT_DIR}-{step}: non-finite values (NaN/inf) in {where}. A "
            f"checkpoint is marked complete only when its tensors are finite. The last complete checkpoint is {last}."
        )


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
            if rel != COMPLETE_MARKER and not rel.endswith(".tmp") and os.path.isfile(path):
                files[rel] = os.path.getsize(path)
    return files


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hash_all(directory: str, rels) -> dict[str, str]:
    """sha256 of each file, several files at once (hashlib releases the GIL on large buffers)."""
    rels = list(rels)
    workers = max(1, min(8, len(rels), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(rels, pool.map(lambda rel: _sha256(os.path.join(directory, rel)), rels)))


def write_complete_marker(directory: str, global_step: int) -> None:
    """Flush every file of a written checkpoint to disk, hash it, then record them (name -> size, sha256) in the
    completion marker, which is written last."""
    files = _list_files(directory)
    for rel in files:
        _fsync_file(os.path.join(directory, rel))
    for root, _, _ in os.walk(directory):
        _fsync_dir(root)
    hashes = _hash_all(directory, files)  # right after writing: read back from the page cache
    entries = {rel: {"size": size, "sha256": hashes[rel]} for rel, size in files.items()}
    tmp = os.path.join(directory, COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"version": MARKER_VERSION, "global_step": global_step, "files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, COMPLETE_MARKER))
    _fsync_dir(directory)


def _parse_problem(path: str) -> str | None:
    """The small state files must parse (they are what a bare JSONDecodeError / UnpicklingError would come from)."""
    for name in ("trainer_state.json", "rlp_teacher.json"):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        try:
            with open(full) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            return f"{name} is not valid JSON ({type(err).__name__}: {str(err)[:120]})"
        if not isinstance(data, dict) or (name == "trainer_state.json" and not isinstance(data.get("global_step"), int)):
            return f"{name} does not hold a {'trainer state' if name == 'trainer_state.json' else 'teacher state'}"
    for name in sorted(os.listdir(path)):
        if re.match(r"^(rng_state(_\d+)?\.pth|rlp_resume_state_\d+\.pt)$", name):
            full = os.path.join(path, name)
            try:
                with zipfile.ZipFile(full) as archive:  # torch.save writes a zip archive with CRCs
                    broken = archive.testzip()
            except (OSError, zipfile.BadZipFile, ValueError) as err:
                return f"{name} is not a readable torch file ({type(err).__name__}: {str(err)[:120]})"
            if broken is not None:
                return f"{name} is corrupted (CRC mismatch in {broken})"
    return None


def checkpoint_problem(path: str, verify_content: bool = True) -> str | None:
    """Why `path` is not a complete rlp_trl checkpoint, or None when its completion marker verifies.

    Checked: the marker exists and parses, every file it lists exists with its size and (`verify_content`, markers
    written by rlp_trl >= 0.2) its sha256, and the small state files parse."""
    if not os.path.isdir(path):
        return "not a directory"
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return f"no {COMPLETE_MARKER} (the save did not finish, or the folder was not written by RLPTrainer)"
    try:
        with open(marker) as f:
            files = json.load(f)["files"]
        files = {rel: (e if isinstance(e, dict) else {"size": int(e)}) for rel, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable {COMPLETE_MARKER}: {err}"
    for rel, entry in files.items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != entry.get("size"):
            return f"{rel} has {os.path.getsize(full)} bytes, the marker recorded {entry.get('size')}"
    if verify_content:
        hashed = {rel: e["sha256"] for rel, e in files.items() if "sha256" in e}
        for rel, digest in _hash_all(path, hashed).items():
            if digest != hashed[rel]:
                return f"{rel} does not match its sha256 in {COMPLETE_MARKER} (its content changed after the save)"
    return _parse_problem(path)


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


def last_complete_checkpoint(output_dir: str, verify_content: bool = True) -> tuple[str | None, dict[str, str]]:
    """The newest checkpoint whose completion marker verifies, and the newer ones skipped (path -> reason)."""
    skipped = {}
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, verify_content)
        if problem is None:
            return path, skipped
        skipped[path] = problem
    return None, skipped


def resolve_resume_checkpoint(value, output_dir: str) -> str | None:
    """Turn `resume_from_checkpoint` into a verified checkpoint path (or None to start fresh).

    * None / False / "" / "false" / "no": start fresh.
    * True / "true" / "last": the newest checkpoint of `output_dir` that verifies; error if there is none.
    * "auto": the newest checkpoint that verifies if any, else start fresh (the same command works for the first
      launch and every requeue of a preemptible job).
    * a path: used if its completion marker verifies; a folder without a marker that still has a parseable
      `trainer_state.json` (written by a plain Trainer or an older rlp_trl) is accepted with a warning; anything else
      is an error naming the file at fault.
    """
    if value is None or value is False:
        return None
    keyword = value.strip().lower() if isinstance(value, str) else value
    if keyword in ("", "false", "no", "none"):
        return None
    if keyword is True or keyword in ("true", "last", "latest", "auto"):
        path, skipped = last_complete_checkpoint(output_dir)
        for bad, reason in skipped.items():
            instead = f"falling back to {os.path.basename(path)}" if path else "no older one verifies either"
            logger.warning(f"[rlp_trl] not resuming from {bad}: {reason}; {instead}")
        if path is None and keyword != "auto":
            detail = "; skipped: " + "; ".join(f"{p} ({r})" for p, r in skipped.items()) if skipped else ""
            raise UsageError(f"resume_from_checkpoint={value!r}: no complete checkpoint in {output_dir}{detail}")
        if path is not None:
            logger.warning(f"[rlp_trl] resuming from {path}")
        elif skipped:
            logger.warning("[rlp_trl] resume_from_checkpoint='auto': no checkpoint verifies, starting fresh")
        return path
    path = str(value)
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, COMPLETE_MARKER)) and os.path.isfile(
        os.path.join(path, "trainer_state.json")
    ):
        parse = _parse_problem(path)
        if parse is None:
            logger.warning(f"[rlp_trl] {path} has no {COMPLETE_MARKER}; it cannot be verified, resuming from it anyway")
            return path
        problem = parse
    newest, _ = last_complete_checkpoint(os.path.dirname(os.path.abspath(path)))
    hint = f" The newest complete checkpoint next to it is {newest}." if newest else ""
    raise UsageError(f"Cannot resume from {path}: {problem}.{hint}")


def finished_at(checkpoint: str, args) -> int | None:
    """The step at which `checkpoint` ends the run (its global step reached max_steps), else None."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    step = state.get("global_step")
    if not isinstance(step, int):
        return None
    if args.max_steps is not None and args.max_steps > 0:
        target = args.max_steps
    elif state.get("num_train_epochs") == args.num_train_epochs and isinstance(state.get("max_steps"), int):
        target = state["max_steps"]  # epoch-based: the run's own total, recorded when it trained
    else:
        return None
    return target if step >= target > 0 else None


def remove_stale_staging(output_dir: str) -> list[str]:
    """Delete staging folders left by saves that were interrupted (they never became checkpoints)."""
    removed = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


_IO_PATTERN = re.compile(
    r"No space left|os error|inline_container|PytorchStreamWriter|unexpected pos|file write failed|Disk quota|"
    r"Input/output error|Read-only file system", re.IGNORECASE,
)


def _is_io_error(err: BaseException) -> bool:
    chain = [err, err.__cause__, err.__context__]
    return any(isinstance(e, OSError) or (e is not None and _IO_PATTERN.search(str(e))) for e in chain)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024


def save_failure(run_dir: str, name: str, err: BaseException) -> CheckpointSaveError:
    """A `CheckpointSaveError` that says what happened, how full the disk is, and which checkpoint is the last good one."""
    try:
        usage = shutil.disk_usage(run_dir)
        full = usage.free < max(64 << 20, 0.005 * usage.total)
        disk = f"the disk holding {run_dir} has {_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        full, disk = False, f"the free space of {run_dir} cannot be read"
    nospace = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or re.search(
        r"No space left|unexpected pos|file write failed|Disk quota", str(err), re.IGNORECASE
    )
    if nospace or full:
        what = f"the disk looks full ({disk}; PyTorch reports a full disk as 'unexpected pos' / 'file write failed')"
    else:
        what = f"an I/O error ({disk})"
    last, _ = last_complete_checkpoint(run_dir, verify_content=False)
    return CheckpointSaveError(
        f"Saving {name} failed: {type(err).__name__}: {err}. Cause: {what}. {name} was not written: nothing "
        f"half-written becomes a checkpoint (the staging folder is removed at the next start). The last complete "
        f"checkpoint is {last or 'none'}; free space and resume with --resume_from_checkpoint auto."
    )


@contextlib.contextmanager
def staged_checkpoint(trainer, trial):
    """Make `Trainer._save_checkpoint` atomic and verified (see the module docstring). Used by
    `RLPTrainer._save_checkpoint`.

    While active, `trainer._get_output_dir` returns the staging root, so everything the Trainer, TRL and RLP write
    for this checkpoint lands in `<staging root>/checkpoint-N`. On success the per-process resume state is added, the
    marker written and the folder renamed into place; older checkpoints are then rotated (`save_total_limit`). With
    `push_to_hub` (uploads read the folder asynchronously) the folder is written in place and only marked complete.
    """
    args = trainer.args
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    verify_state_finite(trainer)  # every process; nothing is written for a non-finite state
    final_dir = os.path.join(run_dir, name)
    stage = not args.push_to_hub
    staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
    try:
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
    except Exception as err:
        if isinstance(err, (NonFiniteError, CheckpointSaveError)) or not _is_io_error(err):
            raise
        raise save_failure(run_dir, name, err) from err
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


CONTENT_ROWS = 64  # rows hashed for the content fingerprint (evenly spaced; the first ones of a stream)


def content_fingerprint(dataset) -> str | None:
    """sha256 over the row count and `CONTENT_ROWS` evenly spaced rows (prompts and targets) of the position dataset:
    cheap, independent of how the corpus was loaded, different for a different corpus. Streams: their first rows."""
    columns = ("prompt", "target_ids")
    h = hashlib.sha256()
    try:
        if isinstance(dataset, Dataset):
            n = len(dataset)
            h.update(str(n).encode())
            if n:
                picks = sorted({round(i * (n - 1) / max(1, CONTENT_ROWS - 1)) for i in range(min(n, CONTENT_ROWS))})
                for row in dataset.select(picks):
                    h.update(json.dumps([row.get(c) for c in columns], default=str).encode())
        elif isinstance(dataset, IterableDataset):
            for _, row in zip(range(8), dataset):
                h.update(json.dumps([row.get(c) for c in columns], default=str).encode())
        else:
            return None
    except Exception:  # noqa: BLE001 - a fingerprint must never stop training
        return None
    return h.hexdigest()[:16]


def data_fingerprint(dataset, trainer=None) -> dict:
    cache = getattr(trainer, "_rlp_content_fingerprint", None) if trainer is not None else None
    if cache is None:
        cache = content_fingerprint(dataset)
        if trainer is not None:
            trainer._rlp_content_fingerprint = cache
    if isinstance(dataset, Dataset):
        return {"type": "Dataset", "rows": len(dataset), "fingerprint": getattr(dataset, "_fingerprint", None),
                "content": cache}
    if isinstance(dataset, IterableDataset):
        return {"type": "IterableDataset", "rows": None, "fingerprint": None, "content": cache}
    return {"type": type(dataset).__name__, "rows": None, "fingerprint": None, "content": None}


def _plain(value):
    value = getattr(value, "value", value)  # enums (OptimizerNames) -> their value
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def optimisation_settings(args) -> dict:
    return {name: _plain(getattr(args, name, None)) for name in IGNORED_ON_RESUME}


def save_resume_state(trainer, directory: str) -> None:
    """What the Trainer does not save: GRPO's micro-step counter and buffered rollouts, the non-finite totals, the
    data fingerprint and the optimisation settings (to detect a resume on other data or settings)."""
    os.makedirs(directory, exist_ok=True)
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    mid_cycle = trainer._step % generate_every != 0 and trainer._buffered_inputs is not None
    state = {
        "version": 2,
        "global_step": trainer.state.global_step,
        "micro_step": trainer._step,
        "world_size": trainer.accelerator.num_processes,
        "buffered_inputs": _to(trainer._buffered_inputs, "cpu") if mid_cycle else None,
        "nonfinite": dict(nonfinite_guard(trainer).totals),
        "data": data_fingerprint(trainer.train_dataset, trainer),
        "settings": optimisation_settings(trainer.args),
    }
    path = os.path.join(directory, RESUME_STATE.format(rank=trainer.accelerator.process_index))
    torch.save(state, path)


def resume_mismatches(state: dict, trainer) -> list[str]:
    """What differs between the checkpoint's run and this one that the resume would silently get wrong."""
    problems = []
    saved, now = state.get("data") or {}, data_fingerprint(trainer.train_dataset, trainer)
    if saved.get("content") and now.get("content") and saved["content"] != now["content"]:
        problems.append(
            f"the training data differs (content fingerprint {saved['content']} vs {now['content']}; rows "
            f"{saved.get('rows')} vs {now.get('rows')}): the data position restored from the checkpoint does not "
            f"belong to this corpus (or to these position settings)"
        )
    elif saved and (saved.get("rows"), saved.get("type")) != (now.get("rows"), now.get("type")):
        problems.append(f"the training data differs ({saved.get('type')} of {saved.get('rows')} rows vs "
                        f"{now.get('type')} of {now.get('rows')} rows)")
    current = optimisation_settings(trainer.args)
    for name, before in (state.get("settings") or {}).items():
        after = current.get(name)
        if name in current and before != after:
            problems.append(
                f"{name} was {before!r}, now {after!r}: the optimizer state restored from the checkpoint keeps "
                f"{before!r}, so the new value would be ignored"
            )
    return problems


def load_resume_state(trainer, checkpoint: str) -> bool:
    """Restore what `save_resume_state` wrote; returns False (and keeps TRL's behaviour) when there is nothing.
    Raises (`resume_mismatch="error"`) or warns on other data / settings."""
    path = os.path.join(checkpoint, RESUME_STATE.format(rank=trainer.accelerator.process_index))
    if not os.path.isfile(path):
        logger.warning(f"[rlp_trl] {checkpoint} has no {os.path.basename(path)}: buffered rollouts are regenerated")
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"Cannot resume from {checkpoint}: {os.path.basename(path)} is unreadable ({err})") from err
    problems = resume_mismatches(state, trainer)
    if problems:
        mode = getattr(trainer.args, "resume_mismatch", "error")
        text = f"resuming from {checkpoint}: " + "; ".join(problems)
        if mode == "error":
            raise ValueError(
                f"RLPConfig: refusing to resume: {text}. Resume with the original corpus and settings, start a new "
                f"run from the checkpoint's weights (--model_name_or_path {checkpoint}), or pass "
                f"--resume_mismatch warn to resume anyway."
            )
        banner = "!" * 78
        logger.warning(f"\n{banner}\n[rlp_trl] WARNING, {text} (resume_mismatch='warn')\n{banner}")
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
    return True


# ---------------------------------------------------------------------------------------------- interruption
class GracefulStop(TrainerCallback):
    """SIGTERM / SIGINT: finish the optimizer step, save a complete checkpoint, stop. A second signal aborts, unless
    it comes within `DUPLICATE_WINDOW_S` of the first (a launcher forwarding the signal the process already got from
    its process group). Under `rlp-launch` the process registers its pid so the launcher signals it directly."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, trainer):
        self.trainer = trainer
        self.received: int | None = None
        self.received_at: float | None = None
        self.stopped_at: int | None = None
        self._previous = {}
        self._registered: str | None = None

    def install(self) -> None:
        self.received = self.received_at = self.stopped_at = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("[rlp_trl] train() is not running in the main thread: SIGTERM/SIGINT are not intercepted")
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        registry = os.environ.get(REGISTRY_ENV)
        if registry and os.path.isdir(registry):
            path = os.path.join(registry, str(os.getpid()))
            try:
                with open(path, "w") as f:
                    json.dump({"pid": os.getpid(), "rank": self.trainer.accelerator.process_index}, f)
                self._registered = path
            except OSError:
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self._registered:
            with contextlib.suppress(OSError):
                os.remove(self._registered)
            self._registered = None

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self.received_at < DUPLICATE_WINDOW_S:
                sys.stderr.write(f"\n[rlp_trl] {name} again within {DUPLICATE_WINDOW_S:.0f} s: taken as the same "
                                 f"request (send it again later to abort without saving)\n")
                return
            sys.stderr.write(f"\n[rlp_trl] second {name}: aborting without saving\n")
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received, self.received_at = signum, time.monotonic()
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
    """Detects non-finite rewards (before advantages), gradients (before the optimizer step) and weights (after it).

    `"skip"`: a group with a non-finite reward gets all-zero rewards, hence zero advantages and no gradient; an
    optimizer step whose gradients are not all finite is not applied (the gradients are dropped, so the optimizer
    leaves every parameter and its moments untouched). Each event is logged with the step and the count and totalled
    in `totals` (saved with checkpoints). After `patience` (`RLPConfig.nonfinite_patience`) skipped steps in a row, or
    reward batches in a row with every group excluded, the model is taken to be degenerate and training stops; a
    batch with every group excluded also checks the EMA teacher, and a non-finite teacher stops training at once.
    `"raise"`: the first event stops training with a `NonFiniteError`. Either way, a policy that is not finite after
    an optimizer step (`check_weights_after_step`, called before the EMA update) stops training.
    Under DeepSpeed the gradients are not visible as `.grad` and only the reward and weight checks apply; with fp16
    loss scaling the scaler already skips such steps, and the guard only counts them.

    Runaway flags (warnings, counted in `totals["runaway"]` and `rlp/runaway_flags`): see the module docstring.
    """

    max_consecutive_skips = 20  # default of RLPConfig.nonfinite_patience

    def __init__(self, trainer, mode: str = "skip"):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {mode!r}")
        self.trainer = trainer
        self.mode = mode
        self.totals = Counter()
        self.events = deque(maxlen=1000)
        self._consecutive = 0
        self._excluded_streak = 0
        self._zero_grad_streak = 0
        self.initial_weight_max: float | None = None

    @property
    def patience(self) -> int:
        args = getattr(self.trainer, "args", None)
        return int(getattr(args, "nonfinite_patience", None) or self.max_consecutive_skips)

    def _record(self, kind: str, step: int, count: int, message: str) -> None:
        self.totals[kind] += count
        self.events.append({"step": step, "kind": kind, "count": count})
        if self.mode == "raise":
            raise NonFiniteError(f"{message}. Training stopped (on_nonfinite='raise'; 'skip' excludes them instead).")
        logger.warning(f"[rlp_trl] {message}: excluded (on_nonfinite='skip')")

    def _flag(self, kind: str, step: int, message: str) -> None:
        self.totals["runaway"] += 1
        self.totals[f"runaway_{kind}"] += 1
        self.events.append({"step": step, "kind": f"runaway_{kind}", "count": 1})
        logger.warning(f"[rlp_trl] step {step}: runaway run? {message} (counted in rlp/runaway_flags)")

    def _last_good(self) -> str | None:
        args = getattr(self.trainer, "args", None)
        if args is None:
            return None
        return last_complete_checkpoint(args.output_dir, verify_content=False)[0]

    def _vocab_size(self) -> int | None:
        trainer = self.trainer
        try:
            model = trainer.accelerator.unwrap_model(trainer.model)
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            return int(config.vocab_size)
        except (AttributeError, TypeError, ValueError):
            return None

    def check_rewards(self, rewards: torch.Tensor, num_generations: int, mode: str = "train") -> torch.Tensor:
        """Rewards of all processes, `[num_groups * G]`; returns them with every group holding a non-finite one zeroed."""
        bad = ~torch.isfinite(rewards)
        finite_abs = torch.where(bad, torch.zeros_like(rewards), rewards).abs().float()
        summary = torch.stack([bad.sum().float(), finite_abs.max() if rewards.numel() else finite_abs.sum()]).tolist()
        count, largest = int(summary[0]), summary[1]  # one host sync
        metrics = self.trainer._metrics[mode]
        metrics["rlp/nonfinite_rewards"].append(float(count))
        step = self.trainer.state.global_step + 1
        if mode == "train":
            self._check_runaway_gain(largest, step)
            metrics["rlp/runaway_flags"].append(float(self.totals["runaway"]))
        if count == 0:
            if mode == "train":
                self._excluded_streak = 0
            return rewards
        groups = bad.view(-1, num_generations).any(dim=1)
        self._record(
            "rewards", step, count,
            f"step {step} ({mode}): {count} non-finite reward(s) in {int(groups.sum())} of {groups.numel()} group(s)",
        )
        self.totals["groups"] += int(groups.sum())
        if mode == "train":
            self._excluded_streak = self._excluded_streak + 1 if bool(groups.all()) else 0
            if self._excluded_streak:
                self._check_teacher(step)
            if self._excluded_streak >= self.patience:
                raise NonFiniteError(
                    f"step {step}: every group of the last {self._excluded_streak} reward batches in a row had a "
                    f"non-finite reward (information gain 0, nothing learned): the policy's or the teacher's scores "
                    f"are degenerate. Training stopped; the last complete checkpoint is {self._last_good()}."
                )
        out = rewards.clone()
        out.view(-1, num_generations)[groups] = 0.0
        return out

    def _check_runaway_gain(self, largest: float, step: int) -> None:
        vocab = self._vocab_size()
        if not vocab or vocab < 2:
            return
        horizon = int(getattr(getattr(self.trainer, "args", None), "reward_horizon", 1) or 1)
        limit = RUNAWAY_GAIN_FACTOR * horizon * math.log(vocab)
        if largest > limit:
            self._flag("gain", step, f"|information gain| reached {largest:.4g} nats, more than {RUNAWAY_GAIN_FACTOR:g} x "
                       f"H x log(vocabulary size) = {limit:.1f}; check the learning rate")

    def _check_teacher(self, step: int) -> None:
        """A batch with every group excluded: is the EMA teacher itself non-finite? (It never recovers: stop.)"""
        trainer = self.trainer
        teacher = getattr(trainer, "teacher", None)
        if teacher is None or not teacher.initialized or getattr(trainer.args, "no_think_baseline", "ema") != "ema":
            return
        bad, _ = scan_tensors(teacher_tensors(teacher))
        count, _ = _reduce_scan(trainer.accelerator, bad, 0.0)
        if count:
            where = ", ".join(bad[:3]) if bad else "its shards on another process"
            raise NonFiniteError(
                f"step {step}: the EMA teacher holds non-finite weights ({where}): every S_ema, hence every reward, is "
                f"NaN/inf and the run cannot recover. Training stopped; the last complete checkpoint is "
                f"{self._last_good()}."
            )

    def check_weights_after_step(self) -> None:
        """After the optimizer step, before the EMA update: the trained weights must be finite (a corrupted optimizer
        state or an overflowing update can break them with finite gradients). Called on every process."""
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        bad, largest = scan_tensors(named)
        count, largest = _reduce_scan(trainer.accelerator, bad, largest)
        step = trainer.state.global_step + 1
        if count:
            where = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "") if bad else "shards on another process"
            self.events.append({"step": step, "kind": "weights", "count": count})
            raise NonFiniteError(
                f"step {step}: after the optimizer step the policy holds non-finite weights in {count} tensor(s) "
                f"({where}) although the gradients were finite (a corrupted optimizer state or an overflowing update). "
                f"They are not averaged into the EMA teacher and not saved. Training stopped; the last complete "
                f"checkpoint is {self._last_good()} (lower the learning rate if this recurs)."
            )
        if self.initial_weight_max is None:
            self.initial_weight_max = largest
        elif self.initial_weight_max > 0 and largest > RUNAWAY_WEIGHT_FACTOR * self.initial_weight_max:
            self._flag("weights", step, f"the largest |weight| is {largest:.4g}, more than {RUNAWAY_WEIGHT_FACTOR:g} x its "
                       f"value at the start ({self.initial_weight_max:.4g})")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if getattr(trainer, "is_deepspeed_enabled", False):
            return
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        if not params:
            return
        device = params[0].grad.device
        # one reduction per tensor (aminmax propagates NaN), stacked on one device: a single host sync per step
        values = []
        for p in params:
            low, high = p.grad.aminmax()
            values.append(torch.maximum(-low, high).float().to(device))
        values = torch.stack(values)
        summary = torch.stack([(~torch.isfinite(values)).sum().float(), torch.nan_to_num(values, nan=0.0, posinf=0.0).max()])
        if trainer.accelerator.num_processes > 1:  # sharded gradients (FSDP) differ per process
            summary = trainer.accelerator.reduce(summary, reduction="sum")
        bad, largest = int(summary[0].item()), float(summary[1].item())
        trainer._metrics["train"]["rlp/skipped_steps"].append(float(self.totals["steps"] + (bad > 0)))
        step = state.global_step + 1
        if bad == 0:
            self._consecutive = 0
            self._zero_grad_streak = self._zero_grad_streak + 1 if largest == 0.0 else 0
            if self._zero_grad_streak and self._zero_grad_streak % ZERO_GRAD_STEPS == 0:
                self._flag("zero_grad", step, f"the gradient has been exactly zero for {self._zero_grad_streak} steps in "
                           f"a row (saturated probabilities or every reward equal: nothing is learned)")
            return
        if trainer.accelerator.scaler is not None:  # fp16: GradScaler skips this step itself
            self.totals["steps"] += 1
            return
        self._consecutive += 1
        self._record(
            "steps", step, 1, f"step {step}: non-finite gradients in {bad} parameter tensor(s), optimizer step skipped"
        )
        for p in params:
            p.grad = None
        if self._consecutive >= self.patience:
            raise NonFiniteError(
                f"step {step}: {self._consecutive} optimizer steps in a row had non-finite gradients; the model or "
                f"the learning rate is degenerate. Training stopped; the last complete checkpoint is {self._last_good()}."
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


def check_finite_weights(model) -> float:
    """NonFiniteError naming the first non-finite parameter; returns the largest |weight| of the trainable ones."""
    named = list(model.named_parameters())
    bad, _ = scan_tensors(named)
    if bad:
        raise NonFiniteError(
            f"The model's parameter {bad[0]} holds non-finite values (NaN/inf) before training: the checkpoint is "
            f"degenerate, nothing sensible can be sampled from it."
        )
    return scan_tensors([(n, p) for n, p in named if p.requires_grad])[1]


def check_stream_nonempty(dataset, needed: int = 1) -> None:
    """A streaming dataset is lazy: read its first `needed` positions (one generation batch of contexts), so a stream
    without enough usable rows fails at start instead of 'training' zero steps."""
    if not isinstance(dataset, IterableDataset):
        return
    found = sum(1 for _ in zip(range(needed), dataset))
    if found < needed:
        raise UsageError(
            f"The streaming training dataset yields no usable positions for a full batch ({found} found, one generation "
            f"batch needs {needed} contexts): its documents are empty, not strings, or shorter than "
            f"min_context_tokens + reward_horizon tokens (or the stream is empty)."
        )


def _on_main_then_everywhere(accelerator, fn):
    """Run `fn` on the main process only and hand its result (or its exception) to every process."""
    box = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except Exception as err:  # noqa: BLE001 - re-raised on every process below
            box = [("error", err)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# ---------------------------------------------------------------------------------------------- trainer mixin
class ResilienceMixin:
    """Trainer-side hooks of this module. `RLPTrainer` inherits it; its `_save_checkpoint` uses `staged_checkpoint`,
    its scoring calls `nonfinite_guard(self).check_rewards` and its EMA callback `check_weights_after_step`."""

    interrupted: str | None = None
    already_finished: int | None = None  # set by train(): the run had already reached max_steps (nothing trained)

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
        nonfinite_guard(self).initial_weight_max = check_finite_weights(model) or None
        check_stream_nonempty(self.train_dataset, max(1, self.args.generation_batch_size // self.num_generations))

    def _rlp_take_output_dir(self, resume_from_checkpoint):
        """Main process: lock the output folder, resolve and verify the checkpoint, clear stale staging folders."""
        lock = getattr(self, "_rlp_lock", None)
        if lock is None or lock.output_dir != self.args.output_dir:
            lock = self._rlp_lock = OutputDirLock(self.args.output_dir)
        lock.acquire()
        try:
            if lock.taken_over:
                logger.warning(f"[rlp_trl] took over the lock of {self.args.output_dir}: {lock.taken_over}")
            resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
            for name in remove_stale_staging(self.args.output_dir):
                logger.warning(f"[rlp_trl] removed {name}: a checkpoint save that never completed")
        except BaseException:
            lock.release()
            raise
        return resume

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        self.interrupted = self.already_finished = None
        resume = _on_main_then_everywhere(self.accelerator, lambda: self._rlp_take_output_dir(resume_from_checkpoint))
        try:
            if resume is not None:
                done = finished_at(resume, self.args)
                if done is not None:
                    return self._rlp_nothing_to_do(resume, done)
            self._rlp_preflight()
            return self._rlp_train(resume, trial, ignore_keys_for_eval, **kwargs)
        finally:
            lock = getattr(self, "_rlp_lock", None)
            if lock is not None:
                lock.release()

    def _rlp_nothing_to_do(self, checkpoint: str, step: int):
        from transformers.trainer_callback import TrainerState

        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self.already_finished = step
        message = (f"[rlp_trl] {checkpoint} is already at max_steps {step}: the run has finished, nothing to train "
                   f"(raise --max_steps to train further)")
        logger.warning(message)
        self.accelerator.print(message)
        return TrainOutput(self.state.global_step, 0.0, {})

    def _rlp_train(self, resume, trial, ignore_keys_for_eval, **kwargs):
        guard = nonfinite_guard(self)
        if guard not in self.callback_handler.callbacks:
            self.add_callback(guard)
        stop = getattr(self, "_rlp_graceful_stop", None)
        if stop is None:
            stop = self._rlp_graceful_stop = GracefulStop(self)
            self.add_callback(stop)
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
            last, _ = last_complete_checkpoint(self.args.output_dir, verify_content=False)
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
