"""`RunConfig`: the run's options, apart from the algorithm's (`RLPConfig`); read by `rlp_trl.train` and `guard`."""

from dataclasses import dataclass, field

from ..config import check_fields, int_at_least, one_of

NONFINITE_MODES = ("skip", "raise")
RESUME_MISMATCH_MODES = ("error", "warn")

# each field's check, once, as RLPConfig's FIELD_CHECKS (not in the field metadata: HfArgumentParser passes that to
# argparse)
CHECKS = [
    ("on_nonfinite", one_of(NONFINITE_MODES), f"one of {NONFINITE_MODES}"),
    ("nonfinite_patience", int_at_least(1), "an integer >= 1"),
    ("handle_signals", lambda v: isinstance(v, bool), "true or false"),
    ("resume_mismatch", one_of(RESUME_MISMATCH_MODES), f"one of {RESUME_MISMATCH_MODES}"),
]


@dataclass
class RunConfig:
    r"""
    Options of a run (docs/reliability.md); `rlp-train` takes each as a flag or a YAML key.

    Parameters:
        on_nonfinite (`str`, *optional*, defaults to `"skip"`):
            Non-finite rewards (S_pred or S_ema) or gradients. `"skip"`: the groups with a non-finite reward get zero
            advantages and an optimizer step with non-finite gradients is not applied; each event is logged with its
            step and counted (`rlp/nonfinite_rewards`, `rlp/skipped_steps`). `"raise"`: training stops at the first one.
        nonfinite_patience (`int`, *optional*, defaults to `20`):
            Training stops with `NonFiniteError` after this many optimizer steps in a row skipped for non-finite
            gradients, or reward batches in a row with every group excluded (the model is degenerate).
        handle_signals (`bool`, *optional*, defaults to `True`):
            On SIGTERM/SIGINT during `train()`, finish the optimizer step, save a complete checkpoint and stop.
        resume_mismatch (`str`, *optional*, defaults to `"error"`):
            Resuming onto different training data (content fingerprint) or with an optimisation setting that the
            checkpoint's optimizer state overrides (`learning_rate`, `weight_decay`, Adam betas/epsilon, `optim`):
            `"error"` refuses, naming the difference; `"warn"` resumes with a loud warning.
    """

    on_nonfinite: str = field(
        default="skip", metadata={"help": "Non-finite rewards/gradients: 'skip' (exclude, count) or 'raise' (stop)."})
    nonfinite_patience: int = field(
        default=20, metadata={"help": "Stop after this many skipped steps / all-excluded reward batches in a row."})
    handle_signals: bool = field(
        default=True, metadata={"help": "SIGTERM/SIGINT: finish the step, save a checkpoint, stop."})
    resume_mismatch: str = field(
        default="error", metadata={"help": "Resume on other data or overridden optimiser settings: 'error' or 'warn'."})

    def __post_init__(self):
        check_fields(self, CHECKS, "RunConfig")
