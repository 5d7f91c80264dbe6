"""`AdapterEMATeacher`: the EMA teacher under PEFT (LoRA, QLoRA), a second adapter "rlp_ema" on the same model.

The frozen (possibly 4-bit) base is shared, so the teacher costs adapter-sized memory. The EMA is kept in a float32
shadow of the adapter weights and written into the "rlp_ema" adapter (in the trained adapter's dtype); scoring
switches the active adapter to "rlp_ema". The base with adapters disabled is not the teacher.
"""

import contextlib
import copy
import functools

import torch
from torch import nn

from . import checkpoint
from .scorer import Scorer
from .sharding import gathered, is_zero3, local_nbytes, rank

EMA_ADAPTER = "rlp_ema"


class AdapterEMATeacher:
    """EMA of the trained PEFT adapter, held as a second adapter `adapter_name` on the same `PeftModel`.

    Implements `Teacher` (protocol.py). `attach(model)` must run before the optimizer and DeepSpeed see the model
    (the trainer calls it at init): the new adapter is frozen and partitioned along with the model. Its values are
    set lazily at the first batch.

    Args:
        decay: tau (validated by `RLPConfig`).
        dtype: dtype of the EMA shadow (`None`: the trained adapter's dtype). The "rlp_ema" adapter itself always has
            the trained adapter's dtype, so ZeRO-3 all-gathers see one dtype per module (trl#6089).
        adapter_name: name of the teacher adapter.
    """

    kind = "adapter"
    load_on_rank0_only = False  # every rank reads the saved shadow (adapter-sized) and keeps all of it

    def __init__(self, decay: float, dtype: torch.dtype | None = torch.float32, adapter_name: str = EMA_ADAPTER):
        self.decay = decay
        self.dtype = dtype
        self.adapter_name = adapter_name
        self.source_adapter: str | None = None
        self.shadow: dict[str, torch.Tensor] | None = None  # "rlp_ema" parameter name -> EMA value, on every rank
        self.num_updates = 0

    @property
    def initialized(self) -> bool:
        return self.shadow is not None

    @property
    def module(self):
        raise AttributeError(
            "the PEFT EMA teacher is an adapter on the policy, not a separate module: score with "
            "`with teacher.scoring(unwrapped_model) as m: m(...)`"
        )

    def attach(self, model: nn.Module) -> None:
        self.source_adapter = model.active_adapter
        if self.adapter_name not in model.peft_config:
            config = copy.deepcopy(model.peft_config[self.source_adapter])
            if hasattr(config, "lora_dropout"):
                config.lora_dropout = 0.0  # the teacher scores without adapter dropout, whatever the model's mode
            model.add_adapter(self.adapter_name, config)
        pairs = self._pairs(model)
        paired = {id(s) for _, _, s in pairs}
        stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in paired]
        if stray:
            raise ValueError(
                f"The PEFT EMA teacher mirrors the trained adapter {self.source_adapter!r}, but these trainable "
                f"parameters are outside it: {stray[:5]}. Train only adapter weights (put extra modules in the LoRA "
                "config's `modules_to_save`), or train without PEFT for a full-weight teacher."
            )
        with torch.no_grad():
            for _, phi, theta in pairs:
                if phi.dtype != theta.dtype:
                    phi.data = phi.data.to(theta.dtype)
                phi.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        """(teacher parameter name, teacher parameter, trained parameter) for every parameter of the trained adapter."""
        src, dst = f".{self.source_adapter}.", f".{self.adapter_name}."
        params = dict(model.named_parameters())
        pairs = []
        for name, theta in params.items():
            dotted = name + "."  # LoRA weights are `...lora_A.default.weight`, trainable tokens `...delta.default`
            if src in dotted:
                teacher_name = dotted.replace(src, dst)[:-1]
                if teacher_name not in params:
                    raise ValueError(f"adapter parameter {name} has no {self.adapter_name!r} counterpart")
                pairs.append((teacher_name, params[teacher_name], theta))
        if not pairs:
            raise ValueError(f"no parameters of adapter {self.source_adapter!r} found for the PEFT EMA teacher")
        return pairs

    def adapter_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters of the "rlp_ema" adapter inside `model` (what scoring runs with)."""
        return [phi for _, phi, _ in self._pairs(model)]

    @torch.no_grad()
    def _write(self, pairs) -> None:
        """shadow -> the "rlp_ema" adapter (rank 0 writes and broadcasts under ZeRO-3)."""
        teachers = [t for _, t, _ in pairs]
        sharded = any(is_zero3(t) for t in teachers)
        with gathered(teachers, modifier_rank=0):
            if not sharded or rank() == 0:
                for name, phi, _ in pairs:
                    phi.data.copy_(self.shadow[name])

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        pairs = self._pairs(model)
        with gathered([s for _, _, s in pairs]):  # every rank keeps the full (adapter-sized) shadow
            self.shadow = {n: s.detach().to(dtype=self.dtype or s.dtype, copy=True) for n, _, s in pairs}
        self._write(pairs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = self._pairs(model)
        with gathered([s for _, _, s in pairs]):
            for name, _, theta in pairs:
                shadow = self.shadow[name]
                shadow.lerp_(theta.detach().to(device=shadow.device, dtype=shadow.dtype), 1.0 - self.decay)
        self._write(pairs)
        self.num_updates += 1

    @contextlib.contextmanager
    def scoring(self, model: nn.Module):
        """Score with the "rlp_ema" adapter active (it has no dropout); restores the adapter and the grad flags.

        The model's train/eval mode is left alone: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights
        for inference at the first eval-mode no-grad forward, after which no gradient flows through them (QLoRA
        would silently stop learning)."""
        flags = [(p, p.requires_grad) for p in model.parameters()]
        previous = model.active_adapter
        model.set_adapter(self.adapter_name, inference_mode=True)
        scorer = Scorer(model, zero3=any(is_zero3(p) for p, _ in flags[:1]))
        try:
            yield scorer
            scorer.finish()
        finally:
            model.set_adapter(previous)
            for p, flag in flags:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)

    @contextlib.contextmanager
    def hidden_from_saving(self, model: nn.Module):
        """Keep the teacher adapter out of `PeftModel.save_pretrained` (the Trainer's model saves): outputs hold the
        trained adapter only, and the EMA goes to `rlp_teacher.safetensors` in checkpoints. PEFT saves every adapter in
        `peft_config` unless told which (`selected_adapters`), and filters the others' tensors out by that same list
        (so removing the teacher from `peft_config` would leave its tensors in the trained adapter's file)."""
        model.save_pretrained = functools.partial(
            type(model).save_pretrained, model, selected_adapters=[self.source_adapter]
        )
        try:
            yield
        finally:
            del model.save_pretrained

    def named_state_tensors(self):
        yield from (self.shadow or {}).items()

    def memory_bytes(self, model: nn.Module | None = None) -> int:
        total = sum(t.numel() * t.element_size() for t in (self.shadow or {}).values())
        if model is not None:
            total += sum(local_nbytes(t) for t in self.adapter_parameters(model))
        return total

    # -- checkpoints (the format and its checks: checkpoint.py); the file holds the shadow
    def save(self, directory: str, write: bool = True) -> None:
        checkpoint.save(self, directory, write)

    def load(self, directory: str, model: nn.Module) -> bool:
        return checkpoint.load(self, directory, model)

    def state_tensors(self, write: bool) -> dict[str, torch.Tensor]:
        return {n: t.detach().to("cpu").contiguous() for n, t in self.shadow.items()} if write else {}

    @torch.no_grad()
    def load_state_tensors(self, reader, model: nn.Module, path: str) -> None:
        pairs = self._pairs(model)
        keys = set(reader.keys())
        missing = [n for n, _, _ in pairs if n not in keys]
        if missing:
            raise ValueError(f"{path} has no weights for {missing[:5]}: it was written for another adapter")
        with gathered([s for _, _, s in pairs]):
            self.shadow = {
                n: reader.get_tensor(n).to(device=s.device, dtype=self.dtype or s.dtype) for n, _, s in pairs
            }
        self._write(pairs)
