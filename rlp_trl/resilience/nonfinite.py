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


# ---------------------------------------------------------------------------------------------- the guard
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

    One per trainer, built and registered as a callback in `RLPTrainer.__init__` (`RLPTrainer.nonfinite_guard`):
    `mode` and `patience` are `RLPConfig.on_nonfinite` / `nonfinite_patience` (validated there); `trainer` gives the
    live training state (step, model, metrics, teacher).
    """

    def __init__(self, trainer, mode: str = "skip", patience: int = 20):
        self.trainer = trainer
        self.mode = mode
        self.patience = patience
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
        return last_complete_checkpoint(self.trainer.args.output_dir, verify_content=False)[0]

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
        limit = RUNAWAY_GAIN_FACTOR * self.trainer.args.reward_horizon * math.log(vocab)
        if largest > limit:
            self._flag("gain", step, f"|information gain| reached {largest:.4g} nats, more than {RUNAWAY_GAIN_FACTOR:g} x "
                       f"H x log(vocabulary size) = {limit:.1f}; check the learning rate")

    def _check_teacher(self, step: int) -> None:
        """A batch with every group excluded: is the EMA teacher itself non-finite? (It never recovers: stop.)"""
        trainer = self.trainer
        teacher = trainer.teacher
        if not teacher.initialized or trainer.args.no_think_baseline != "ema":
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
        if trainer.is_deepspeed_enabled:  # the gradients are not visible as .grad
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

