"""Scale-out on the tiny model, through the shipped accelerate configs (examples/accelerate_configs/):

* `accelerate launch --num_processes 2` of `tests/dist_worker.py` (= `rlp_trl.tools.train.main`, the code behind
  examples/train_rlp.py) with each config: DDP (gloo), DeepSpeed ZeRO-2, ZeRO-3 (+ gradient checkpointing, + PEFT),
  ZeRO-3 with CPU offload. Each launch trains 2 steps with a checkpoint per step, then resumes a second run from
  checkpoint-1. Checked: groups of G intact across ranks, metrics equal on both ranks and to the gathered rollouts, the
  teacher identical on both ranks, equal to what was saved, restored bit for bit, an exact EMA of the saved policies,
  and its scoring output equal to a plain model holding its weights (not the policy's).
* In one process: LoRA and QLoRA (4-bit bitsandbytes on CPU) with the adapter EMA teacher and gradient checkpointing;
  bad combinations fail at start naming the fix.

On a 2-core CPU the launches take ~20-40 s each (the first DeepSpeed use compiles two small extensions once; `make
setup` does it ahead of time).
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from tiny_model import tiny_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "examples", "accelerate_configs")
G, PER_DEVICE, TAU = 4, 6, 0.5  # 2 ranks x 6 = 12 rollouts = 3 groups of 4: the middle group spans both ranks


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for doc in tiny_corpus(40):
            f.write(json.dumps({"text": doc}) + "\n")
    return str(path)


def run_flags(model_dir, corpus, out, *extra):
    return [
        "--model_name_or_path", model_dir, "--dataset_name", corpus, "--output_dir", str(out),
        "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true",
        "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1", "--seed", "0",
        "--per_device_train_batch_size", str(PER_DEVICE), "--num_generations", str(G),
        "--max_completion_length", "6", "--max_context_tokens", "48", "--min_context_tokens", "4",
        "--learning_rate", "1e-3", "--ema_decay", str(TAU), "--gradient_checkpointing", "false", *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, runs: list[list[str]], report_dir, model_dir, timeout=420) -> list[dict]:
    os.makedirs(report_dir, exist_ok=True)
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
        os.path.join(CONFIGS, config), "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", str(free_port()),  # concurrent launches (parallel CI jobs) must not share 29500
        os.path.join(ROOT, "tests", "dist_worker.py"),
    ]
    for i, flags in enumerate(runs):
        cmd += (["--run"] if i else []) + flags
    env = {**os.environ, "RLP_REPORT_DIR": str(report_dir), "RLP_TINY_MODEL": model_dir, "OMP_NUM_THREADS": "1",
           "RLP_WORKER_TIMEOUT": str(timeout - 20),  # workers dump their stacks and exit before the launch times out
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    # own process group: on a timeout the launcher *and* its workers are killed, not left running
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"launch timed out after {timeout} s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return [json.load(open(os.path.join(report_dir, f"rank{r}.json")))["runs"] for r in range(2)]


def check_run(ranks: list[list[dict]], index: int, *, zero_stage, teacher_class, steps=(1, 2)):
    """Backend, groups, metrics, teacher agreement and scoring for run `index` of a launch."""
    a, b = ranks[0][index], ranks[1][index]
    assert a["world_size"] == 2 and a["zero_stage"] == zero_stage and a["teacher_class"] == teacher_class
    assert a["global_step"] == 2 and a["num_updates"] == 2
    # the teacher is identical on both ranks after every step and at the end
    assert a["final_digest"] == b["final_digest"]
    assert a["step_digests"] == b["step_digests"] and sorted(a["step_digests"]) == [str(s) for s in steps]
    # metrics: identical on every rank, and equal to the gathered per-rollout values
    assert [h["step"] for h in a["history"]][-len(steps):] == list(steps)  # a resumed run also holds the restored log
    for ha, hb in zip(a["history"], b["history"]):
        assert {k: v for k, v in ha.items() if k.startswith("rlp/")} == {k: v for k, v in hb.items() if k.startswith("rlp/")}
    n = 2 * PER_DEVICE  # the global batch of one step
    # (TRL keeps the rollout logs of the last logged step)
    assert a["prompts"] == b["prompts"] and a["rewards"] == b["rewards"] and len(a["rewards"]) == n
    rewards, last = torch.tensor(a["rewards"]), a["history"][-1]
    assert last["rlp/info_gain_mean"] == pytest.approx(rewards.mean().item(), abs=1e-5)
    assert last["rlp/positive_gain_frac"] == pytest.approx((rewards > 0).float().mean().item())
    # groups of G consecutive rollouts of one context, whole in the gathered batch, advantages centred per group
    for start in range(0, len(a["prompts"]), G):
        group = a["prompts"][start : start + G]
        assert len(set(group)) == 1, group
        assert abs(sum(a["advantages"][start : start + G])) < 1e-4
    assert len(set(a["prompts"][::G])) > 1
    # the teacher scores with its own weights (the EMA lags the policy), equal to a plain model holding them
    for r in (a, b):
        assert r["scoring"]["teacher_vs_reference"] < 1e-4, r["scoring"]
        assert r["scoring"]["teacher_vs_policy"] > 1e-4, r["scoring"]
    return a


def check_ema_files(first_out, resumed_out, base_dir, adapter=False):
    """From the files alone: phi1 = tau phi0 + (1-tau) theta1 (phi0 = theta0), phi2 = tau phi1 + (1-tau) theta2, and
    the resumed run's phi2' = tau phi1 + (1-tau) theta2' (it started from the saved phi1)."""
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    to_policy = (lambda k: k.replace(".rlp_ema", "")) if adapter else (lambda k: k)
    phi = {s: load_file(os.path.join(first_out, f"checkpoint-{s}", "rlp_teacher.safetensors")) for s in (1, 2)}
    theta = {s: load_file(os.path.join(first_out, f"checkpoint-{s}", weights)) for s in (1, 2)}
    resumed_phi = load_file(os.path.join(resumed_out, "checkpoint-2", "rlp_teacher.safetensors"))
    resumed_theta = load_file(os.path.join(resumed_out, "checkpoint-2", weights))
    base = None if adapter else load_file(os.path.join(base_dir, "model.safetensors"))
    assert phi[1].keys() == phi[2].keys() == resumed_phi.keys()
    moved = 0.0
    for k, phi1 in phi[1].items():
        p = to_policy(k)
        if base is not None:
            torch.testing.assert_close(phi1, TAU * base[k] + (1 - TAU) * theta[1][p], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(phi[2][k], TAU * phi1 + (1 - TAU) * theta[2][p].float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(resumed_phi[k], TAU * phi1 + (1 - TAU) * resumed_theta[p].float(), rtol=1e-5, atol=1e-6)
        moved = max(moved, (phi[2][k] - phi1).abs().max().item())
    assert moved > 0
    return phi


def check_resume(ranks, first_index, resumed_index, first_out):
    first, resumed = ranks[0][first_index], ranks[0][resumed_index]
    saved1 = digest(load_file(os.path.join(first_out, "checkpoint-1", "rlp_teacher.safetensors")))
    assert saved1 == first["step_digests"]["1"]  # what was saved is the in-memory teacher after step 1
    for rank in ranks:
        assert rank[resumed_index]["loaded_digest"] == saved1  # restored bit for bit on every rank
        assert rank[resumed_index]["loaded_updates"] == 1
    assert resumed["global_step"] == 2 and resumed["num_updates"] == 2 and list(resumed["step_digests"]) == ["2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, zero_stage", [("multi_gpu.yaml", None), ("deepspeed_zero2.yaml", 2), ("deepspeed_zero3_offload.yaml", 3)],
    ids=["ddp", "zero2", "zero3_offload"],
)
def test_accelerate_config_trains_saves_and_resumes(config, zero_stage, tiny_model_dir, corpus, tmp_path):
    first_out, resumed_out = tmp_path / "first", tmp_path / "resumed"
    ranks = launch(config, [
        run_flags(tiny_model_dir, corpus, first_out),
        run_flags(tiny_model_dir, corpus, resumed_out, "--resume_from_checkpoint", str(first_out / "checkpoint-1")),
    ], tmp_path / "reports", tiny_model_dir)
    teacher_class = "ZeRO3EMATeacher" if zero_stage == 3 else "EMATeacher"
    check_run(ranks, 0, zero_stage=zero_stage, teacher_class=teacher_class)
    check_run(ranks, 1, zero_stage=zero_stage, teacher_class=teacher_class, steps=(2,))
    check_resume(ranks, 0, 1, first_out)
    check_ema_files(first_out, resumed_out, tiny_model_dir)


@pytest.mark.slow
def test_zero3_full_and_peft_teachers_with_gradient_checkpointing(tiny_model_dir, corpus, tmp_path):
    """One ZeRO-3 launch, four runs: full fine-tune (teacher shards offloaded to CPU on a non-offloaded policy) and
    its resume into a non-offloaded teacher; LoRA (adapter EMA teacher) and its resume. Gradient checkpointing on."""
    full, full_resumed = tmp_path / "full", tmp_path / "full_resumed"
    lora_out, lora_resumed = tmp_path / "lora", tmp_path / "lora_resumed"
    gc = ["--gradient_checkpointing", "true"]
    lora = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj", *gc]
    ranks = launch("deepspeed_zero3.yaml", [
        run_flags(tiny_model_dir, corpus, full, *gc, "--teacher_device", "cpu"),
        run_flags(tiny_model_dir, corpus, full_resumed, *gc, "--resume_from_checkpoint", str(full / "checkpoint-1")),
        run_flags(tiny_model_dir, corpus, lora_out, *lora),
        run_flags(tiny_model_dir, corpus, lora_resumed, *lora, "--resume_from_checkpoint", str(lora_out / "checkpoint-1")),
    ], tmp_path / "reports", tiny_model_dir)
    # full fine-tune
    first = check_run(ranks, 0, zero_stage=3, teacher_class="ZeRO3EMATeacher")
    check_run(ranks, 1, zero_stage=3, teacher_class="ZeRO3EMATeacher", steps=(2,))
    assert first["gradient_checkpointing"] and first["teacher_offload"] is True
    assert ranks[0][1]["teacher_offload"] is False
    check_resume(ranks, 0, 1, full)
    check_ema_files(full, full_resumed, tiny_model_dir)
    # LoRA: the teacher is an EMA of the adapter only
    first = check_run(ranks, 2, zero_stage=3, teacher_class="AdapterEMATeacher")
    check_run(ranks, 3, zero_stage=3, teacher_class="AdapterEMATeacher", steps=(2,))
    assert first["gradient_checkpointing"]
    check_resume(ranks, 2, 3, lora_out)
    phi = check_ema_files(lora_out, lora_resumed, tiny_model_dir, adapter=True)
    assert all(".rlp_ema." in k and "lora_" in k for k in phi[1])  # adapter-sized: only LoRA weights
    assert not (lora_out / "rlp_ema").exists()  # the outputs hold the trained adapter only


# ---------------------------------------------------------------------------------------------- one process
def _trainer(tiny_model_dir, tmp_path, docs, peft_config=None, **overrides):
    from rlp_trl import RLPTrainer

    args = tiny_config(tmp_path, ema_decay=TAU, **overrides)
    return RLPTrainer(tiny_model_dir, args=args, train_dataset=docs, peft_config=peft_config)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _adapter_state(model, name):
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{name}." in k}


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora_4bit"])
def test_peft_teacher_is_an_ema_of_the_adapter(quantized, tiny_model_dir, tmp_path, tiny_docs):
    from transformers import BitsAndBytesConfig

    from rlp_trl.teacher import EMA_ADAPTER, AdapterEMATeacher

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if quantized else None
    from rlp_trl import RLPTrainer

    args = tiny_config(tmp_path, ema_decay=TAU, gradient_checkpointing=True, max_steps=2, save_strategy="steps",
                       save_steps=2)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs, peft_config=_lora(),
                         quantization_config=quantization)
    model = trainer.model
    teacher = trainer.teacher
    assert isinstance(teacher, AdapterEMATeacher) and EMA_ADAPTER in model.peft_config
    if quantized:
        assert any("4bit" in type(m).__name__ for m in model.modules())
    # frozen, and in the trained adapter's dtype (bf16 under QLoRA, as TRL casts it)
    trained, ema = _adapter_state(model, "default"), _adapter_state(model, EMA_ADAPTER)
    assert len(ema) == len(trained) > 0
    assert all(not p.requires_grad for k, p in model.named_parameters() if f".{EMA_ADAPTER}." in k)
    assert {v.dtype for v in ema.values()} == {v.dtype for v in trained.values()}
    adapter_numel = sum(v.numel() for v in trained.values())
    assert adapter_numel < 0.1 * sum(p.numel() for p in model.parameters())

    snapshots = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        out = original(inputs)
        snapshots.append((_adapter_state(model, "default"), {k: v.clone() for k, v in teacher.named_state_tensors()}))
        return out

    trainer._generate_and_score_completions = wrapped
    trainer.train()
    theta2 = _adapter_state(model, "default")
    (theta0, phi0), (theta1, phi1) = snapshots
    phi2 = dict(teacher.named_state_tensors())  # the float32 EMA shadow; the adapter holds it in the adapter's dtype
    to_teacher = lambda k: k.replace(".default.", f".{EMA_ADAPTER}.")  # noqa: E731
    for k, v in theta0.items():
        torch.testing.assert_close(phi0[to_teacher(k)], v.float())  # lazily set to theta at the first batch
        torch.testing.assert_close(phi1[to_teacher(k)], TAU * v.float() + (1 - TAU) * theta1[k].float())
        torch.testing.assert_close(phi2[to_teacher(k)], TAU * phi1[to_teacher(k)] + (1 - TAU) * theta2[k].float())
    assert teacher.num_updates == 2 and max((theta2[k] - theta0[k]).abs().max().item() for k in theta0) > 0
    assert all(p.requires_grad for k, p in model.named_parameters() if ".default." in k)  # restored after scoring
    assert memory_ok(teacher, model, adapter_numel)

    # scoring = the PeftModel with the "rlp_ema" adapter active, which holds the EMA (not the base, not the policy)
    ids = torch.tensor([trainer.train_dataset[0]["prompt"][-16:]])
    was_training = model.training
    with torch.no_grad():
        with teacher.scoring(model) as m:
            got = m(input_ids=ids).logits
        policy = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert model.active_adapter == "default" and model.training == was_training
    assert (got - policy).abs().max() > 1e-6 and (got - base).abs().max() > 1e-6
    ema_now = _adapter_state(model, EMA_ADAPTER)
    for k, v in phi2.items():
        torch.testing.assert_close(ema_now[k], v.to(ema_now[k].dtype))

    # checkpoint: the float32 shadow; the output folders hold the trained adapter only
    ckpt = os.path.join(args.output_dir, "checkpoint-2")
    saved = load_file(os.path.join(ckpt, "rlp_teacher.safetensors"))
    assert saved.keys() == phi2.keys() and all(torch.equal(saved[k], v) for k, v in phi2.items())
    assert not os.path.exists(os.path.join(ckpt, EMA_ADAPTER))
    restored = AdapterEMATeacher(TAU)
    restored.source_adapter = "default"
    with torch.no_grad():
        for p in ema_now.values():
            p.zero_()
    assert restored.load(ckpt, model) and restored.num_updates == 2
    for k, v in _adapter_state(model, EMA_ADAPTER).items():
        torch.testing.assert_close(v, phi2[k].to(v.dtype))


def memory_ok(teacher, model, adapter_numel) -> bool:
    # shadow (float32) + the adapter copy: adapter-sized, not a second model
    return teacher.memory_bytes(model) <= adapter_numel * (4 + 4)


def test_teacher_device_cpu_with_peft_fails_at_start_naming_the_fix(tiny_model_dir, tmp_path, tiny_docs):
    with pytest.raises(ValueError, match=r"teacher_device='cpu' cannot be served with PEFT.*use 'auto'"):
        _trainer(tiny_model_dir, tmp_path, tiny_docs, peft_config=_lora(), teacher_device="cpu")


def test_teacher_device_cpu_full_replica(tiny_model_dir, tmp_path, tiny_docs):
    from rlp_trl.teacher import EMATeacher

    trainer = _trainer(tiny_model_dir, tmp_path, tiny_docs, teacher_device="cpu", max_steps=1)
    assert type(trainer.teacher) is EMATeacher and trainer.teacher.device == torch.device("cpu")
    trainer.train()
    assert trainer.teacher.num_updates == 1 and next(trainer.teacher.module.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (dict(per_device_train_batch_size=6, num_generations=4), r"--per_device_train_batch_size 8.*divisor of 6 \(2, 3, 6\)"),
        (dict(per_device_train_batch_size=4, num_generations=3), r"--per_device_train_batch_size 6.*divisor of 4 \(2, 4\)"),
        (dict(teacher_device="gpu"), r"teacher_device must be one of \('auto', 'cpu'\)"),
    ],
)
def test_bad_batch_or_teacher_option_fails_at_start_naming_the_fix(tmp_path, overrides, fix):
    with pytest.raises(ValueError, match=fix):
        tiny_config(tmp_path, **overrides)
