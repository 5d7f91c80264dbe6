"""The EMA "no-think" teacher p_ema (paper Sec. 2.1, Algorithm 1 lines 8-9 and 15), for every training backend.

phi is lazily set to theta at the first batch, then after every optimizer step phi <- tau * phi + (1 - tau) * theta.
The teacher is kept in float32 by default: with tau = 0.999 one update moves a weight by 1e-3 of the gap, which is
below bf16's resolution (2**-8), so a bf16 teacher would silently never move.

`build_teacher` picks one of three implementations of the same interface from the model and the accelerator:

* `EMATeacher`: a full replica of the weights (single process, DDP, DeepSpeed ZeRO-0/1/2, where every rank holds the
  whole model anyway). On the model's device, or in CPU memory with `teacher_device="cpu"` (scored on the CPU).
* `ZeRO3EMATeacher`: DeepSpeed ZeRO-3. The policy's parameters are shards, so a deep copy would clone empty tensors
  (trl#3041). The teacher is constructed from the model's config under `deepspeed.zero.Init` with the policy's ZeRO
  config (partitioned across the ranks exactly like the policy, never materialised whole), wrapped in a
  parameter-only DeepSpeed engine as TRL does for its reference model (`prepare_deepspeed`), and filled, updated,
  saved and restored chunk by chunk inside `deepspeed.zero.GatheredParameters` (rank 0 computes, then broadcasts).
  `teacher_device="cpu"` offloads its shards to CPU memory (ZeRO-3 parameter offload).
* `AdapterEMATeacher`: PEFT (LoRA, QLoRA). The teacher is a second adapter, "rlp_ema", on the same `PeftModel`:
  the frozen (possibly 4-bit) base is shared, so the teacher costs adapter-sized memory. The EMA is kept in a float32
  shadow of the adapter weights and written into the "rlp_ema" adapter (in the trained adapter's dtype); scoring
  switches the active adapter to "rlp_ema". The base with adapters disabled is not the teacher.

Interface: `init_from(model)`, `update(model)`, `with teacher.scoring(model) as m: m(input_ids=...)`,
`save(directory, write=...)` (called on every rank; ZeRO-3 gathers), `load(directory, model)`, `memory_bytes()`.
The checkpoint format (`rlp_teacher.safetensors`: parameter name -> full tensor; `rlp_teacher.json`) is the same under
every backend, so a teacher saved under ZeRO-2 resumes under ZeRO-3 and vice versa.
"""

import contextlib
import copy
import functools
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..usage import UsageError

TEACHER_WEIGHTS = "rlp_teacher.safetensors"
TEACHER_STATE = "rlp_teacher.json"
EMA_ADAPTER = "rlp_ema"
GATHER_CHUNK_NUMEL = 1 << 26  # ZeRO-3: at most this many elements are gathered at once (256 MB in float32)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In-place EMA update phi <- decay * phi + (1 - decay) * theta over matching parameters (Alg. 1, line 15).

    Both modules must have the same parameter names and shapes; the student may live in another dtype or device.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    if student_params.keys() != teacher_params.keys():
        missing = sorted(set(student_params) ^ set(teacher_params))[:5]
        raise ValueError(f"teacher and student parameters differ, e.g. {missing}")
    for name, phi in teacher_params.items():
        theta = student_params[name]
        if phi.shape != theta.shape:
            raise ValueError(f"teacher and student shapes differ for {name}: {tuple(phi.shape)} vs {tuple(theta.shape)}")
    for name, phi in teacher_params.items():
        phi.lerp_(student_params[name].detach().to(device=phi.device, dtype=phi.dtype), 1.0 - decay)


# ---------------------------------------------------------------------------------------------- helpers
def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _shape(param: torch.Tensor) -> tuple:
    return tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)


def _gathered(params: list, modifier_rank: int | None = None):
    """`deepspeed.zero.GatheredParameters` for ZeRO-3 parameters, a no-op otherwise (same decision on every rank)."""
    if not any(_is_zero3(p) for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _chunks(items: list, numel, budget: int = GATHER_CHUNK_NUMEL):
    chunk, size = [], 0
    for item in items:
        n = numel(item)
        if chunk and size + n > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


def _nbytes(t: torch.Tensor) -> int:
    t = t.ds_tensor if _is_zero3(t) else t
    return t.numel() * t.element_size()


def _without_patched_forwards(module: nn.Module) -> nn.Module:
    """Drop instance-level `forward` overrides copied from the student (e.g. TRL's fused LM head patch): their
    closures call the *student's* original forward, so a copied teacher would silently score with the policy."""
    for sub in module.modules():
        sub.__dict__.pop("forward", None)
    return module


def _replica(model: nn.Module, dtype: torch.dtype | None, device: torch.device | None) -> nn.Module:
    """A frozen, eval-mode copy of `model` whose tensors are created directly in `dtype` on `device` (no transient
    second copy on the model's device); tied parameters stay tied."""
    memo = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo:
            continue
        target = dict(device=device or t.device, copy=True)
        if isinstance(t, nn.Parameter):
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            memo[id(t)] = nn.Parameter(t.detach().to(dtype=cast, **target), requires_grad=False)
        else:
            memo[id(t)] = t.detach().to(**target)
    teacher = _without_patched_forwards(copy.deepcopy(model, memo))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


class _Scorer:
    """What `scoring()` yields: calls the teacher, moving tensor inputs to its device.

    Under ZeRO-3 every forward all-gathers parameters, a collective, while ranks may hold different numbers of
    distinct contexts. So each real forward is preceded by a one-element all-reduce "I still have one", and on exit
    (`finish`) a rank that is done keeps answering "none left" and running a dummy forward alongside the others' real
    ones until every rank is done: the collectives always pair up, whatever the counts.
    """

    def __init__(self, module: nn.Module, zero3: bool = False):
        self.module = module
        if zero3:  # parameters are placeholders (possibly offloaded): compute happens on the accelerator
            from deepspeed.accelerator import get_accelerator

            self.device = torch.device(get_accelerator().current_device_name())
        else:
            self.device = _param_device(module)
        dist = torch.distributed
        self.uniform = zero3 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _others_busy(self, mine: int) -> bool:
        flag = torch.tensor([mine], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def __call__(self, *args, **kwargs):
        if self.uniform:
            self._others_busy(1)
        move = lambda x: x.to(self.device) if torch.is_tensor(x) else x  # noqa: E731
        return self.module(*map(move, args), **{k: move(v) for k, v in kwargs.items()})

    def parameters(self, *args, **kwargs):
        """The module's parameters, led by an empty tensor on the compute device: callers place inputs with
        `next(model.parameters()).device`, and ZeRO-3 placeholders (offloaded or not) need not sit there."""
        yield torch.empty(0, device=self.device)
        yield from self.module.parameters(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)

    def finish(self):
        if not self.uniform:
            return
        dummy = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        while self._others_busy(0):
            self.module(input_ids=dummy, attention_mask=torch.ones_like(dummy), logits_to_keep=1)


def _param_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _alias_groups(module: nn.Module) -> list[tuple[nn.Parameter, list[str]]]:
    """Each distinct parameter with all the names it has (tied weights have several)."""
    groups: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), (p, []))[1].append(name)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------- full teachers
class EMATeacher:
    """A full-weight EMA replica of the policy, used only under `torch.no_grad()` to score the true next tokens.

    Args:
        decay: tau in phi <- tau * phi + (1 - tau) * theta.
        dtype: dtype of the teacher weights (`None` keeps the model's dtype).
        device: where the replica lives (`None`: the model's device; `"cpu"`: CPU memory, scored on the CPU).
    """

    kind = "full"
    load_on_rank0_only = False  # every rank reads the saved weights into its own replica

    def __init__(self, decay: float, dtype: torch.dtype | None = torch.float32, device: str | torch.device | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.module: nn.Module | None = None
        self.num_updates = 0

    @property
    def initialized(self) -> bool:
        return self.module is not None

    # -- construction and updates
    def _build(self, model: nn.Module) -> None:
        self.module = _replica(model, self.dtype, self.device)

    def _pairs(self, model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        student, teacher = dict(model.named_parameters()), dict(self.module.named_parameters())
        if student.keys() != teacher.keys():
            raise ValueError(f"teacher and student parameters differ, e.g. {sorted(set(student) ^ set(teacher))[:5]}")
        for name, phi in teacher.items():
            if _shape(phi) != _shape(student[name]):
                raise ValueError(f"teacher and student shapes differ for {name}: {_shape(phi)} vs {_shape(student[name])}")
        return [(name, phi, student[name]) for name, phi in teacher.items()]

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        """Lazy initialisation phi <- theta (Alg. 1, line 9) from an unwrapped model."""
        self._build(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_update_(self.module, model, self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def scoring(self, model: nn.Module | None = None):
        """Yield a callable that runs the teacher (`model` is the unwrapped policy; unused by full teachers)."""
        scorer = _Scorer(self.module)
        yield scorer
        scorer.finish()

    def hidden_from_saving(self, model: nn.Module):
        return contextlib.nullcontext()

    def named_state_tensors(self):
        """(name, tensor) of the teacher's state, for finiteness checks (ZeRO-3: this process's shards)."""
        for name, p in self.module.named_parameters():
            yield name, (p.ds_tensor if _is_zero3(p) else p)

    def memory_bytes(self) -> int:
        if not self.initialized:
            return 0
        seen, total = set(), 0
        for t in [*self.module.parameters(), *self.module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += _nbytes(t)
        return total

    # -- checkpoints
    def _state_json(self) -> dict:
        return {"kind": self.kind, "decay": self.decay, "num_updates": self.num_updates, "dtype": str(self.dtype)}

    def _tensors_for_save(self, write: bool) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").contiguous() for n, p in self.module.named_parameters()} if write else {}

    def save(self, directory: str, write: bool = True) -> None:
        """Write `rlp_teacher.safetensors` and `rlp_teacher.json` into `directory`.

        Call it on every rank: a ZeRO-3 teacher gathers its shards (a collective); only ranks with `write` write.
        """
        if not self.initialized:
            return
        tensors = self._tensors_for_save(write)
        if write:
            save_file(tensors, os.path.join(directory, TEACHER_WEIGHTS), metadata={"format": "pt"})
            with open(os.path.join(directory, TEACHER_STATE), "w") as f:
                json.dump(self._state_json(), f)

    @staticmethod
    def _read_state(directory: str, kind: str) -> dict | None:
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
                f"({'PEFT adapter EMA' if kind == 'adapter' else 'full-weight EMA'}): resume with the same --use_peft "
                "setting as the run that wrote the checkpoint."
            )
        return state

    def _copy_from_file(self, path: str, only_rank0: bool) -> None:
        """Copy the file's tensors into the teacher (under ZeRO-3: rank 0 reads, the gathered shards are broadcast).
        Every rank checks the names first, so a bad file fails everywhere instead of hanging the others."""
        groups = _alias_groups(self.module)
        with safe_open(path, framework="pt") as reader:
            keys = set(reader.keys())
            missing = [names[0] for _, names in groups if not keys.intersection(names)]
            if missing:
                raise ValueError(f"{path} has no weights for {missing[:5]}: it was written for another architecture")
            reads = not only_rank0 or _rank() == 0
            for chunk in _chunks(groups, lambda g: g[0].ds_numel if _is_zero3(g[0]) else g[0].numel()):
                with torch.no_grad(), _gathered([p for p, _ in chunk], modifier_rank=0 if only_rank0 else None):
                    if reads:
                        for p, names in chunk:
                            p.data.copy_(reader.get_tensor(next(n for n in names if n in keys)))

    def load(self, directory: str, model: nn.Module) -> bool:
        """Restore a teacher saved by `save`; returns False when the checkpoint has none (teacher not yet built)."""
        state = self._read_state(directory, self.kind)
        if state is None:
            return False
        self._build(model)
        self._copy_from_file(os.path.join(directory, TEACHER_WEIGHTS), only_rank0=self.load_on_rank0_only)
        if not self.load_on_rank0_only:  # every rank holds the whole teacher: the same verdict everywhere
            _check_loaded_finite(self.named_state_tensors(), os.path.join(directory, TEACHER_WEIGHTS))
        self.num_updates = state.get("num_updates", 0)
        return True


def _check_loaded_finite(named, path: str) -> None:
    from ..resilience import NonFiniteError, scan_tensors

    bad, _ = scan_tensors(named)
    if bad:
        raise NonFiniteError(
            f"{path} holds non-finite values (NaN/inf) in {', '.join(bad[:3])}: this EMA teacher cannot score "
            "anything. Resume from an earlier checkpoint."
        )


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
    """The EMA teacher under DeepSpeed ZeRO-3: partitioned like the policy (see the module docstring).

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
        for chunk in _chunks(pairs, lambda pair: pair[1].ds_numel if _is_zero3(pair[1]) else pair[1].numel()):
            with _gathered([s for _, _, s in chunk]), _gathered([t for _, t, _ in chunk], modifier_rank=0):
                if _rank() == 0:
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
        scorer = _Scorer(self.module, zero3=True)
        yield scorer
        scorer.finish()

    def _tensors_for_save(self, write: bool) -> dict[str, torch.Tensor]:
        out = {}
        named = list(self.module.named_parameters())
        for chunk in _chunks(named, lambda item: item[1].ds_numel):
            with _gathered([p for _, p in chunk]):
                if write:
                    out.update({n: p.detach().to("cpu", copy=True).contiguous() for n, p in chunk})
        return out


# ---------------------------------------------------------------------------------------------- PEFT adapter teacher
class AdapterEMATeacher:
    """EMA of the trained PEFT adapter, held as a second adapter `adapter_name` on the same `PeftModel`.

    `attach(model)` must run before the optimizer and DeepSpeed see the model (the trainer calls it at init): the new
    adapter is frozen and partitioned along with the model. Its values are set lazily at the first batch.

    Args:
        decay: tau.
        dtype: dtype of the EMA shadow (`None`: the trained adapter's dtype). The "rlp_ema" adapter itself always has
            the trained adapter's dtype, so ZeRO-3 all-gathers see one dtype per module (trl#6089).
        adapter_name: name of the teacher adapter.
    """

    kind = "adapter"

    def __init__(self, decay: float, dtype: torch.dtype | None = torch.float32, adapter_name: str = EMA_ADAPTER):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.dtype = dtype
        self.adapter_name = adapter_name
        self.source_adapter: str | None = None
        self.shadow: dict[str, torch.Tensor] | None = None
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

    @torch.no_grad()
    def _write(self, pairs) -> None:
        """shadow -> the "rlp_ema" adapter (rank 0 writes and broadcasts under ZeRO-3)."""
        teachers = [t for _, t, _ in pairs]
        sharded = any(_is_zero3(t) for t in teachers)
        with _gathered(teachers, modifier_rank=0):
            if not sharded or _rank() == 0:
                for name, phi, _ in pairs:
                    phi.data.copy_(self.shadow[name])

    @torch.no_grad()
    def init_from(self, model: nn.Module) -> None:
        pairs = self._pairs(model)
        with _gathered([s for _, _, s in pairs]):  # every rank keeps the full (adapter-sized) shadow
            self.shadow = {n: s.detach().to(dtype=self.dtype or s.dtype, copy=True) for n, _, s in pairs}
        self._write(pairs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = self._pairs(model)
        with _gathered([s for _, _, s in pairs]):
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
        scorer = _Scorer(model, zero3=any(_is_zero3(p) for p, _ in flags[:1]))
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
            total += sum(_nbytes(t) for _, t, _ in self._pairs(model))
        return total

    def save(self, directory: str, write: bool = True) -> None:
        if not self.initialized or not write:
            return
        save_file({n: t.detach().to("cpu").contiguous() for n, t in self.shadow.items()},
                  os.path.join(directory, TEACHER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(directory, TEACHER_STATE), "w") as f:
            json.dump({"kind": self.kind, "decay": self.decay, "num_updates": self.num_updates,
                       "dtype": str(self.dtype), "adapter_name": self.adapter_name}, f)

    @torch.no_grad()
    def load(self, directory: str, model: nn.Module) -> bool:
        state = EMATeacher._read_state(directory, self.kind)
        if state is None:
            return False
        pairs = self._pairs(model)
        path = os.path.join(directory, TEACHER_WEIGHTS)
        with safe_open(path, framework="pt") as reader:
            missing = [n for n, _, _ in pairs if n not in reader.keys()]
            if missing:
                raise ValueError(f"{path} has no weights for {missing[:5]}: it was written for another adapter")
            with _gathered([s for _, _, s in pairs]):
                self.shadow = {
                    n: reader.get_tensor(n).to(device=s.device, dtype=self.dtype or s.dtype) for n, _, s in pairs
                }
        _check_loaded_finite(self.shadow.items(), path)
        self._write(pairs)
        self.num_updates = state.get("num_updates", 0)
        return True


# ---------------------------------------------------------------------------------------------- choice
def build_teacher(model: nn.Module, args, accelerator):
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
