"""Memory of model + optimizer + EMA teacher: full fine-tune vs LoRA vs DeepSpeed ZeRO-3, same model, one run.

Each variant trains RLPTrainer for one optimizer step on the same model and prompts, in its own process(es)
(ZeRO variants through `accelerate launch` with the shipped configs, 2 processes), and measures at the first optimizer
step, when every piece of training state exists, per process:

    weights     the policy's parameters held by this process (ZeRO-3: its shards; a PEFT teacher adapter excluded)
    grads       `.grad` tensors (DDP / single process; DeepSpeed keeps gradients in its own buffers -> optimizer)
    optimizer   every other live tensor: Adam moments, DeepSpeed's fp32 master partitions and gradient buffers
    teacher     the EMA teacher: a full replica, its ZeRO-3 shards, or (PEFT) the float32 shadow + the adapter copy
    total       weights + grads + optimizer + teacher, per process; "x procs" multiplies it by the process count
    peak RSS    the process's resident-set high-water mark, including the Python/torch libraries (baseline: RSS
                after imports, before the model is loaded) and activations; on a GPU, the CUDA allocator's peak

Tensor bytes are counted once per storage (tied weights once), so they are exact and device-independent: they are
what would sit in GPU memory for the same precision. Default model: the embedded SmolLM2-135M-Instruct (float32 on CPU).

    python benchmarks/memory.py                      # full, lora, zero3 on SmolLM2-135M-Instruct; prints the table
    python benchmarks/memory.py --variants all       # + ddp, zero2, zero3_lora, zero3_offload, qlora
    python benchmarks/memory.py --model tiny --json /tmp/m.json   # a quick smoke run on the tiny test model
"""

import argparse
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "examples", "accelerate_configs")
MiB = 2**20

# variant -> (accelerate config or None for one process, use_peft, load_in_4bit)
VARIANTS = {
    "full": (None, False, False),
    "lora": (None, True, False),
    "zero3": ("deepspeed_zero3.yaml", False, False),
    "ddp": ("multi_gpu.yaml", False, False),
    "zero2": ("deepspeed_zero2.yaml", False, False),
    "zero3_lora": ("deepspeed_zero3.yaml", True, False),
    "zero3_offload": ("deepspeed_zero3_offload.yaml", False, False),
    "qlora": (None, True, True),
}
DEFAULT_VARIANTS = ("full", "lora", "zero3")
DESCRIPTIONS = {
    "full": "full fine-tune, 1 process, full-replica teacher",
    "lora": "LoRA r=16 on all linear layers, adapter EMA teacher",
    "zero3": "full fine-tune, DeepSpeed ZeRO-3, sharded teacher",
    "ddp": "full fine-tune, DDP, full-replica teacher per process",
    "zero2": "full fine-tune, ZeRO-2 (optimizer sharded), replica teacher",
    "zero3_lora": "LoRA under ZeRO-3, adapter EMA teacher",
    "zero3_offload": "ZeRO-3 + CPU offload of optimizer and weights (+ teacher)",
    "qlora": "QLoRA: 4-bit base (bitsandbytes) + LoRA, adapter EMA teacher",
}


# ---------------------------------------------------------------------------------------------- measurement (worker)
def _storage_key(t):
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if t.device.type == "meta" or storage.nbytes() == 0:
        return None
    return (t.device.type, storage.data_ptr()), storage.nbytes()


def _collect(tensors) -> dict:
    out = {}
    for t in tensors:
        item = _storage_key(t)
        if item is not None:
            out[item[0]] = item[1]
    return out


def measure(trainer) -> dict:
    import torch

    from rlp_trl.teacher import AdapterEMATeacher

    gc.collect()
    model = trainer.accelerator.unwrap_model(trainer.model)
    teacher = trainer.teacher
    if isinstance(teacher, AdapterEMATeacher):
        teacher_params = teacher.adapter_parameters(model)
        teacher_tensors = [t for _, t in teacher.named_state_tensors()]
    else:
        teacher_params = list(teacher.module.parameters()) if teacher.initialized else []
        teacher_tensors = list(teacher.module.buffers()) if teacher.initialized else []
    shard = lambda p: p.ds_tensor if hasattr(p, "ds_id") else p  # noqa: E731
    teacher_ids = {id(p) for p in teacher_params}
    teacher_st = _collect([shard(p) for p in teacher_params] + [p for p in teacher_params] + teacher_tensors)
    policy_params = [p for p in model.parameters() if id(p) not in teacher_ids]
    weights = _collect([shard(p) for p in policy_params] + policy_params)
    grads = _collect([p.grad for p in policy_params if p.grad is not None])
    live = _collect(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
    known = set(weights) | set(teacher_st) | set(grads)
    other = sum(n for k, n in live.items() if k not in known)
    if os.environ.get("RLP_MEMORY_DEBUG"):  # the largest uncategorised storages
        seen = {}
        for o in gc.get_objects():
            if isinstance(o, torch.Tensor) and (item := _storage_key(o)) and item[0] not in known:
                seen.setdefault(item[0], (item[1], tuple(o.shape), o.dtype, type(o).__name__))
        for nbytes, shape, dtype, kind in sorted(seen.values(), key=lambda v: -v[0])[:12]:
            print(f"[memory debug] {nbytes / MiB:8.1f} MiB {kind} {shape} {dtype}", flush=True)
    return {
        "weights": sum(weights.values()),
        "grads": sum(grads.values()),
        "optimizer": other,
        "teacher": sum(teacher_st.values()),
        "trainable_params": sum((p.ds_numel if hasattr(p, "ds_id") else p.numel()) for p in policy_params if p.requires_grad),
        "params": sum((p.ds_numel if hasattr(p, "ds_id") else p.numel()) for p in policy_params),
    }


def worker(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from rlp_trl import RLPConfig, RLPTrainer

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # libraries loaded, no model yet

    cuda = torch.cuda.is_available()
    rank = int(os.environ.get("RANK", 0))
    model_path, docs = _model_and_docs(args.model, args.work)
    _, use_peft, four_bit = VARIANTS[args.worker]
    peft_config = quantization = None
    if use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    if four_bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    config = RLPConfig(
        output_dir=os.path.join(args.work, f"out_{args.worker}"), use_cpu=not cuda, bf16=cuda, fp16=False,
        gradient_checkpointing=False, max_steps=1, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=16, max_context_tokens=128, min_context_tokens=16, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, learning_rate=1e-6,
    )
    result = {}

    class Measure(TrainerCallback):
        def on_optimizer_step(self, *_, **__):
            if not result:
                result.update(measure(trainer))

    trainer = RLPTrainer(model_path, args=config, train_dataset=Dataset.from_dict({"text": docs}),
                         peft_config=peft_config, quantization_config=quantization)
    trainer.add_callback(Measure())
    start = time.time()
    trainer.train()
    result.update(
        variant=args.worker, rank=rank, processes=trainer.accelerator.num_processes,
        teacher_class=type(trainer.teacher).__name__, step_seconds=round(time.time() - start, 1),
        baseline_rss=baseline_rss, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        cuda_peak=torch.cuda.max_memory_allocated() if cuda else None,
    )
    with open(os.path.join(args.work, f"{args.worker}.rank{rank}.json"), "w") as f:
        json.dump(result, f)
    trainer.end()


def _model_and_docs(model: str, work: str):
    if model == "tiny":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tiny_model import build_tiny_model, tiny_corpus

        path = os.path.join(work, "tiny_model")
        if not os.path.exists(os.path.join(path, "config.json")):
            build_tiny_model(path)
        return path, tiny_corpus(16)
    from rlp_trl.tools.assets import default_corpus_path, default_model_path

    path = default_model_path() if model == "smollm2" else model
    with open(default_corpus_path()) as f:
        docs = [json.loads(line)["text"] for _, line in zip(range(16), f)]
    return path, docs


# ---------------------------------------------------------------------------------------------- driver
def run_variant(name: str, model: str, work: str) -> list[dict]:
    config = VARIANTS[name][0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    me = [os.path.abspath(__file__), "--worker", name, "--model", model, "--work", work]
    if config is None:
        cmd = [sys.executable, *me]
    else:
        import torch

        launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
        with socket.socket() as sock:  # a free rendezvous port: other launches may be running
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [launcher, "launch", "--config_file", os.path.join(CONFIGS, config), "--num_processes", "2",
               "--main_process_port", str(port)]
        if not torch.cuda.is_available():
            cmd += ["--mixed_precision", "no"]
        cmd += me
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    files = sorted(f for f in os.listdir(work) if f.startswith(f"{name}.rank"))
    return [json.load(open(os.path.join(work, f))) for f in files]


def summarize(name: str, ranks: list[dict]) -> dict:
    r0 = max(ranks, key=lambda r: r["weights"] + r["grads"] + r["optimizer"] + r["teacher"])  # the fullest rank
    total = r0["weights"] + r0["grads"] + r0["optimizer"] + r0["teacher"]
    return {
        "variant": name, "description": DESCRIPTIONS[name], "processes": r0["processes"],
        "teacher_class": r0["teacher_class"], "params": r0["params"], "trainable_params": r0["trainable_params"],
        "weights_mib": r0["weights"] / MiB, "grads_mib": r0["grads"] / MiB, "optimizer_mib": r0["optimizer"] / MiB,
        "teacher_mib": r0["teacher"] / MiB, "total_mib": total / MiB,
        "all_processes_mib": sum(r["weights"] + r["grads"] + r["optimizer"] + r["teacher"] for r in ranks) / MiB,
        "peak_rss_mib": max(r["peak_rss"] for r in ranks) / MiB,
        "baseline_rss_mib": max(r["baseline_rss"] for r in ranks) / MiB,
        "cuda_peak_mib": (max(r["cuda_peak"] for r in ranks) / MiB) if r0["cuda_peak"] is not None else None,
    }


def format_table(rows: list[dict], model_label: str) -> str:
    lines = [
        f"Model: {model_label}. Per process, at the first optimizer step (MiB; tensor bytes, each storage once).",
        "",
        "| variant | procs | teacher | weights | grads | optimizer | teacher | **total / proc** | x procs | peak RSS / proc |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak_rss_mib']:.0f}" + (f" (CUDA {r['cuda_peak_mib']:.0f})" if r["cuda_peak_mib"] else "")
        lines.append(
            f"| {r['variant']} | {r['processes']} | {r['teacher_class']} | {r['weights_mib']:.0f} | {r['grads_mib']:.0f} | "
            f"{r['optimizer_mib']:.0f} | {r['teacher_mib']:.1f} | **{r['total_mib']:.0f}** | {r['all_processes_mib']:.0f} | "
            f"{peak} |"
        )
    baseline = min(r["baseline_rss_mib"] for r in rows)
    lines += ["", f"Peak RSS includes ~{baseline:.0f} MiB of libraries (RSS after imports) and activations."]
    lines += [f"- {r['variant']}: {r['description']}" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' (embedded default), 'tiny', or a model folder")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated subset of {list(VARIANTS)}, or 'all'")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if args.model == "tiny":
            _model_and_docs("tiny", work)  # build once, shared by all variants
        for name in names:
            start = time.time()
            rows.append(summarize(name, run_variant(name, args.model, work)))
            print(f"[memory] {name}: {rows[-1]['total_mib']:.0f} MiB/process ({time.time() - start:.0f} s)", flush=True)
    label = {"smollm2": "SmolLM2-135M-Instruct (embedded), float32 on CPU", "tiny": "tiny test model"}.get(args.model, args.model)
    print()
    print(format_table(rows, label))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": label, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
