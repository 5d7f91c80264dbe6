"""Exact resume: what the Trainer does not save, and the checks that a resume continues the same run.

On top of the Trainer's model, optimizer, scheduler, RNG and data position, and the EMA teacher (saved by
`RLPTrainer`), each process saves its micro-step counter and, when the checkpoint falls inside a generation cycle
(`steps_per_generation * num_iterations > gradient_accumulation_steps`), the buffered rollouts of that cycle
(trl#3247, PR #3148 only regenerates them), so the resumed run continues with the same batches. A resume onto
different data (content fingerprint) or with optimisation settings the checkpoint would override (`learning_rate`,
...) is refused (`resume_mismatch="error"`) or warned about (`"warn"`).
"""

import hashlib
import json
import os
from collections import Counter

import torch
from datasets import Dataset, IterableDataset
from transformers.utils import logging

from ..usage import UsageError

logger = logging.get_logger("rlp_trl")

RESUME_STATE = "rlp_resume_state_{rank}.pt"
# settings restored from the checkpoint's optimizer state: a new value on resume would be silently ignored
IGNORED_ON_RESUME = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "optim")


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


SHAPE_COLUMNS = ("target_ids", "doc_index", "position")  # read in full for `shape_fingerprint`; prompts by length


def shape_fingerprint(dataset) -> str | None:
    """sha256 over every row of a map-style position dataset, reading only small columns: each row's target token(s),
    document index, position and prompt length (the prompt's tokens are not read: a row holds up to
    max_context_tokens of them). A changed document moves its targets or lengths almost always, wherever it is in the
    corpus, which the 64 sampled rows of `content_fingerprint` miss. Its cost is that of the row offsets and H + 2
    numbers per row (3 ms for 100k rows of 256-token prompts on a shared 2-core CPU). None for streams and for datasets with an indices mapping
    (`select` / `shuffle`): they keep the sampled fingerprint only."""
    if not isinstance(dataset, Dataset) or getattr(dataset, "_indices", None) is not None:
        return None
    try:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        table = dataset.data.table
        h = hashlib.sha256(str(table.num_rows).encode())
        for name in (*SHAPE_COLUMNS, "prompt"):
            if name not in table.column_names:
                continue
            h.update(name.encode())
            for chunk in table.column(name).chunks:
                if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
                    h.update(np.ascontiguousarray(pc.list_value_length(chunk).to_numpy(zero_copy_only=False)).data)
                    if name != "prompt":
                        h.update(np.ascontiguousarray(chunk.flatten().to_numpy(zero_copy_only=False)).data)
                else:
                    h.update(np.ascontiguousarray(chunk.to_numpy(zero_copy_only=False)).data)
    except Exception:  # noqa: BLE001 - a fingerprint must never stop training
        return None
    return h.hexdigest()[:16]


def data_fingerprint(dataset, content: str | None = None, shape: str | None = None) -> dict:
    """Type, row count and fingerprints of the position dataset; `content` / `shape` are its `content_fingerprint` /
    `shape_fingerprint` if known."""
    if content is None:
        content = content_fingerprint(dataset)
    if isinstance(dataset, Dataset):
        return {"type": "Dataset", "rows": len(dataset), "fingerprint": getattr(dataset, "_fingerprint", None),
                "content": content, "shape": shape if shape is not None else shape_fingerprint(dataset)}
    if isinstance(dataset, IterableDataset):
        return {"type": "IterableDataset", "rows": None, "fingerprint": None, "content": content}
    return {"type": type(dataset).__name__, "rows": None, "fingerprint": None, "content": None}


def _plain(value):
    value = getattr(value, "value", value)  # enums (OptimizerNames) -> their value
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def optimisation_settings(args) -> dict:
    return {name: _plain(getattr(args, name)) for name in IGNORED_ON_RESUME}


class ResumeState:
    """Saves and restores `rlp_resume_state_<rank>.pt`; one per guarded run (`rlp_trl.resilience.run`).

    Saved: GRPO's micro-step counter and buffered rollouts, the non-finite totals (`nonfinite_totals`, the guard's
    counter, updated in place on load), the data fingerprint and the optimisation settings (to detect a resume on
    other data or settings)."""

    def __init__(self, args, accelerator, dataset, nonfinite_totals: Counter, mismatch: str = "error"):
        self.args = args
        self.mismatch = mismatch  # RunConfig.resume_mismatch
        self.accelerator = accelerator
        self.dataset = dataset
        self.nonfinite_totals = nonfinite_totals
        self._content: str | None = None  # the dataset's content fingerprint, computed once
        self._shape: str | None = None  # and its shape fingerprint

    def fingerprint(self) -> dict:
        if self._content is None:
            self._content = content_fingerprint(self.dataset)
            self._shape = shape_fingerprint(self.dataset)
        return data_fingerprint(self.dataset, self._content, self._shape)

    def path(self, directory: str) -> str:
        return os.path.join(directory, RESUME_STATE.format(rank=self.accelerator.process_index))

    def save(self, directory: str, global_step: int, micro_step: int, buffered_inputs) -> None:
        """This process's state at checkpoint `global_step`: GRPO's `_step` and `_buffered_inputs`."""
        os.makedirs(directory, exist_ok=True)
        generate_every = self.args.steps_per_generation * self.args.num_iterations
        mid_cycle = micro_step % generate_every != 0 and buffered_inputs is not None
        state = {
            "version": 2,
            "global_step": global_step,
            "micro_step": micro_step,
            "world_size": self.accelerator.num_processes,
            "buffered_inputs": _to(buffered_inputs, "cpu") if mid_cycle else None,
            "nonfinite": dict(self.nonfinite_totals),
            "data": self.fingerprint(),
            "settings": optimisation_settings(self.args),
        }
        torch.save(state, self.path(directory))

    def mismatches(self, state: dict) -> list[str]:
        """What differs between the checkpoint's run and this one that the resume would silently get wrong."""
        problems = []
        saved, now = state.get("data") or {}, self.fingerprint()
        # checkpoints written before the shape fingerprint existed have none: the sampled one decides for them
        key = "shape" if saved.get("shape") and now.get("shape") else "content"
        if saved.get(key) and now.get(key) and saved[key] != now[key]:
            problems.append(
                f"the training data differs ({key} fingerprint {saved[key]} vs {now[key]}; rows "
                f"{saved.get('rows')} vs {now.get('rows')}): the data position restored from the checkpoint does not "
                f"belong to this corpus (or to these position settings)"
            )
        elif saved and (saved.get("rows"), saved.get("type")) != (now.get("rows"), now.get("type")):
            problems.append(f"the training data differs ({saved.get('type')} of {saved.get('rows')} rows vs "
                            f"{now.get('type')} of {now.get('rows')} rows)")
        current = optimisation_settings(self.args)
        for name, before in (state.get("settings") or {}).items():
            after = current.get(name)
            if name in current and before != after:
                problems.append(
                    f"{name} was {before!r}, now {after!r}: the optimizer state restored from the checkpoint keeps "
                    f"{before!r}, so the new value would be ignored"
                )
        return problems

    def load(self, checkpoint: str) -> tuple[int, object] | None:
        """What `save` wrote, as `(micro_step, buffered_inputs or None)` for GRPO's `_step` / `_buffered_inputs`; the
        non-finite totals are restored here. None (keep TRL's behaviour: regenerate) when there is nothing to restore.
        Raises (`resume_mismatch="error"`) or warns on other data / settings."""
        path = self.path(checkpoint)
        if not os.path.isfile(path):
            logger.warning(f"[rlp_trl] {checkpoint} has no {os.path.basename(path)}: buffered rollouts are regenerated")
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"Cannot resume from {checkpoint}: {os.path.basename(path)} is unreadable ({err}); resume "
                             f"from an earlier checkpoint") from err
        problems = self.mismatches(state)
        if problems:
            text = f"resuming from {checkpoint}: " + "; ".join(problems)
            if self.mismatch == "error":
                raise UsageError(  # a ValueError: one line and exit 2 from the console scripts
                    f"RLPConfig: refusing to resume: {text}. Resume with the original corpus and settings, start a new "
                    f"run from the checkpoint's weights (--model_name_or_path {checkpoint}), or pass "
                    f"--resume_mismatch warn to resume anyway."
                )
            banner = "!" * 78
            logger.warning(f"\n{banner}\n[rlp_trl] WARNING, {text} (resume_mismatch='warn')\n{banner}")
        world_size = self.accelerator.num_processes
        if state["world_size"] != world_size:
            logger.warning(
                f"[rlp_trl] {checkpoint} was written by {state['world_size']} processes, resuming on "
                f"{world_size}: buffered rollouts are regenerated, batches may differ"
            )
            return None
        buffered = state["buffered_inputs"]
        self.nonfinite_totals.update(state.get("nonfinite", {}))
        return state["micro_step"], (None if buffered is None else _to(buffered, self.accelerator.device))
