"""Soak test of rlp_trl's reliability features (issue 6); the report goes into docs/reliability.md.

Runs the tiny model (tests/tiny_model.py) for a few hundred steps over a JSON-lines corpus seeded with bad rows and
bad lines (read by `rlp_trl.data.read_json_lines`, as `rlp-train` reads .jsonl files), twice:

    reference    one uninterrupted process
    interrupted  a process started through `rlp-launch` that gets SIGTERM (sent to the launcher) half-way: it must
                 save a complete checkpoint, and the launcher must exit with 143 only after it; then a second process
                 that resumes from that checkpoint (`resume_from_checkpoint="auto"`, hashes verified), then a third
                 launch of the same command on the finished run, which must train nothing

Both runs inject the same faults at the same steps: a NaN reward every `--nan-reward-every` steps and NaN gradients
(NaN hidden states in the training forward) every `--nan-grad-every` steps, handled by `on_nonfinite="skip"`.
Checkpoints are written every `--save-steps` steps with `save_total_limit=2`, so rotation and atomic renames are
exercised too. Reported: steps done, rows skipped by reason, non-finite events, resident memory (RSS) per step and its
growth per 100 steps (least-squares slope after a warm-up), and whether the final policy and EMA teacher of the
interrupted + resumed run equal the reference's bit for bit.

    python benchmarks/soak.py --steps 300 --out outputs/soak        # 15-30 min on 2 CPU cores
    python benchmarks/soak.py --steps 40 --save-steps 10 --out /tmp/soak   # smoke run
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


# ---------------------------------------------------------------------------------------------- corpus and model
BAD_LINES = {  # written into the .jsonl as raw bytes; each one a counted skip of the reader
    "not_utf8": b'{"text": "caf\xe9: Latin-1 bytes are not UTF-8"}',
    "invalid_json": b'{"text": "an unterminated line',
    "lone_surrogate": b'{"text": "a broken escape \\ud800 in a document"}',
}


def write_corpus(path: str, seed: int = 0) -> dict:
    """The corpus of `bad_corpus` as JSON lines, with 5 copies of each bad line of `BAD_LINES` spread through it."""
    import random

    rows, bad = bad_corpus(seed=seed)
    lines = [json.dumps({"text": r}).encode() for r in rows]
    rng = random.Random(seed + 1)
    for raw in [raw for raw in BAD_LINES.values() for _ in range(5)]:
        lines.insert(rng.randrange(len(lines) + 1), raw)
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return {**bad, **{f"line: {k}": 5 for k in BAD_LINES}}


def bad_corpus(n_good: int = 300, seed: int = 0) -> tuple[list, dict]:
    """Good tiny documents mixed with rows that must be skipped (or windowed), in a fixed shuffled order."""
    import random

    from tiny_model import tiny_corpus

    rng = random.Random(seed)
    good = tiny_corpus(n_good, seed=seed)
    bad = {
        "empty": [""] * 15,
        "whitespace": [" \n\t  "] * 15,
        "none": [None] * 15,
        "too_short": ["Paris.", "Yes", "Hi"] * 5,
        "huge (windowed)": [(rng.choice(good) + " ") * 3_000 for _ in range(3)],  # 0.5-3 M characters each
        "literal markers": [f"{d} <think> not a thought </think> {d}" for d in good[:5]],
    }
    rows = good + [r for rows in bad.values() for r in rows]
    rng.shuffle(rows)
    return rows, {k: len(v) for k, v in bad.items()}


def config(out: str, steps: int, save_steps: int, seed: int):
    from rlp_trl import RLPConfig

    return RLPConfig(
        output_dir=out, max_steps=steps, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        num_generations=4, per_device_train_batch_size=8, max_completion_length=8, max_context_tokens=64,
        min_context_tokens=4, learning_rate=1e-3, ema_decay=0.99, logging_steps=10, save_strategy="steps",
        save_steps=save_steps, save_total_limit=2, report_to=[], disable_tqdm=True, seed=seed,
        dataloader_num_workers=0, max_document_chars=20_000,
    )


# ---------------------------------------------------------------------------------------------- worker
def worker(args) -> int:
    import gc

    import psutil
    import torch
    from transformers import TrainerCallback

    import rlp_trl.trainer as trainer_module
    from rlp_trl import RLPTrainer
    from rlp_trl.data import read_json_lines

    trainer = RLPTrainer(
        os.path.join(args.out, "model"), args=config(args.run_dir, args.steps, args.save_steps, args.seed),
        train_dataset=read_json_lines(os.path.join(args.out, "corpus.jsonl")),
    )
    process = psutil.Process()

    def emit(kind, **payload):
        print("SOAK " + json.dumps({"kind": kind, **payload}), flush=True)

    # faults, a function of the step being computed only, so every run injects them at the same steps
    real_gain = trainer_module.information_gain

    def faulty_gain(reasoned, baseline, discount=1.0):
        rewards = real_gain(reasoned, baseline, discount)
        if (trainer.state.global_step + 1) % args.nan_reward_every == 0:
            rewards = rewards.clone()
            rewards[0] = float("nan")
        return rewards

    trainer_module.information_gain = faulty_gain
    model = trainer.accelerator.unwrap_model(trainer.model)

    def poison(module, inputs, output):
        hit = torch.is_grad_enabled() and (trainer.state.global_step + 1) % args.nan_grad_every == 0
        return output * float("nan") if hit else output

    model.model.norm.register_forward_hook(poison)

    try:
        import ctypes

        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        malloc_trim = None

    class Probe(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            rss = process.memory_info().rss / 2**20
            trimmed = None
            if state.global_step % 10 == 0:  # what is really held: collect garbage, hand freed heap back to the OS
                gc.collect()
                if malloc_trim is not None:
                    malloc_trim(0)
                trimmed = process.memory_info().rss / 2**20
            emit("step", step=state.global_step, rss_mb=rss, trimmed_rss_mb=trimmed, time=time.time())

    trainer.add_callback(Probe())
    if trainer.position_stats is not None:
        stats = trainer.position_stats
        emit("data", documents=stats.documents, positions=stats.positions, skipped=stats.skipped,
             windowed=stats.windowed)
    started = time.time()
    from rlp_trl import RunConfig, train
    from rlp_trl.resilience import guard

    result = train(trainer, "auto" if args.resume else None, RunConfig(on_nonfinite="skip"))
    nonfinite = guard(trainer).nonfinite_guard
    emit("end", step=trainer.state.global_step, interrupted=result.interrupted, nonfinite=dict(nonfinite.totals),
         events=list(nonfinite.events), already_finished=result.finished_at, train_s=time.time() - started)
    if result.interrupted:
        return 128 + int(getattr(signal, result.interrupted))
    if result.finished_at is not None:
        return 0
    torch.save({"policy": {k: v.detach() for k, v in model.named_parameters()},
                "teacher": {k: v.detach() for k, v in trainer.teacher.module.named_parameters()}},
               os.path.join(args.run_dir, "final_weights.pt"))
    return 0


# ---------------------------------------------------------------------------------------------- orchestrator
def run_worker(args, run_dir: str, resume: bool = False, interrupt_at: int | None = None, launch: bool = False) -> dict:
    """One worker process; with `launch`, under `rlp-launch` (the SIGTERM then goes to the launcher)."""
    head = [sys.executable, "-m", "rlp_trl.tools.launch", "--"] if launch else []
    cmd = [*head, sys.executable, os.path.abspath(__file__), "--worker", "--out", args.out, "--run-dir", run_dir,
           "--steps", str(args.steps), "--save-steps", str(args.save_steps), "--seed", str(args.seed),
           "--nan-reward-every", str(args.nan_reward_every), "--nan-grad-every", str(args.nan_grad_every)]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": ROOT}
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    result = {"steps": [], "log": [], "signalled_at": None, "checkpoint_at_exit": None}
    for line in proc.stdout:
        if not line.startswith("SOAK "):
            result["log"].append(line)
            continue
        event = json.loads(line[5:])
        if event["kind"] == "step":
            result["steps"].append(event)
            if interrupt_at is not None and event["step"] >= interrupt_at and result["signalled_at"] is None:
                proc.send_signal(signal.SIGTERM)
                result["signalled_at"] = event["step"]
        else:
            result[event["kind"]] = event
    result["returncode"] = proc.wait()
    result["wall_s"] = time.time() - start
    from rlp_trl.resilience import last_complete_checkpoint  # verified (sizes + sha256) the moment the launcher exited

    last, skipped = last_complete_checkpoint(run_dir)
    result["checkpoint_at_exit"] = os.path.basename(last) if last else None
    result["checkpoints_not_verifying"] = len(skipped)
    if result["returncode"] not in (0, 128 + signal.SIGTERM):
        sys.stderr.write("".join(result["log"][-80:]))
        raise SystemExit(f"worker failed with exit code {result['returncode']}")
    return result


def _slope_per_100(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return round(100 * sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points), 2)


def memory_growth(steps: list[dict], warmup: int) -> dict:
    """Least-squares growth of RSS per 100 steps after `warmup` steps of the process: raw, and after gc +
    malloc_trim (every 10 steps), which removes what the allocator merely keeps cached."""
    first = steps[0]["step"] if steps else 0
    kept = [s for s in steps if s["step"] > first + warmup]
    trimmed = [(s["step"], s["trimmed_rss_mb"]) for s in kept if s.get("trimmed_rss_mb") is not None]
    return {
        "warmup_steps": warmup,
        "per_100_steps_mb": _slope_per_100([(s["step"], s["rss_mb"]) for s in kept]),
        "per_100_steps_mb_after_trim": _slope_per_100(trimmed),
        "rss_mb_every_10_steps": {s["step"]: round(s["rss_mb"], 1) for s in steps if s["step"] % 10 == 0},
        "trimmed_rss_mb_every_10_steps": {s["step"]: round(s["trimmed_rss_mb"], 1) for s in steps
                                          if s.get("trimmed_rss_mb") is not None},
    }


def machine() -> dict:
    import torch

    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gb = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def orchestrate(args) -> dict:
    import torch
    from tiny_model import build_tiny_model

    os.makedirs(args.out, exist_ok=True)
    build_tiny_model(os.path.join(args.out, "model"))
    bad_rows = write_corpus(os.path.join(args.out, "corpus.jsonl"), seed=args.seed)
    interrupt_at = args.interrupt_at or args.steps // 2
    info = machine()
    ref_dir, int_dir = os.path.join(args.out, "reference"), os.path.join(args.out, "interrupted")
    for d in (ref_dir, int_dir):
        if os.path.exists(d):
            import shutil

            shutil.rmtree(d)

    print(f"[soak] reference run: {args.steps} steps", flush=True)
    ref = run_worker(args, ref_dir)
    print(f"[soak] interrupted run (rlp-launch): SIGTERM to the launcher at step {interrupt_at}", flush=True)
    first = run_worker(args, int_dir, interrupt_at=interrupt_at, launch=True)
    print("[soak] resuming", flush=True)
    second = run_worker(args, int_dir, resume=True)
    print("[soak] relaunching the finished run", flush=True)
    third = run_worker(args, int_dir, resume=True)

    a = torch.load(os.path.join(ref_dir, "final_weights.pt"), weights_only=True)
    b = torch.load(os.path.join(int_dir, "final_weights.pt"), weights_only=True)

    def compare(x, y):
        diff = max((x[k] - y[k]).abs().max().item() for k in x)
        return {"bitwise_equal": all(torch.equal(x[k], y[k]) for k in x), "max_abs_diff": diff}

    report = {
        "machine": info,
        "settings": {"steps": args.steps, "save_steps": args.save_steps, "save_total_limit": 2,
                     "nan_reward_every": args.nan_reward_every, "nan_grad_every": args.nan_grad_every,
                     "G": 4, "contexts_per_step": 2, "thought_tokens": 8, "context_tokens": 64},
        "corpus": {"bad_rows_seeded": bad_rows, **{k: ref["data"][k] for k in ("documents", "positions", "skipped",
                                                                              "windowed")}},
        "reference": {"steps_done": ref["end"]["step"], "wall_s": round(ref["wall_s"], 1),
                      "nonfinite": ref["end"]["nonfinite"], "nonfinite_events": ref["end"]["events"],
                      "memory": memory_growth(ref["steps"], args.warmup)},
        "checks": {"weights_after_every_step": True, "tensors_before_every_save": True, "marker": "sha256 per file",
                   "runaway_flags_reference": ref["end"]["nonfinite"].get("runaway", 0),
                   "reference_checkpoints_at_exit": ref["checkpoint_at_exit"],
                   "reference_checkpoints_not_verifying": ref["checkpoints_not_verifying"],
                   "train_s_per_step_reference": round(ref["end"]["train_s"] / max(1, ref["end"]["step"]), 3)},
        "interrupted": {"launcher": "rlp-launch", "sigterm_sent_after_step": first["signalled_at"],
                        "exit_code": first["returncode"], "checkpoint_when_launcher_exited": first["checkpoint_at_exit"],
                        "stopped_at_step": first["end"]["step"], "wall_s": round(first["wall_s"], 1),
                        "nonfinite": first["end"]["nonfinite"], "memory": memory_growth(first["steps"], args.warmup)},
        "resumed": {"from_step": second["steps"][0]["step"] - 1 if second["steps"] else None,
                    "steps_done": second["end"]["step"], "exit_code": second["returncode"],
                    "wall_s": round(second["wall_s"], 1), "nonfinite_total": second["end"]["nonfinite"],
                    "memory": memory_growth(second["steps"], args.warmup)},
        "relaunched_finished": {"exit_code": third["returncode"], "already_finished": third["end"]["already_finished"],
                                "steps_trained": len(third["steps"]), "checkpoint_at_exit": third["checkpoint_at_exit"],
                                "wall_s": round(third["wall_s"], 1)},
        "final_teacher_matches_reference": compare(a["teacher"], b["teacher"]),
        "final_policy_matches_reference": compare(a["policy"], b["policy"]),
    }
    with open(os.path.join(args.out, "soak_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "soak_report.md"), "w") as f:
        f.write(markdown(report))
    return report


def markdown(r: dict) -> str:
    """The report as the Markdown block recorded in docs/reliability.md."""
    m, ref, cut, res = r["machine"], r["reference"], r["interrupted"], r["resumed"]
    fin, chk = r["relaunched_finished"], r["checks"]
    events = ", ".join(f"{e['kind']}@{e['step']}" for e in ref["nonfinite_events"])

    def mem(x):
        series = x["memory"]["trimmed_rss_mb_every_10_steps"]
        marks = [k for k in sorted(series, key=int) if int(k) % 50 == 0]
        return (f"{x['memory']['per_100_steps_mb']} MB raw, {x['memory']['per_100_steps_mb_after_trim']} MB after "
                f"gc + malloc_trim (trimmed RSS: " + ", ".join(f"step {k}: {series[k]:.0f} MB" for k in marks) + ")")

    skipped = ", ".join(f"{k} {v}" for k, v in sorted(r["corpus"]["skipped"].items()))
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']}, Python {m['python']}, torch "
        f"{m['torch']} (CPU); load average at start {', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])} "
        f"(shared with other jobs, so wall times are indicative only).",
        "",
        f"Settings: tiny model, {r['settings']['steps']} steps, G = 4, 2 contexts per step, thoughts <= 8 tokens, contexts "
        f"<= 64 tokens, checkpoints every {r['settings']['save_steps']} steps (save_total_limit 2), NaN reward injected "
        f"every {r['settings']['nan_reward_every']} steps and NaN gradients every {r['settings']['nan_grad_every']} "
        f"steps (on_nonfinite=skip).",
        "",
        "| | result |",
        "|---|---|",
        f"| corpus | {r['corpus']['documents']} documents -> {r['corpus']['positions']} positions; skipped: {skipped}; "
        f"windowed (over max_document_chars): {r['corpus']['windowed']} |",
        f"| reference run | {ref['steps_done']} steps in {ref['wall_s']:.0f} s |",
        f"| interrupted run (`rlp-launch`) | SIGTERM to the launcher after step {cut['sigterm_sent_after_step']}; stopped "
        f"after step {cut['stopped_at_step']}; when the launcher exited (code {cut['exit_code']}) the newest verifying "
        f"checkpoint was {cut['checkpoint_when_launcher_exited']} |",
        f"| resumed run | from step {res['from_step']} to {res['steps_done']}, exit code {res['exit_code']} |",
        f"| same command again on the finished run | exit code {fin['exit_code']}, already at max_steps "
        f"{fin['already_finished']}, {fin['steps_trained']} steps trained, {fin['wall_s']:.0f} s |",
        f"| checks on | weights after every optimizer step, policy/teacher/optimizer tensors before every save, sha256 "
        f"per checkpoint file; runaway flags in the reference run: {chk['runaway_flags_reference']}; reference "
        f"checkpoints left: newest verifying {chk['reference_checkpoints_at_exit']}, "
        f"{chk['reference_checkpoints_not_verifying']} not verifying; {chk['train_s_per_step_reference']} s per step |",
        f"| non-finite events (each run) | {ref['nonfinite']} — {events} |",
        f"| memory growth per 100 steps, reference (after {ref['memory']['warmup_steps']} warm-up steps) | {mem(ref)} |",
        f"| memory growth per 100 steps, resumed process | {mem(res)} |",
        f"| final EMA teacher == reference | {r['final_teacher_matches_reference']['bitwise_equal']} (max abs diff "
        f"{r['final_teacher_matches_reference']['max_abs_diff']}) |",
        f"| final policy == reference | {r['final_policy_matches_reference']['bitwise_equal']} (max abs diff "
        f"{r['final_policy_matches_reference']['max_abs_diff']}) |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--interrupt-at", type=int, default=None, help="default: steps // 2")
    parser.add_argument("--nan-reward-every", type=int, default=37)
    parser.add_argument("--nan-grad-every", type=int, default=53)
    parser.add_argument("--warmup", type=int, default=30, help="steps of each process ignored for the memory slope")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/soak")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        raise SystemExit(worker(args))
    report = orchestrate(args)
    print(markdown(report))
    print(f"full report: {os.path.join(args.out, 'soak_report.json')}")


if __name__ == "__main__":
    main()
