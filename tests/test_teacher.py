"""The EMA teachers as one interface with one checkpoint implementation (rlp_trl/teacher/).

* `EMATeacher`, `ZeRO3EMATeacher` and `AdapterEMATeacher` implement the `Teacher` protocol: every member, with the
  protocol's parameter names, and the protocol names everything the trainer and the resilience code call;
* save -> load round-trips a full and an adapter teacher exactly, in the one format (file names, tensor names,
  JSON keys) that checkpoints of earlier versions have;
* a checkpoint of one kind loaded by the other fails with the one-line kind-mismatch error; a non-finite saved
  state fails the load for either kind.

ZeRO-3 round trips run under DeepSpeed in tests/test_distributed.py.
"""

import inspect
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlp_trl.teacher import (
    EMA_ADAPTER,
    TEACHER_STATE,
    TEACHER_WEIGHTS,
    AdapterEMATeacher,
    EMATeacher,
    Teacher,
    ZeRO3EMATeacher,
)

TAU = 0.9
# What RLPTrainer (trainer.py), the resilience checks and the checkpoint code call on a teacher.
USED = {"kind", "decay", "num_updates", "initialized", "init_from", "update", "scoring", "hidden_from_saving",
        "named_state_tensors", "memory_bytes", "save", "load", "state_tensors", "load_state_tensors",
        "load_on_rank0_only", "dtype"}


def _members(protocol) -> dict:
    names = set(protocol.__annotations__) | {n for n in vars(protocol) if not n.startswith("_")}
    return {n: vars(protocol).get(n) for n in names}


def _instances():
    return [EMATeacher(TAU), ZeRO3EMATeacher(TAU, torch.float32, ds_config=dict), AdapterEMATeacher(TAU)]


def test_protocol_names_what_the_trainer_uses():
    assert set(_members(Teacher)) == USED


@pytest.mark.parametrize("teacher", _instances(), ids=lambda t: type(t).__name__)
def test_every_teacher_implements_the_protocol(teacher):
    assert isinstance(teacher, Teacher)
    for name, member in _members(Teacher).items():
        assert hasattr(type(teacher), name) or hasattr(teacher, name), name
        if not inspect.isfunction(member):
            continue
        want = inspect.signature(member).parameters
        got = inspect.signature(getattr(type(teacher), name)).parameters
        assert list(got) == list(want), f"{type(teacher).__name__}.{name}{tuple(got)} vs Teacher.{name}{tuple(want)}"
        for p in want.values():  # whatever the caller may leave out, the implementation must default too
            if p.default is not inspect.Parameter.empty:
                assert got[p.name].default is not inspect.Parameter.empty, f"{type(teacher).__name__}.{name}: {p.name}"
    assert isinstance(teacher.initialized, bool) and not teacher.initialized and teacher.num_updates == 0


# ---------------------------------------------------------------------------------------------- round trips
def _perturb(model, seed, only_trainable=False):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad or not only_trainable:
                p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.dtype))


def _full(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    teacher = EMATeacher(TAU)
    teacher.init_from(model)
    for seed in (1, 2):
        _perturb(model, seed)
        teacher.update(model)
    return model, teacher


def _adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    _perturb(model, 3, only_trainable=True)  # LoRA's B starts at zero
    teacher = AdapterEMATeacher(TAU)
    teacher.attach(model)
    teacher.init_from(model)
    for seed in (4, 5):
        _perturb(model, seed, only_trainable=True)
        teacher.update(model)
    return model, teacher


def _fresh(teacher):
    if isinstance(teacher, AdapterEMATeacher):
        restored = AdapterEMATeacher(TAU)
        restored.source_adapter = teacher.source_adapter
        return restored
    return EMATeacher(TAU)


def _state(teacher) -> dict:
    return {k: v.detach().clone() for k, v in teacher.named_state_tensors()}


@pytest.mark.parametrize("build", [_full, _adapter], ids=["full", "adapter"])
def test_save_load_round_trips_exactly_in_the_checkpoint_format(build, tiny_model_dir, tmp_path):
    model, teacher = build(tiny_model_dir)
    assert _fresh(teacher).load(str(tmp_path), model) is False  # no teacher in the folder: nothing restored
    teacher.save(str(tmp_path), write=False)  # a rank that does not write writes nothing
    assert not (tmp_path / TEACHER_WEIGHTS).exists()
    teacher.save(str(tmp_path))

    # the format: full tensors by the teacher's parameter names, and the same JSON keys as ever
    saved = load_file(tmp_path / TEACHER_WEIGHTS)
    with safe_open(tmp_path / TEACHER_WEIGHTS, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    if teacher.kind == "full":
        assert sorted(saved) == sorted(n for n, _ in teacher.module.named_parameters())
    else:
        assert saved.keys() == teacher.shadow.keys() and all(f".{EMA_ADAPTER}." in k for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in _state(teacher).items())
    state = json.loads((tmp_path / TEACHER_STATE).read_text())
    keys = ["kind", "decay", "num_updates", "dtype"] + (["adapter_name"] if teacher.kind == "adapter" else [])
    assert list(state) == keys
    assert [state[k] for k in keys[:4]] == [teacher.kind, TAU, 2, "torch.float32"]

    # restored exactly, and it scores like the teacher that was saved
    ids = torch.tensor([[5, 9, 17, 33, 2, 8, 100, 7]])
    with torch.no_grad(), teacher.scoring(model) as m:
        before = m(input_ids=ids).logits
    if teacher.kind == "adapter":  # the restore writes the "rlp_ema" adapter itself
        with torch.no_grad():
            for p in teacher.adapter_parameters(model):
                p.zero_()
    restored = _fresh(teacher)
    assert restored.load(str(tmp_path), model) is True
    assert restored.initialized and restored.num_updates == 2
    got, want = _state(restored), _state(teacher)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad(), restored.scoring(model) as m:
        assert torch.equal(m(input_ids=ids).logits, before)


def test_a_checkpoint_without_its_json_reads_as_a_full_teacher_without_updates(tiny_model_dir, tmp_path):
    model, teacher = _full(tiny_model_dir)
    teacher.save(str(tmp_path))
    (tmp_path / TEACHER_STATE).unlink()
    restored = EMATeacher(TAU)
    assert restored.load(str(tmp_path), model) and restored.num_updates == 0


def test_a_checkpoint_of_the_other_kind_fails_with_one_line(tiny_model_dir, tmp_path):
    full_model, full = _full(tiny_model_dir)
    peft_model, adapter = _adapter(tiny_model_dir)
    for teacher in (full, adapter):
        (tmp_path / teacher.kind).mkdir()
        teacher.save(str(tmp_path / teacher.kind))
    for directory, teacher, model, saved, built in (
        (tmp_path / "full", _fresh(adapter), peft_model, "full", "adapter"),
        (tmp_path / "adapter", EMATeacher(TAU), full_model, "adapter", "full"),
    ):
        with pytest.raises(ValueError) as err:
            teacher.load(str(directory), model)
        message = str(err.value)
        assert "\n" not in message and not teacher.initialized
        assert f"holds a {saved!r} EMA teacher but this run builds a {built!r} one" in message
        assert str(directory / TEACHER_WEIGHTS) in message and "resume with the same --use_peft setting" in message


@pytest.mark.parametrize("build", [_full, _adapter], ids=["full", "adapter"])
def test_a_non_finite_saved_teacher_fails_the_load(build, tiny_model_dir, tmp_path):
    model, teacher = build(tiny_model_dir)
    teacher.save(str(tmp_path))
    tensors = load_file(tmp_path / TEACHER_WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, tmp_path / TEACHER_WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=r"holds non-finite values \(NaN/inf\) in .*Resume from an earlier"):
        _fresh(teacher).load(str(tmp_path), model)


def test_a_checkpoint_missing_tensors_names_them(tiny_model_dir, tmp_path):
    model, teacher = _full(tiny_model_dir)
    teacher.save(str(tmp_path))
    tensors = load_file(tmp_path / TEACHER_WEIGHTS)
    del tensors[sorted(tensors)[-1]]
    save_file(tensors, tmp_path / TEACHER_WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"has no weights for \['.+'\]: it was written for another architecture"):
        EMATeacher(TAU).load(str(tmp_path), model)
