"""`ZeRO3EMATeacher`: the full-weight EMA teacher under DeepSpeed ZeRO-3, partitioned like the policy.

The policy's parameters are shards, so a deep copy would clone empty tensors (trl#3041). The teacher is constructed
from the model's config under `deepspeed.zero.Init` with the policy's ZeRO config (partitioned across the ranks
exactly like the policy, never materialised whole), wrapped in a parameter-only DeepSpeed engine as TRL does for its
reference model (`prepare_deepspeed`), and filled, updated, saved and restored chunk by chunk inside
`deepspeed.zero.GatheredParameters` (rank 0 computes, then broadcasts). `teacher_device="cpu"` offloads its shards
to CPU memory (ZeRO-3 parameter offload).
"""

import contextlib
import copy

import torch
from torch import nn

from .full import EMATeacher
from .scorer import Scorer
from .sharding import chunks, full_numel, gathered, rank


def _teacher_ds_config(policy_config: dict, dtype: torch.dtype, offload: bool, hidden_size: int | None) -> dict:
    """The policy's DeepSpeed config, stripped to what a parameter-only ZeRO-3 engine needs (as TRL's
    `prepare_deepspeed`), in the teacher's dtype, with parameters offloaded to the CPU if asked."""
    config = copy.deepcopy(policy_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    zero.pop("offload_optimizer", None)
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if hidden_size is not None:  # the values HF fills in for "auto" (and TRL sets for its reference model)
        for key, value in (
            ("reduce_bucket_size", hidden_size * hidden_size),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ("stage3_param_persistence_threshold", 10 * hidden_size),
        ):
            if zero.get(key, "auto") == "auto":
                zero[key] = value
    for key in [k for k, v in zero.items() if v == "auto"]:
        zero.pop(key)
    for key in [k for k, v in config.items() if v == "auto"]:
        config.pop(key)
    half = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    config["bf16"] = {"enabled": half == "bf16"}
    config["fp16"] = {"enabled": half == "fp16"}
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    config.pop("train_batch_size", None)  # recomputed by DeepSpeed from micro batch x accumulation x world size
    return config


class ZeRO3EMATeacher(EMATeacher):
    """The EMA teacher under DeepSpeed ZeRO-3 (see the module docstring); `module` is the engine's module.

    Args:
        decay, dtype: as in `EMATeacher`.
        ds_config: a callable returning the policy's DeepSpeed config (read when the teacher is built, after
            accelerate has filled in its "auto" values).
        offload: keep the teacher's shards in CPU memory (ZeRO-3 parameter offload), whatever the policy does.
    """

    load_on_rank0_only = True  # rank 0 reads the file; gathering with modifier_rank=0 hands each rank its shard

    def __init__(self, decay: float, dtype: torch.dtype | None, ds_config, offload: bool = False):
        super().__init__(decay, dtype)
        self._ds_config = ds_config
        self.offload = offload
        self.engine = None

    def _build(self, model: nn.Module) -> None:
        import deepspeed
        from transformers import initialization as hf_init
        from transformers.modeling_utils import local_torch_dtype, set_zero3_state

        try:  # transformers >= 5.23; before, its own ZeRO-3 loading had no such guard (the buffers are copied below)
            from transformers.integrations.deepspeed import prevent_arange_dtype_change
        except ImportError:
            prevent_arange_dtype_change = contextlib.nullcontext

        dtype = self.dtype or next(p.dtype for p in model.parameters() if p.is_floating_point())
        config = copy.deepcopy(model.config)
        config.dtype = dtype
        hidden = getattr(config.get_text_config(), "hidden_size", None)
        ds_config = _teacher_ds_config(self._ds_config(), dtype, self.offload, hidden)
        # Constructed already partitioned: weights are never materialised whole, and not initialised (filled next).
        with (
            hf_init.no_init_weights(),
            local_torch_dtype(dtype),
            prevent_arange_dtype_change(),
            # dtype from the config (its bf16/fp16 flags are the teacher's dtype): DeepSpeed 0.19's `Init(dtype=...)`
            # ignores the argument where the accelerator has no fp16 (`dtype or fp16 if ... else bf16 if ...`), so a
            # float32 teacher came out bf16 on CPUs without fp16 support
            deepspeed.zero.Init(config_dict_or_path=ds_config),
            set_zero3_state(),
        ):
            module = type(model)(config)
        module.tie_weights()  # as `from_pretrained` / `_from_config` do after a ZeRO-3 construction
        module.requires_grad_(False)
        student_buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, buf in module.named_buffers():  # e.g. rotary inv_freq: not partitioned, copied as is
                if name in student_buffers:
                    buf.copy_(student_buffers[name])
        self.engine, *_ = deepspeed.initialize(model=module, config=ds_config)
        self.engine.eval()
        self.module = self.engine.module

    @torch.no_grad()
    def _apply(self, model: nn.Module, fn) -> None:
        """fn(phi, theta) on full tensors, chunk by chunk; rank 0 computes, then broadcasts the teacher shards."""
        pairs = self._pairs(model)
        for chunk in chunks(pairs, lambda pair: full_numel(pair[1])):
            with gathered([s for _, _, s in chunk]), gathered([t for _, t, _ in chunk], modifier_rank=0):
                if rank() == 0:
                    for _, phi, theta in chunk:
                        fn(phi.data, theta.data)

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        self._build(model)
        self._apply(model, lambda phi, theta: phi.copy_(theta))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.decay
        self._apply(model, lambda phi, theta: phi.lerp_(theta.to(phi.dtype), weight))
        self.num_updates += 1

    @contextlib.contextmanager
    def scoring(self, model: nn.Module | None = None):
        scorer = Scorer(self.module, zero3=True)
        yield scorer
        scorer.finish()

    def state_tensors(self, write: bool) -> dict[str, torch.Tensor]:
        """Full tensors, gathered chunk by chunk on every rank (a collective); kept only where `write`."""
        out = {}
        named = list(self.module.named_parameters())
        for chunk in chunks(named, lambda item: item[1].ds_numel):
            with gathered([p for _, p in chunk]):
                if write:
                    out.update({n: p.detach().to("cpu", copy=True).contiguous() for n, p in chunk})
        return out
