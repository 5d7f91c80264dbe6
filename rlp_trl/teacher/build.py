"""`build_teacher`: the EMA teacher that fits the model and the training backend; `EMAUpdateCallback` updates it."""

from collections.abc import Callable

import torch
from torch import nn
from transformers import TrainerCallback

from ..usage import UsageError
from .adapter import EMA_ADAPTER, AdapterEMATeacher
from .full import EMATeacher
from .protocol import Teacher
from .zero3 import ZeRO3EMATeacher


def build_teacher(model: nn.Module, args, accelerator) -> Teacher:
    """The EMA teacher that fits the model and the backend; raises, naming the fix, for combinations none can serve.

    Called by `RLPTrainer.__init__` after `GRPOTrainer.__init__` (PEFT already applied, optimizer and DeepSpeed
    engine not yet built).
    """
    from accelerate.utils import DistributedType, is_peft_model

    dtype = torch.float32 if args.teacher_dtype == "float32" else None
    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        raise UsageError(
            "RLPTrainer: FSDP is not supported by the EMA teacher (FSDP parameters are flat shards that a teacher "
            "cannot be copied from). Use DeepSpeed ZeRO-3, which shards the policy and the teacher alike: "
            "accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml ... (docs/scaling.md)."
        )
    zero_stage = state.deepspeed_plugin.zero_stage if state.distributed_type == DistributedType.DEEPSPEED else None
    if is_peft_model(model):
        if args.teacher_device == "cpu":
            raise UsageError(
                "RLPConfig: teacher_device='cpu' cannot be served with PEFT: the teacher is an EMA of the adapter "
                f"(a second adapter {EMA_ADAPTER!r} on the shared base), adapter-sized and living next to the base "
                "weights. Drop --teacher_device cpu (use 'auto'), or train without --use_peft for a full teacher."
            )
        teacher = AdapterEMATeacher(args.ema_decay, dtype)
        teacher.attach(model)
        return teacher
    if zero_stage == 3:
        return ZeRO3EMATeacher(
            args.ema_decay, dtype, ds_config=lambda: accelerator.state.deepspeed_plugin.deepspeed_config,
            offload=args.teacher_device == "cpu",
        )
    return EMATeacher(args.ema_decay, dtype, device="cpu" if args.teacher_device == "cpu" else None)


class EMAUpdateCallback(TrainerCallback):
    """phi <- tau * phi + (1 - tau) * theta after every optimizer step (Alg. 1, line 15), once the teacher exists.

    Runs at `on_step_end`, after every `on_optimizer_step` callback: checks of the updated weights (the run's
    non-finite guard, `rlp_trl.resilience`) and the marker-row scaling (`rlp_trl.marker_lr`) come first, so a broken
    policy is never averaged into the teacher.

    Args:
        teacher: the run's teacher.
        policy: returns the unwrapped policy.
    """

    def __init__(self, teacher: Teacher, policy: Callable[[], nn.Module]):
        self.teacher, self.policy = teacher, policy

    def on_step_end(self, args, state, control, **kwargs):
        if self.teacher.initialized:
            self.teacher.update(self.policy())
