"""The teacher's checkpoint format, written and read here for every kind of teacher.

A checkpoint folder holds two files next to the Trainer's:

* `rlp_teacher.safetensors`: name -> full tensor (never a ZeRO-3 shard), metadata `{"format": "pt"}`. The names are
  the teacher's own: the parameter names of the full replica (a tied weight under its first name), or the
  "rlp_ema" adapter's parameter names with the float32 shadow's values for the PEFT teacher.
* `rlp_teacher.json`: `{"kind", "decay", "num_updates", "dtype"}`, plus `"adapter_name"` for the adapter teacher.
  A checkpoint without it (older runs) reads as a "full" teacher with 0 updates.

The same format under every backend: a teacher saved under ZeRO-2 resumes under ZeRO-3 and vice versa. A teacher
provides its tensors (`state_tensors`) and takes them back (`load_state_tensors`); everything else (file names,
the JSON, the kind check, the finiteness check of what was loaded) is here, once.
"""

import json
import os

from safetensors import safe_open
from safetensors.torch import save_file

TEACHER_WEIGHTS = "rlp_teacher.safetensors"
TEACHER_STATE = "rlp_teacher.json"

_DESCRIPTION = {"full": "full-weight EMA", "adapter": "PEFT adapter EMA"}


def state_json(teacher) -> dict:
    state = {
        "kind": teacher.kind, "decay": teacher.decay, "num_updates": teacher.num_updates, "dtype": str(teacher.dtype)
    }
    if teacher.kind == "adapter":
        state["adapter_name"] = teacher.adapter_name
    return state


def save(teacher, directory: str, write: bool = True) -> None:
    """Write the teacher's two files into `directory` (nothing before the teacher is initialised).

    Call it on every rank: a ZeRO-3 teacher gathers its shards (a collective); only ranks with `write` write.
    """
    if not teacher.initialized:
        return
    tensors = teacher.state_tensors(write)
    if not write:
        return
    save_file(tensors, os.path.join(directory, TEACHER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, TEACHER_STATE), "w") as f:
        json.dump(state_json(teacher), f)


def read_state(directory: str, kind: str) -> dict | None:
    """The checkpoint's teacher state, or None if it holds no teacher; raises if it holds another kind of teacher
    or an unreadable state file."""
    path = os.path.join(directory, TEACHER_WEIGHTS)
    if not os.path.exists(path):
        return None
    state_path = os.path.join(directory, TEACHER_STATE)
    try:
        with open(state_path) as f:
            state = json.load(f)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        state = {}
    except ValueError as err:
        raise ValueError(f"{state_path} is not a valid teacher state ({err}): resume from another checkpoint") from err
    saved_kind = state.get("kind", "full")
    if saved_kind != kind:
        raise ValueError(
            f"{path} holds a {saved_kind!r} EMA teacher but this run builds a {kind!r} one "
            f"({_DESCRIPTION.get(kind, kind)}): resume with the same --use_peft setting as the run that wrote the "
            "checkpoint."
        )
    return state


def load(teacher, directory: str, model) -> bool:
    """Restore a teacher saved by `save` (call on every rank); returns False when the checkpoint has none (the
    teacher was not yet built when it was written)."""
    state = read_state(directory, teacher.kind)
    if state is None:
        return False
    path = os.path.join(directory, TEACHER_WEIGHTS)
    with safe_open(path, framework="pt") as reader:
        teacher.load_state_tensors(reader, model, path)
    if not teacher.load_on_rank0_only:  # every rank holds the whole state: the same verdict everywhere
        check_finite(teacher.named_state_tensors(), path)
    teacher.num_updates = state.get("num_updates", 0)
    return True


def check_finite(named, path: str) -> None:
    from ..resilience import NonFiniteError, scan_tensors

    bad, _ = scan_tensors(named)
    if bad:
        raise NonFiniteError(
            f"{path} holds non-finite values (NaN/inf) in {', '.join(bad[:3])}: this EMA teacher cannot score "
            "anything. Resume from an earlier checkpoint."
        )
