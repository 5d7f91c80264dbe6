"""Non-finite values and runaway runs (docs/reliability.md).

* Rewards (S_pred, S_ema) and gradients are checked; per `on_nonfinite` the offending groups / optimizer steps are
  excluded (`"skip"`, counted and reported with the step) or training stops (`"raise"`). After the optimizer step,
  before the EMA update, the policy's weights are checked: a non-finite policy stops training and is neither averaged
  into the teacher nor saved. A non-finite teacher, or `nonfinite_patience` reward batches in a row with every group
  excluded (or skipped optimizer steps in a row), stop training with `NonFiniteError`.
* Runaway runs (finite but absurd): |information gain| above `RUNAWAY_GAIN_FACTOR * H * log(vocabulary)`, weights
  above `RUNAWAY_WEIGHT_FACTOR` times their largest value at the start, or an exactly zero gradient for
  `ZERO_GRAD_STEPS` steps in a row are logged as warnings and counted (`rlp/runaway_flags`).
* Before a checkpoint is written, the policy, the EMA teacher and the optimizer moments are checked to be finite
  (`verify_state_finite`, one reduction per tensor).
"""

import math
from collections import Counter, deque

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .checkpoints import last_complete_checkpoint

logger = logging.get_logger("rlp_trl")

RUNAWAY_GAIN_FACTOR = 10.0
RUNAWAY_WEIGHT_FACTOR = 10.0
ZERO_GRAD_STEPS = 10


class NonFiniteError(RuntimeError):
    """Raised when non-finite rewards or gradients are met with `on_nonfinite="raise"` (or cannot be skipped)."""


def sampling_error(err: BaseException, step: int) -> "NonFiniteError | None":
    """The `NonFiniteError` to raise (`from err`) when sampling thoughts at optimizer step `step` failed because the
    policy's probabilities are NaN/inf (torch's multinomial: "probability tensor contains either inf, nan or element
    < 0"); None for any other error (re-raise it unchanged)."""
    if not isinstance(err, RuntimeError) or "probability tensor contains" not in str(err):
        return None
    return NonFiniteError(
        f"step {step}: sampling thoughts failed because the policy produced non-finite probabilities (NaN/inf "
        f"logits). The weights or activations are degenerate (check the learning rate and the dtype; fp16 overflows "
        f"more easily than bf16)."
    )


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
    return list(teacher.named_state_tensors()) if teacher is not None and teacher.initialized else []


def optimizer_tensors(optimizer, model) -> list:
    """(name, tensor) of the optimizer's per-parameter state (Adam's moments), named after `model`'s parameters."""
    state = getattr(optimizer, "state", None) if optimizer is not None else None  # not every optimizer has torch's
    if not state:
        return []
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    try:
        for i, (param, values) in enumerate(state.items()):
            for key, value in (values or {}).items():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                    out.append((f"{key} of {names.get(id(param), f'parameter #{i}')}", value))
    except (AttributeError, TypeError):  # an optimizer whose state is not torch's layout
        return out
    return out


def verify_state_finite(accelerator, model, teacher, optimizer, step: int, output_dir: str) -> None:
    """Before checkpoint `step` is written: the policy, the EMA teacher and the optimizer moments hold no NaN/inf.
    Called on every process (one collective)."""
    model = accelerator.unwrap_model(model)
    groups = {
        "the policy": [(n, p) for n, p in model.named_parameters()],
        "the EMA teacher": teacher_tensors(teacher),
        "the optimizer state": optimizer_tensors(optimizer, model),
    }
    found = {what: scan_tensors(named)[0] for what, named in groups.items()}
    local = [f"{what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" for what, names in found.items() if names]
    count, _ = _reduce_scan(accelerator, local, 0.0)
    if count:
        last, _ = last_complete_checkpoint(output_dir, verify_content=False)
        where = "; ".join(local) if local else "on another process"
        raise NonFiniteError(
            f"step {step}: not saving {PREFIX_CHECKPOINT_DIR}-{step}: non-finite values (NaN/inf) in {where}. A "
            f"checkpoint is marked complete only when its tensors are finite. The last complete checkpoint is {last}."
        )


def runaway_gain_limit(model, horizon: int) -> float | None:
    """|information gain| above which a batch is flagged as runaway: `RUNAWAY_GAIN_FACTOR * H * log(vocabulary)`
    (a thought cannot move a log-prob by more than log(V) per token without the model being broken); None when the
    vocabulary size is unknown."""
    try:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        vocab = int(config.vocab_size)
    except (AttributeError, TypeError, ValueError):
        return None
    return RUNAWAY_GAIN_FACTOR * horizon * math.log(vocab) if vocab >= 2 else None


# ---------------------------------------------------------------------------------------------- the guard
class NonFiniteGuard(TrainerCallback):
    """Reacts to non-finite rewards (reported by the step), gradients (before the optimizer step) and weights (after
    it, before the EMA update), and flags runaway runs. Built by `rlp_trl.resilience.guard`, which registers it.

    Rewards: the step always excludes a group holding a non-finite reward (`rlp_trl.rewards.exclude_nonfinite_groups`)
    and hands what it found to `on_rewards`. `"skip"` (`RunConfig.on_nonfinite`) logs each event with its step and
    totals it in `totals` (saved with checkpoints); `"raise"` stops at the first one with a `NonFiniteError`. After
    `patience` reward batches in a row with every group excluded the model is degenerate and training stops; such a
    batch also checks the EMA teacher, and a non-finite teacher stops training at once.
    Gradients: an optimizer step whose gradients are not all finite is not applied (`"skip"`: the gradients are
    dropped, so the optimizer leaves every parameter and its moments untouched; `patience` such steps in a row stop
    training) or stops training (`"raise"`). Under DeepSpeed the gradients are not visible as `.grad` and only the
    reward and weight checks apply; with fp16 loss scaling the scaler already skips such steps and the guard counts
    them. Weights: a policy that is not finite after an optimizer step stops training.
    Runaway flags (warnings, counted in `totals["runaway"]` and `rlp/runaway_flags`): see the module docstring.

    Args:
        mode, patience: `RunConfig.on_nonfinite` / `nonfinite_patience`.
        accelerator: the trainer's (reductions across processes, the fp16 scaler, unwrapping the model).
        teacher: the EMA teacher whose weights are checked, or None (`no_think_baseline="live"`).
        output_dir: where the last complete checkpoint is looked up for the messages.
        gain_limit: |information gain| above which a batch is flagged (None: not checked).
        deepspeed: gradients live in the engine, not in `.grad`.
        log: receives the metrics the guard logs outside the step (`rlp/skipped_steps`).
    """

    def __init__(self, mode: str, patience: int, *, accelerator, teacher=None, output_dir: str = ".",
                 gain_limit: float | None = None, deepspeed: bool = False, log=None):
        self.mode, self.patience = mode, patience
        self.accelerator, self.teacher, self.output_dir = accelerator, teacher, output_dir
        self.gain_limit, self.deepspeed, self.log = gain_limit, deepspeed, log or (lambda metrics: None)
        self.totals = Counter()
        self.events = deque(maxlen=1000)
        self._consecutive = 0
        self._excluded_streak = 0
        self._zero_grad_streak = 0
        self.initial_weight_max: float | None = None

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
        return last_complete_checkpoint(self.output_dir, verify_content=False)[0]

    def check_rewards(self, found, step: int, mode: str = "train") -> dict:
        """React to what the step found in its rewards (`rlp_trl.rewards.NonFiniteRewards`) at optimizer step `step`;
        returns the metrics to log with the step."""
        metrics = {}
        if mode == "train":
            if self.gain_limit is not None and found.largest > self.gain_limit:
                self._flag("gain", step, f"|information gain| reached {found.largest:.4g} nats, more than "
                           f"{RUNAWAY_GAIN_FACTOR:g} x H x log(vocabulary size) = {self.gain_limit:.1f}; check the "
                           f"learning rate")
            metrics["rlp/runaway_flags"] = float(self.totals["runaway"])
        if found.count == 0:
            if mode == "train":
                self._excluded_streak = 0
            return metrics
        groups = found.excluded
        self._record(
            "rewards", step, found.count,
            f"step {step} ({mode}): {found.count} non-finite reward(s) in {int(groups.sum())} of {groups.numel()} "
            f"group(s)",
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
        return metrics

    def on_rewards(self, args, state, control, found=None, mode: str = "train", **kwargs) -> dict:
        """RLP's step event (`RLPTrainer._generate_and_score_completions`): what it found in its rewards."""
        return self.check_rewards(found, state.global_step + 1, mode)

    def _check_teacher(self, step: int) -> None:
        """A batch with every group excluded: is the EMA teacher itself non-finite? (It never recovers: stop.)"""
        teacher = self.teacher
        if teacher is None or not teacher.initialized:
            return
        bad, _ = scan_tensors(teacher_tensors(teacher))
        count, _ = _reduce_scan(self.accelerator, bad, 0.0)
        if count:
            where = ", ".join(bad[:3]) if bad else "its shards on another process"
            raise NonFiniteError(
                f"step {step}: the EMA teacher holds non-finite weights ({where}): every S_ema, hence every reward, is "
                f"NaN/inf and the run cannot recover. Training stopped; the last complete checkpoint is "
                f"{self._last_good()}."
            )

    def check_weights_after_step(self, model, step: int) -> None:
        """After the optimizer step, before the EMA update: the trained weights must be finite (a corrupted optimizer
        state or an overflowing update can break them with finite gradients). Called on every process."""
        model = self.accelerator.unwrap_model(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        bad, largest = scan_tensors(named)
        count, largest = _reduce_scan(self.accelerator, bad, largest)
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

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        # runs before the EMA update (`rlp_trl.teacher.EMAUpdateCallback.on_step_end`): a broken policy is never averaged
        self.check_weights_after_step(model, state.global_step + 1)

    def check_gradients(self, params: list, step: int) -> dict:
        """Before the optimizer step: skip it (drop the gradients) or stop when a gradient is not finite; flag a
        gradient that stays exactly zero. Returns the metrics to log."""
        if not params:
            return {}
        device = params[0].grad.device
        # one reduction per tensor (aminmax propagates NaN), stacked on one device: a single host sync per step
        values = []
        for p in params:
            low, high = p.grad.aminmax()
            values.append(torch.maximum(-low, high).float().to(device))
        values = torch.stack(values)
        summary = torch.stack([(~torch.isfinite(values)).sum().float(), torch.nan_to_num(values, nan=0.0, posinf=0.0).max()])
        if self.accelerator.num_processes > 1:  # sharded gradients (FSDP) differ per process
            summary = self.accelerator.reduce(summary, reduction="sum")
        bad, largest = int(summary[0].item()), float(summary[1].item())
        metrics = {"rlp/skipped_steps": float(self.totals["steps"] + (bad > 0))}
        if bad == 0:
            self._consecutive = 0
            self._zero_grad_streak = self._zero_grad_streak + 1 if largest == 0.0 else 0
            if self._zero_grad_streak and self._zero_grad_streak % ZERO_GRAD_STEPS == 0:
                self._flag("zero_grad", step, f"the gradient has been exactly zero for {self._zero_grad_streak} steps in "
                           f"a row (saturated probabilities or every reward equal: nothing is learned)")
            return metrics
        if self.accelerator.scaler is not None:  # fp16: GradScaler skips this step itself
            self.totals["steps"] += 1
            return metrics
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
        return metrics

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.deepspeed:  # the gradients are not visible as .grad
            return
        params = [p for p in model.parameters() if p.grad is not None]
        self.log(self.check_gradients(params, state.global_step + 1))
