"""Checkpoint format and verification: the completion marker (every file with its size and sha256, written last),
checks that a folder is a complete checkpoint, listing, and turning `resume_from_checkpoint` into a verified path.

A checkpoint is complete when `rlp_checkpoint_complete.json` exists, every file it lists has its recorded size and
sha256, and the small state files parse. How a checkpoint is written (staging folder, rename): `staging.py`.
"""

import hashlib
import json
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..usage import UsageError

logger = logging.get_logger("rlp_trl")

COMPLETE_MARKER = "rlp_checkpoint_complete.json"
MARKER_VERSION = 2
STAGING_PREFIX = ".rlp-staging-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


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


def _unreadable_tensor_file(path: str, rel: str) -> str | None:
    """A large state file that has no sha256 in its marker (written by rlp_trl < 0.2): a torch zip archive is checked
    against its own CRCs; a safetensors file has none, its header must parse (its values are checked finite below)."""
    full = os.path.join(path, rel)
    if rel.endswith((".pt", ".pth", ".bin")):
        try:
            with zipfile.ZipFile(full) as archive:
                broken = archive.testzip()
        except (OSError, zipfile.BadZipFile, ValueError) as err:
            return f"{rel} is not a readable torch file ({type(err).__name__}: {str(err)[:120]})"
        return f"{rel} is corrupted (CRC mismatch in {broken})" if broken is not None else None
    return None


def _nonfinite(tensors) -> str | None:
    """The name of the first floating tensor of `(name, tensor)` pairs that holds NaN/inf, else None."""
    import torch

    for name, tensor in tensors:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _optimizer_tensors(state: dict):
    for i, values in (state.get("state") or {}).items() if isinstance(state, dict) else ():
        for key, value in (values or {}).items() if isinstance(values, dict) else ():
            yield f"{key} of parameter #{i}", value


def nonfinite_state_problem(path: str) -> str | None:
    """Which state file of checkpoint `path` holds NaN/inf: every `*.safetensors` (policy, EMA teacher, adapters) and
    `optimizer.pt` (Adam's moments). The save side refuses such state (`verify_state_finite`), so a hit means a file
    changed after it was marked complete, or a bug: resuming from it would fail the same way on every requeue.
    Files that `torch.load(weights_only=True)` cannot read (e.g. DeepSpeed's own) are not judged here."""
    import torch
    from safetensors import safe_open

    for root, _, names in sorted(os.walk(path)):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if name.endswith(".safetensors"):
                try:
                    with safe_open(full, framework="pt") as f:
                        bad = _nonfinite((key, f.get_tensor(key)) for key in f.keys())  # noqa: SIM118 - not a dict
                except Exception as err:  # noqa: BLE001 - safetensors' own error type differs across versions
                    return f"{rel} is not a readable safetensors file ({type(err).__name__}: {str(err)[:120]})"
            elif name == "optimizer.pt":
                try:
                    state = torch.load(full, map_location="cpu", weights_only=True, mmap=True)
                except Exception:  # noqa: BLE001, S112 - not torch's plain layout: the marker's hash is all we check
                    continue
                bad = _nonfinite(_optimizer_tensors(state))
            else:
                continue
            if bad is not None:
                return f"{rel} holds non-finite values (NaN/inf) in {bad}"
    return None


def checkpoint_problem(path: str, verify_content: bool = True) -> str | None:
    """Why `path` is not a complete rlp_trl checkpoint, or None when its completion marker verifies.

    Checked: the marker exists and parses, every file it lists exists with its size and (`verify_content`) its
    sha256, the small state files parse, and (`verify_content`) the tensors of the state files are finite
    (`nonfinite_state_problem`). Files a marker lists without a sha256 (rlp_trl < 0.2) are checked as far as their
    format allows: torch archives against their CRCs, safetensors by their header and finite values."""
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
        for rel in sorted(set(files) - set(hashed)):
            problem = _unreadable_tensor_file(path, rel)
            if problem is not None:
                return f"{problem} (its marker has no sha256 to check it by)"
    problem = _parse_problem(path)
    if problem is None and verify_content:
        problem = nonfinite_state_problem(path)
    return problem


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



def load_finished(checkpoint: str, step: int, accelerator) -> TrainerState:
    """The trainer state of a checkpoint that already ends the run (`finished_at`), announced once (main process, on
    stdout: a logger warning as well printed it twice on the console)."""
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    message = (f"[rlp_trl] {checkpoint} is already at max_steps {step}: the run has finished, nothing to train "
               f"(raise --max_steps to train further)")
    accelerator.print(message)
    return state
