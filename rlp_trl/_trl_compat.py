"""The private TRL / transformers members RLPTrainer relies on, checked so that a release that changes them fails early.

`RLPTrainer` subclasses TRL's `GRPOTrainer` and overrides or calls some of its private methods; TRL does not promise
to keep those. A release that renamed one would not fail loudly: an override of a method that no longer exists is
never called, and training would silently be plain GRPO. So:

* `check_trl_compat()` runs at `import rlp_trl` (rlp_trl/__init__.py): the helper imports, the private methods with
  the parameters RLP passes, and the callback events it hooks;
* `check_trl_compat(trainer)` runs at the end of `RLPTrainer.__init__`: the attributes `GRPOTrainer.__init__` sets
  that RLP reads or writes (`_metrics`, `_logs`, `_step`, `_buffered_inputs`, ...).

Either raises `IncompatibleTRLError` naming every missing member, the versions found and the supported range.
The code that uses these members is unchanged; this module only lists them (keep it in step with the code:
tests/test_compat.py greps the package for `super()._x` / `trainer._x` uses that are not listed here).
"""

from __future__ import annotations

import functools
import importlib
import inspect

# Keep in step with setup.cfg (tests/test_compat.py checks) and docs/quickstart.md#installation.
SUPPORTED = {"trl": ">=1.16.0", "transformers": ">=5.17.0"}
TESTED = {"trl": "1.16.0", "transformers": "5.17.0 (oldest) and 5.25.0 (newest)"}

# (module, attribute): helpers imported from TRL / transformers internals.
IMPORTS = [
    ("trl", "GRPOTrainer"),
    ("trl", "GRPOConfig"),
    ("trl.trainer.utils", "pad"),
    ("trl.trainer.utils", "selective_log_softmax"),
    ("trl.extras.profiling", "profiling_context"),
    ("trl.models", "unwrap_model_for_generation"),
    ("trl.trainer.utils", "use_adapter"),  # the reference model for beta > 0: the base with adapters off
    ("transformers.generation.utils", "GenerationMixin"),
    ("transformers.trainer_utils", "TrainOutput"),
    ("transformers.trainer_callback", "TrainerState"),
    ("transformers.cache_utils", "DynamicCache"),
    ("transformers.cache_utils", "DynamicLayer"),
    ("transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR"),
    ("transformers.trainer_utils", "rotate_checkpoints"),
    ("transformers.modeling_utils", "local_torch_dtype"),  # ZeRO-3 teacher
    ("transformers.modeling_utils", "set_zero3_state"),  # ZeRO-3 teacher
]
# Used where present, with a fallback: transformers.integrations.deepspeed.prevent_arange_dtype_change (5.23+, the
# ZeRO-3 teacher's construction; rlp_trl/teacher/zero3.py falls back to what older transformers do themselves).

# method of GRPOTrainer (or its base transformers.Trainer) -> parameters RLP passes or receives (by name).
# Overridden by RLPTrainer (an override of a method TRL no longer calls would be dead code) or called
# through super().
METHODS = {
    "_generate_and_score_completions": ["inputs"],
    "_generate": ["prompts"],  # returns the 8-tuple (prompt_ids, completion_ids, ..., tool_images) of TRL 1.16
    "_get_per_token_logps_and_entropies": [
        "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy", "compute_aux_loss",
    ],
    "_compute_loss": ["model", "inputs"],  # not overridden: eq. 8 is TRL's loss_type="grpo" over `tool_mask` (below)
    "_tokenize_prompts": ["prompts"],
    "_set_signature_columns_if_needed": [],
    "_save_checkpoint": ["model", "trial"],
    "_save": ["output_dir", "state_dict"],
    "_load_optimizer_and_scheduler": ["checkpoint"],
    "_get_output_dir": ["trial"],
    "train": ["resume_from_checkpoint", "trial", "ignore_keys_for_eval"],
}

# Private transformers members the prefix-shared sampler (rlp_trl/fast/generation.py) calls, with the parameters it
# passes: the same generation-config preparation, special tokens and logits processors `generate` uses, so that the
# sampler draws what `generate` draws (tests/test_speed_correctness.py checks the tokens are identical). It also reads
# `GenerationConfig._pad_token_tensor` / `_eos_token_tensor`, which `_prepare_special_tokens` sets (same test).
GENERATION_METHODS = {
    "_prepare_generation_config": ["generation_config"],
    "_prepare_special_tokens": ["generation_config", "kwargs_has_attention_mask", "device"],
    "_get_logits_processor": ["generation_config", "input_ids_seq_length", "encoder_input_ids", "device", "model_kwargs"],
}

# Where RLP keeps a copy of TRL behaviour that TRL does not expose as a callable (TRL 1.16), and the test that fails
# when TRL's behaviour moves.
MIRRORS = {
    "rlp_trl.metrics.generation_metrics": ("GRPOTrainer._generate's completion metrics",
                                           "tests/test_speed_correctness.py (sharing on vs off log the same values)"),
    "rlp_trl.rollouts.vllm_is_ratio": ("GRPOTrainer._generate_and_score_completions' vLLM importance weights",
                                       "tests/test_rollouts.py (four modes by hand; vLLM is not installable here)"),
    "RLPTrainer._behaviour_logps": ("GRPOTrainer._generate_and_score_completions' old/ref log-prob condition",
                                    "tests/test_trainer.py::test_old_logps_are_the_behaviour_policy, KL runs"),
    "RLPTrainer.sample_thoughts": ("GRPOTrainer._generate_single_turn's generation context stack",
                                   "tests/test_distributed.py (ZeRO-3 sampling), tests/test_speed_correctness.py"),
}

# TrainerCallback events RLP's callbacks implement (EMA update, non-finite guard, graceful stop).
CALLBACK_EVENTS = ["on_optimizer_step", "on_pre_optimizer_step", "on_step_end"]
# Trainer methods the run (rlp_trl.resilience.run) wraps on one trainer instance to stage checkpoints
WRAPPED = ["_save_checkpoint", "_get_output_dir"]

# Attributes GRPOTrainer.__init__ (or Trainer.__init__) sets that RLP reads or writes.
ATTRIBUTES = [
    "_metrics", "_logs", "_step", "_buffered_inputs", "_signature_columns", "_tokenizer", "_dist",
    "eos_token_ids", "generation_kwargs", "generation_config", "use_vllm", "use_transformers_continuous_batching",
    "num_generations", "num_generations_eval", "num_iterations", "beta", "ref_model",
    "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max",
    "is_deepspeed_enabled", "is_fsdp_enabled", "model_wrapped",
]
# RLP's action (the thought and a sampled close marker) reaches the loss only through this input of TRL's
# `_compute_loss`: a TRL that stopped reading it would train on the teacher-forced target tokens.
LOSS_INPUTS = ["tool_mask", "advantages", "old_per_token_logps", "importance_sampling_ratio"]
# The log buffers RLP appends to (TRL's log_completions table).
LOG_KEYS = ["prompt", "completion", "rewards", "advantages", "extra"]


class IncompatibleTRLError(ImportError):
    """The installed TRL / transformers lack members RLPTrainer relies on."""


def _version(dist: str) -> str:
    try:
        return importlib.import_module(dist).__version__
    except Exception:  # noqa: BLE001 - not installed or no __version__: say so in the message
        return "not importable"


def _error(problems: list[str]) -> IncompatibleTRLError:
    found = ", ".join(f"{d} {_version(d)}" for d in SUPPORTED)
    supported = ", ".join(f"{d}{r}" for d, r in SUPPORTED.items())
    tested = "; ".join(f"{d} {v}" for d, v in TESTED.items())
    return IncompatibleTRLError(
        f"rlp_trl needs private TRL/transformers members that this installation lacks ({found}): "
        + "; ".join(problems)
        + f". Supported: {supported} (tested: {tested}). Install a supported version, e.g. pip install \"trl==1.16.0\""
    )


def missing_class_members(grpo_trainer=None, trainer_callback=None) -> list[str]:
    """Problems with the imports, methods and signatures (empty when compatible). Arguments: for tests."""
    problems = []
    for module, name in IMPORTS:
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            problems.append(f"cannot import {name} from {module} ({type(e).__name__})")
    if grpo_trainer is None:
        try:
            from trl import GRPOTrainer as grpo_trainer
        except ImportError:
            return problems
    if trainer_callback is None:
        from transformers import TrainerCallback as trainer_callback
    for name, params in METHODS.items():
        method = getattr(grpo_trainer, name, None)
        if not callable(method):
            problems.append(f"{grpo_trainer.__name__}.{name} is missing")
            continue
        try:
            have = inspect.signature(method).parameters
        except (TypeError, ValueError):
            continue
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in have.values())
        lost = [p for p in params if p not in have and not takes_kwargs]
        if lost:
            problems.append(f"{grpo_trainer.__name__}.{name} no longer takes {', '.join(lost)}")
    try:
        loss_source = inspect.getsource(grpo_trainer._compute_loss)
    except (AttributeError, OSError, TypeError):
        loss_source = None
    if loss_source is not None:
        unread = [key for key in LOSS_INPUTS if f'"{key}"' not in loss_source]
        if unread:
            problems.append(f"{grpo_trainer.__name__}._compute_loss no longer reads {', '.join(unread)}")
    from transformers.generation.utils import GenerationMixin

    for name, params in GENERATION_METHODS.items():
        method = getattr(GenerationMixin, name, None)
        if not callable(method):
            problems.append(f"transformers' GenerationMixin.{name} is missing")
            continue
        have = inspect.signature(method).parameters
        lost = [p for p in params if p not in have]
        if lost:
            problems.append(f"GenerationMixin.{name} no longer takes {', '.join(lost)}")
    for event in CALLBACK_EVENTS:
        if not callable(getattr(trainer_callback, event, None)):
            problems.append(f"TrainerCallback.{event} is missing")
    return problems


def missing_instance_members(trainer) -> list[str]:
    """Problems with the attributes a constructed GRPOTrainer has (empty when compatible)."""
    problems = [f"GRPOTrainer instances have no {name}" for name in ATTRIBUTES if not hasattr(trainer, name)]
    metrics = getattr(trainer, "_metrics", None)
    if metrics is not None and not (isinstance(metrics, dict) and {"train", "eval"} <= set(metrics)):
        problems.append("GRPOTrainer._metrics is not a {'train': ..., 'eval': ...} dict")
    logs = getattr(trainer, "_logs", None)
    if logs is not None and not (isinstance(logs, dict) and set(LOG_KEYS) <= set(logs)):
        problems.append(f"GRPOTrainer._logs lacks {sorted(set(LOG_KEYS) - set(logs or {}))}")
    return problems


@functools.cache
def _check_classes() -> None:
    problems = missing_class_members()
    if problems:
        raise _error(problems)


def check_trl_compat(trainer=None) -> None:
    """Raise `IncompatibleTRLError` if TRL/transformers lack a member RLP uses (class level; instance too if given)."""
    _check_classes()
    if trainer is not None:
        problems = missing_instance_members(trainer)
        if problems:
            raise _error(problems)
