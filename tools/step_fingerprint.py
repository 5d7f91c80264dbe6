"""Fingerprint of a few RLP steps, to check that a refactor changes nothing (issue 11: "same seed, same thoughts,
rewards, losses and teacher").

    python tools/step_fingerprint.py --out before.json            # on the old code (e.g. a git worktree)
    python tools/step_fingerprint.py --out after.json             # on the new code
    python tools/step_fingerprint.py --compare before.json after.json

Each run trains the tiny local model of tests/tiny_model.py for a few steps under one seed and records, per step,
the sampled completion ids, the thought masks, the advantages, the logged loss and RLP metrics, and at the end a
digest of the EMA teacher and of the trained weights. Single-process settings: prefix sharing on and off, the
theta_old pass (num_iterations 2), text markers, a KL term, LoRA. `--distributed` adds two-process launches
(DDP, ZeRO-2, ZeRO-3 with a LoRA run) through tests/dist_worker.py, the worker of tests/test_distributed.py.
`--compare` prints the largest difference per run and quantity and exits non-zero above the tolerance.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

STEPS = 3
SINGLE = {
    "sharing_on": {},
    "sharing_off": {"prefix_sharing": False},
    "theta_old": {"num_iterations": 2, "steps_per_generation": 2},
    "text_markers": {"think_open": "<reason>", "think_close": "</reason>", "think_markers_as_text": True},
    "kl": {"beta": 0.04},
    "lora": {"__peft__": True},
}


def _digest(named) -> str:
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _floats(t) -> list:
    return [round(float(x), 6) for x in t.detach().float().cpu().reshape(-1).tolist()]


def run_single(name: str, overrides: dict, model_dir: str, workdir: str) -> dict:
    from datasets import Dataset
    from conftest import tiny_config
    from tiny_model import tiny_corpus

    import rlp_trl
    from rlp_trl import RLPTrainer

    overrides = dict(overrides)
    peft_config = None
    if overrides.pop("__peft__", False):
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = tiny_config(Path(workdir) / name, max_steps=STEPS, **overrides)
    trainer = RLPTrainer(model_dir, args=args, train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}),
                         peft_config=peft_config)
    steps = []
    score = trainer._generate_and_score_completions

    def recorded(inputs):
        out = score(inputs)
        steps.append({
            "completion_ids": out["completion_ids"].tolist(),
            "tool_mask": out["tool_mask"].tolist(),
            "advantages": _floats(out["advantages"]),
        })
        return out

    trainer._generate_and_score_completions = recorded
    rlp_trl.train(trainer)  # with the run's guarantees (rlp_trl.resilience.run), as rlp-train runs
    history = [{k: v for k, v in h.items() if not k.endswith(("time", "_runtime", "per_second"))}
               for h in trainer.state.log_history if "loss" in h]
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "rollouts": steps,
        "history": history,
        "rewards": [round(x, 6) for x in trainer._logs["rewards"]["info_gain"]],
        "teacher": _digest(trainer.teacher.named_state_tensors()),
        "policy": _digest([(n, p) for n, p in model.named_parameters() if p.requires_grad]),
    }


def run_distributed(model_dir: str, workdir: str) -> dict:
    from tiny_model import tiny_corpus

    corpus = os.path.join(workdir, "corpus.jsonl")
    with open(corpus, "w") as f:
        for doc in tiny_corpus(40):
            f.write(json.dumps({"text": doc}) + "\n")
    lora = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]
    out = {}
    for config, extra_runs in (("multi_gpu.yaml", []), ("deepspeed_zero2.yaml", []), ("deepspeed_zero3.yaml", [lora])):
        report = os.path.join(workdir, f"report-{config}")
        os.makedirs(report, exist_ok=True)
        runs = [[]] + extra_runs
        cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
               os.path.join(ROOT, "examples", "accelerate_configs", config), "--num_processes", "2",
               "--mixed_precision", "no", os.path.join(ROOT, "tests", "dist_worker.py")]
        for i, extra in enumerate(runs):
            cmd += (["--run"] if i else []) + [
                "--model_name_or_path", model_dir, "--dataset_name", corpus, "--output_dir",
                os.path.join(workdir, f"out-{config}-{i}"), "--use_cpu", "true", "--bf16", "false",
                "--num_generations", "4", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
                "--max_context_tokens", "64", "--min_context_tokens", "4", "--max_steps", "2", "--seed", "0",
                "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
                "--gradient_checkpointing", "false", *extra,
            ]
        env = {**os.environ, "RLP_REPORT_DIR": report, "RLP_TINY_MODEL": model_dir, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": ROOT}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=900)
        for rank in (0, 1):
            with open(os.path.join(report, f"rank{rank}.json")) as f:
                for i, run in enumerate(json.load(f)["runs"]):
                    out[f"{config}:{i}:rank{rank}"] = {
                        "rewards": [round(x, 6) for x in run["rewards"]],
                        "advantages": [round(x, 6) for x in run["advantages"]],
                        "history": [{k: v for k, v in h.items() if k in ("loss", "rlp/info_gain_mean")}
                                    for h in run["history"]],
                        "teacher": run["final_digest"][:16],
                    }
    return out


def compare(a_path: str, b_path: str, tol: float) -> int:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    worst = 0.0
    for run in sorted(set(a) | set(b)):
        if run not in a or run not in b:
            print(f"{run}: only in {'the first' if run in a else 'the second'} file")
            worst = float("inf")
            continue
        diffs = {}
        for key in sorted(set(a[run]) | set(b[run])):
            diffs[key] = _diff(a[run].get(key), b[run].get(key))
        worst = max(worst, *diffs.values())
        before, after = (set((x[run].get("history") or [{}])[0]) for x in (a, b))
        if before != after:  # a metric added or removed: reported, not counted as a difference
            print(f"{run}: metrics only before {sorted(before - after)}, only after {sorted(after - before)}")
        print(f"{run}: " + ", ".join(f"{k} {'same' if v == 0 else f'{v:.3g}'}" for k, v in diffs.items()))
    print(f"largest difference: {worst:.3g} (tolerance {tol:g})")
    return 0 if worst <= tol else 1


def _diff(x, y) -> float:
    """Largest absolute difference of two nested values; inf where their structure or strings differ."""
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return abs(float(x) - float(y))
    if isinstance(x, dict) and isinstance(y, dict):  # a logged metric added or removed is not a difference
        return max([_diff(x[k], y[k]) for k in x.keys() & y.keys()] or [0.0])
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return float("inf")
        return max([_diff(u, v) for u, v in zip(x, y)] or [0.0])
    return 0.0 if x == y else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--only", nargs="*", help="single-process runs to do (default: all)")
    parser.add_argument("--distributed", action="store_true", help="also DDP / ZeRO-2 / ZeRO-3 launches")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare, args.tol))
    from tiny_model import build_tiny_model

    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = build_tiny_model(os.path.join(workdir, "model"))
        for name in args.only or SINGLE:
            print(f"[fingerprint] {name}", flush=True)
            results[name] = run_single(name, SINGLE[name], model_dir, workdir)
        if args.distributed:
            print("[fingerprint] distributed launches", flush=True)
            results.update(run_distributed(model_dir, workdir))
    with open(args.out, "w") as f:
        json.dump(results, f)
    print(f"[fingerprint] wrote {args.out}")


if __name__ == "__main__":
    main()
