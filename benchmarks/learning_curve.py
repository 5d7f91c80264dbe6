"""Does thinking learn? RLP on the embedded default for a fixed wall-clock budget, evaluated held out, paired.

    python benchmarks/learning_curve.py [--minutes 60] [--output_dir outputs/learning_curve] \
        [--json docs/learning_curve.json] [--plot docs/learning_curve.png] [any option below]

1. The embedded corpus (Wikipedia math/science extracts) is split by `rlp_trl.tools.heldout.heldout_split`: RLP
   trains on ~90% of the documents, the rest is never seen.
2. `RLPTrainer` trains the embedded SmolLM2-135M-Instruct (markers added as the trainer adds them) until `--minutes`
   of wall clock have passed (or `--max_steps`), saving the weights at `--snapshots` evenly spaced times and at the end.
3. `rlp-eval` (`rlp_trl.tools.eval.run_eval`) scores the untouched base model (with the same marker rows) and every
   snapshot on the held-out documents: identical positions and thought seeds, so each difference is paired.
4. Writes the JSON (held-out information gain with 95% CIs per snapshot, the paired difference of the last snapshot
   against the base, training closing/truncation rates and thought lengths over the first and last 10% of steps, the
   no-think document NLL of both) and a plot.

Every RLP setting is the trainer's default except the sizes (thought length, contexts, G, learning rate), chosen by
measurement on this 2-core CPU: docs/learning_curve.md says which and why.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import rlp_trl  # noqa: E402  (first: it quiets library warnings that are not the user's)
from rlp_trl import RLPConfig, RLPTrainer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402, I001
from rlp_trl.tools.assets import default_corpus_path, default_model_path  # noqa: E402
from rlp_trl.tools.eval import EvalArguments, run_eval  # noqa: E402
from rlp_trl.tools.heldout import heldout_split  # noqa: E402
from rlp_trl.tools.stats import mean_ci  # noqa: E402
from rlp_trl.tools.train import load_documents  # noqa: E402


@dataclass
class CurveArguments:
    output_dir: str = field(default="outputs/learning_curve", metadata={"help": "Snapshots and rlp-eval output."})
    json: str = field(default="docs/learning_curve.json", metadata={"help": "Where the results go."})
    plot: str = field(default="docs/learning_curve.png", metadata={"help": "Where the plot goes ('' for none)."})
    minutes: float = field(default=60.0, metadata={"help": "Training wall-clock budget."})
    max_steps: int = field(default=100_000, metadata={"help": "Step limit (the budget usually ends the run first)."})
    snapshots: int = field(default=4, metadata={"help": "Evaluated snapshots: at k/N of the budget, k = 1..N."})
    snapshot_steps: str = field(
        default="", metadata={"help": "Comma-separated steps to snapshot at instead (the end is always one)."}
    )
    learning_rate: float = field(default=3e-6, metadata={"help": "Constant learning rate."})
    num_generations: int = field(default=4, metadata={"help": "G rollouts per context."})
    contexts_per_step: int = field(default=4, metadata={"help": "Contexts per optimizer step."})
    max_thought_tokens: int = field(default=16, metadata={"help": "Thought length limit (training and eval)."})
    max_context_tokens: int = field(default=128, metadata={"help": "Context window (training and eval)."})
    think_token_init: str = field(default="text", metadata={"help": "RLPConfig.think_token_init."})
    think_open_init: str = field(default="<", metadata={"help": "RLPConfig.think_open_init."})
    think_close_init: str = field(default=">", metadata={"help": "RLPConfig.think_close_init."})
    think_markers_as_text: bool = field(default=False, metadata={"help": "RLPConfig.think_markers_as_text."})
    think_close_in_loss: bool = field(default=True, metadata={"help": "RLPConfig.think_close_in_loss."})
    reader_nll_coef: float = field(default=0.0, metadata={"help": "RLPConfig.reader_nll_coef (0: the paper)."})
    nothink_nll_coef: float = field(default=0.0, metadata={"help": "RLPConfig.nothink_nll_coef (0: the paper)."})
    think_marker_lr_multiplier: float = field(default=1.0, metadata={"help": "RLPConfig.think_marker_lr_multiplier."})
    eval_corpus: str = field(
        default="heldout", metadata={"help": "'heldout': the held-out ~10% of the embedded corpus; 'champ': CHAMP "
                                             "competition problems with their worked solutions (math text in another "
                                             "style, never trained or tuned on)."}
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default; 1 for two runs side by side)."})
    combine: str = field(
        default="", metadata={"help": "Comma-separated result JSONs of earlier runs: only write their table (stdout) and "
                                      "one plot of all of them to --plot; nothing is trained."}
    )
    eval_documents: int = field(default=96, metadata={"help": "Held-out documents (one position each)."})
    doc_nll_documents: int = field(default=64, metadata={"help": "Held-out documents for the document NLL."})
    eval_thoughts: int = field(default=4, metadata={"help": "K thoughts per held-out position."})
    seed: int = field(default=0, metadata={"help": "Seed of training, positions and thoughts."})


class Budget(TrainerCallback):
    """Stops training after `minutes` and saves the weights at `snapshots` evenly spaced times, or at the given
    `steps`, and at the end."""

    def __init__(self, trainer, minutes: float, snapshots: int, directory: str, steps: list[int] | None = None):
        self.trainer, self.seconds, self.directory = trainer, 60 * minutes, directory
        self.marks = [] if steps else [self.seconds * k / snapshots for k in range(1, snapshots + 1)]
        self.steps = sorted(steps or [])
        self.saved: list[tuple[int, str]] = []
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def save(self, step: int) -> None:
        if self.saved and self.saved[-1][0] == step:
            return
        path = os.path.join(self.directory, f"step-{step}")
        self.trainer.save_model(path)
        self.saved.append((step, path))

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.time() - self.start
        while self.marks and elapsed >= self.marks[0]:
            self.marks.pop(0)
            self.save(state.global_step)
        if self.steps and state.global_step in self.steps:
            self.save(state.global_step)
        if elapsed >= self.seconds:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.save(state.global_step)


def train(args: CurveArguments, base: str, train_docs) -> tuple[list[tuple[int, str]], list[dict], float]:
    """Train until the budget ends; return the snapshots (step, folder), the per-step log and the seconds taken."""
    config = RLPConfig(
        output_dir=os.path.join(args.output_dir, "run"), max_steps=args.max_steps, learning_rate=args.learning_rate,
        num_generations=args.num_generations, per_device_train_batch_size=args.contexts_per_step * args.num_generations,
        max_completion_length=args.max_thought_tokens, max_context_tokens=args.max_context_tokens,
        think_token_init=args.think_token_init, think_open_init=args.think_open_init,
        think_close_init=args.think_close_init, think_markers_as_text=args.think_markers_as_text,
        think_close_in_loss=args.think_close_in_loss, reader_nll_coef=args.reader_nll_coef,
        nothink_nll_coef=args.nothink_nll_coef, think_marker_lr_multiplier=args.think_marker_lr_multiplier, logging_steps=1, save_strategy="no", report_to=[],
        bf16=False, gradient_checkpointing=False, seed=args.seed, use_cpu=True,
    )
    trainer = RLPTrainer(base, args=config, train_dataset=train_docs)
    steps = [int(s) for s in args.snapshot_steps.split(",") if s.strip()]
    budget = Budget(trainer, args.minutes, args.snapshots, os.path.join(args.output_dir, "snapshots"), steps)
    trainer.add_callback(budget)
    start = time.time()
    rlp_trl.train(trainer)  # with the run's guarantees (non-finite guard), as rlp-train runs
    seconds = time.time() - start
    log = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    return budget.saved, log, seconds


def window_mean(log: list[dict], key: str, first: bool, fraction: float = 0.1) -> float:
    n = max(1, round(len(log) * fraction))
    rows = log[:n] if first else log[-n:]
    return sum(r[key] for r in rows) / len(rows)


def summarize(args, snapshots, log, seconds, report) -> dict:
    models = report["models"]
    base_label = next(iter(models))
    last_label = f"step-{snapshots[-1][0]}"
    paired = report["comparisons"][f"{last_label} - {base_label}"]
    ci = lambda s: {k: s[k] for k in ("mean", "ci_low", "ci_high")}  # noqa: E731
    per_checkpoint = {
        label: {
            "step": 0 if label == base_label else int(label.split("-")[1]),
            "info_gain": ci(m["summary"]["info_gain"]),
            "thinking_helps_frac": ci(m["summary"]["thinking_helps_frac"]),
            "nll_nothink_at_positions": ci(m["summary"]["nll_nothink"]),
            "doc_nll_nothink": ci(m["summary"]["doc_nll"]),
            "thought_closed_frac": m["thought_closed_frac"],
            "thought_truncated_frac": m["thought_truncated_frac"],
            "thought_length_mean": m["thought_length_mean"],
            "example_thoughts": m["example_thoughts"],
        }
        for label, m in models.items()
    }
    return {
        "command": "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()}-core CPU, torch fp32",
        "settings": asdict(args),
        "train_seconds": seconds,
        "train_steps": len(log),
        "steps": [s for s, _ in snapshots],
        "checkpoints": per_checkpoint,
        "paired_diff_vs_base": ci(paired["info_gain"]),
        # per held-out position (same positions and thought seeds in every run: runs compare pairwise too)
        "per_position_info_gain": {"base": models[base_label]["per_position"]["info_gain"],
                                   "last": models[last_label]["per_position"]["info_gain"]},
        "paired_doc_nll_diff_vs_base": ci(paired["doc_nll"]),
        "paired_nll_nothink_diff_vs_base": ci(paired["nll_nothink"]),
        "truncated_frac_first": window_mean(log, "rlp/thought_truncated_frac", True),
        "truncated_frac_last": window_mean(log, "rlp/thought_truncated_frac", False),
        "closed_frac_first": window_mean(log, "rlp/thought_closed_frac", True),
        "closed_frac_last": window_mean(log, "rlp/thought_closed_frac", False),
        "thought_length_first": window_mean(log, "rlp/thought_length_mean", True),
        "thought_length_last": window_mean(log, "rlp/thought_length_mean", False),
        "train_info_gain_first": mean_ci([r["rlp/info_gain_mean"] for r in log[: max(1, len(log) // 10)]]),
        "train_info_gain_last": mean_ci([r["rlp/info_gain_mean"] for r in log[-max(1, len(log) // 10):]]),
        "doc_nll_nothink": {"base": ci(models[base_label]["summary"]["doc_nll"]),
                            "rlp": ci(models[last_label]["summary"]["doc_nll"])},
        "train_log": [
            {k: r[k] for k in ("step", "rlp/info_gain_mean", "rlp/thought_truncated_frac", "rlp/thought_closed_frac",
                               "rlp/thought_length_mean", "rlp/reader_nll", "rlp/nothink_nll") if k in r}
            for r in log
        ],
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = result["train_log"]
    steps = [r["step"] for r in log]

    def smooth(values, k=max(1, len(log) // 20)):
        return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(steps, [r["rlp/info_gain_mean"] for r in log], alpha=0.25, color="C0")
    ax.plot(steps, smooth([r["rlp/info_gain_mean"] for r in log]), color="C0", label="training batches (smoothed)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("information gain (nats)")
    ax.set_title("training information gain vs EMA teacher")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(steps, smooth([r["rlp/thought_closed_frac"] for r in log]), label="closed by a sampled </think>")
    ax.plot(steps, smooth([r["rlp/thought_truncated_frac"] for r in log]), label="ran to the length limit")
    ax2 = ax.twinx()
    ax2.plot(steps, smooth([r["rlp/thought_length_mean"] for r in log]), color="C2", ls="--", label="mean length")
    ax2.set_ylabel("thought length (tokens)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction of thoughts")
    ax.set_title("how thoughts end (training)")
    ax.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper right")
    ax = axes[2]
    cps = sorted(result["checkpoints"].values(), key=lambda c: c["step"])
    xs = [c["step"] for c in cps]
    means = [c["info_gain"]["mean"] for c in cps]
    err = [[m - c["info_gain"]["ci_low"] for m, c in zip(means, cps)], [c["info_gain"]["ci_high"] - m for m, c in zip(means, cps)]]
    ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label="held-out information gain (95% CI)")
    d = result["paired_diff_vs_base"]
    ax.set_xlabel("optimizer step (0 = base model)")
    ax.set_ylabel("nats")
    ax.set_title(f"held out: last - base = {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] (paired)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label(result: dict) -> str:
    """A run's name from its likelihood-term settings."""
    s = result["settings"]
    reader, nothink = s.get("reader_nll_coef", 0.0), s.get("nothink_nll_coef", 0.0)
    marker = s.get("think_marker_lr_multiplier", 1.0)
    parts = [f"reader {reader:g}"] * bool(reader) + [f"no-think {nothink:g}"] * bool(nothink)
    parts += [f"marker lr x{marker:g}"] * (marker != 1.0)
    return " + ".join(parts) or "paper-exact"


def smooth(values, k):
    return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def table(results: list[dict]) -> str:
    """The markdown table of docs/learning_curve.md: one row per run, held-out numbers paired against the base."""
    ci = lambda d: f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"  # noqa: E731
    ci3 = lambda d: f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"  # noqa: E731
    reference = results[0].get("per_position_info_gain")

    def versus_first(r):  # the last snapshots of this run and of the first one, paired on the same positions
        if r is results[0] or reference is None or "per_position_info_gain" not in r:
            return "—"
        if r["per_position_info_gain"]["base"] != reference["base"]:
            return "(other positions)"
        diff = [a - b for a, b in zip(r["per_position_info_gain"]["last"], reference["last"])]
        return ci({k: float(v) for k, v in mean_ci(diff).items() if k != "n"})

    rows = ["| run | training gain, first -> last 10% | held-out gain (base) | held-out gain, paired vs base | paired vs "
            f"{label(results[0])} | thinking helps (base -> run) | closed / at the limit / mean length (held out) | "
            "no-think NLL at the positions, paired | whole-document NLL, paired |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cps = sorted(r["checkpoints"].values(), key=lambda c: c["step"])
        base, last = cps[0], cps[-1]
        rows.append(
            f"| {label(r)} | {r['train_info_gain_first']['mean']:+.2f} -> {r['train_info_gain_last']['mean']:+.2f} | "
            f"{last['info_gain']['mean']:+.2f} ({base['info_gain']['mean']:+.2f}) | **{ci(r['paired_diff_vs_base'])}** | "
            f"{versus_first(r)} | "
            f"{base['thinking_helps_frac']['mean']:.0%} -> {last['thinking_helps_frac']['mean']:.0%} | "
            f"{last['thought_closed_frac']:.0%} / {last['thought_truncated_frac']:.0%} / {last['thought_length_mean']:.1f} | "
            f"{ci3(r['paired_nll_nothink_diff_vs_base'])} | {ci3(r['paired_doc_nll_diff_vs_base'])} |"
        )
    return "\n".join(rows)


def plot_runs(results: list[dict], path: str) -> None:
    """One figure for several runs: training information gain (smoothed), thoughts at the limit, held-out gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, r in enumerate(results):
        log, color = r["train_log"], f"C{i}"
        steps, k = [x["step"] for x in log], max(1, len(log) // 10)
        axes[0].plot(steps, smooth([x["rlp/info_gain_mean"] for x in log], k), color=color, label=label(r))
        axes[1].plot(steps, smooth([x["rlp/thought_truncated_frac"] for x in log], k), color=color, label=label(r))
        cps = sorted(r["checkpoints"].values(), key=lambda c: c["step"])
        means = [c["info_gain"]["mean"] for c in cps]
        err = [[m - c["info_gain"]["ci_low"] for m, c in zip(means, cps)],
               [c["info_gain"]["ci_high"] - m for m, c in zip(means, cps)]]
        axes[2].errorbar([c["step"] + 0.8 * i for c in cps], means, yerr=err, marker="o", capsize=3, color=color,
                         label=label(r))
    axes[0].set(xlabel="optimizer step", ylabel="nats", title="training information gain vs EMA teacher (smoothed)")
    axes[1].set(xlabel="optimizer step", ylabel="fraction", title="training thoughts that ran to the length limit")
    axes[2].axhline(0.0, color="grey", lw=0.8, ls=":")
    axes[2].set(xlabel="optimizer step (0 = base model)", ylabel="nats",
                title="held-out information gain (95% CI)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def champ_documents(path: str) -> str:
    """The 270 CHAMP competition problems as documents (problem, worked solution, answer) in a .jsonl at `path`:
    math text in another style than the training corpus, never trained or tuned on."""
    import ast

    from rlp_trl.tools.bench import champ_path

    with open(champ_path(), encoding="utf-8") as f:
        problems = json.load(f)["problems"].values()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            solution = p["solution"] if isinstance(p["solution"], dict) else ast.literal_eval(p["solution"])
            steps = " ".join(step["_text"] for step in solution["steps"])
            text = f"Problem: {p['_text']}\nSolution: {steps}\nAnswer: {p['_answer']}"
            f.write(json.dumps({"text": text}) + "\n")
    return path


def eval_arguments(args: CurveArguments, output_dir: str, **overrides) -> EvalArguments:
    """`rlp-eval` settings matching the training run: thought length, context, markers, seed."""
    fields = dict(
        num_documents=args.eval_documents, doc_nll_documents=args.doc_nll_documents, num_thoughts=args.eval_thoughts,
        max_thought_tokens=args.max_thought_tokens, max_context_tokens=args.max_context_tokens,
        think_token_init=args.think_token_init, think_open_init=args.think_open_init,
        think_close_init=args.think_close_init, think_markers_as_text=args.think_markers_as_text, seed=args.seed,
        output_dir=output_dir,
        dataset_name=champ_documents(os.path.join(output_dir, "champ.jsonl")) if args.eval_corpus == "champ" else None,
    )
    return EvalArguments(**{**fields, **overrides})


def main(argv=None) -> dict:
    from trl import TrlParser

    (args,) = TrlParser((CurveArguments,)).parse_args_and_config(args=argv)
    if args.combine:
        results = []
        for path in args.combine.split(","):
            with open(path) as f:
                results.append(json.load(f))
        print(table(results))
        if args.plot:
            plot_runs(results, args.plot)
        return {"runs": results}
    if args.eval_corpus not in ("heldout", "champ"):
        raise SystemExit(f"--eval_corpus must be 'heldout' or 'champ', got {args.eval_corpus!r}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = default_model_path()
    train_docs, _ = heldout_split(load_documents(default_corpus_path()))
    snapshots, log, seconds = train(args, base, train_docs)
    eval_args = eval_arguments(args, os.path.join(args.output_dir, "eval"))
    report = run_eval(eval_args, {"base": base, **{f"step-{s}": p for s, p in snapshots}})
    result = summarize(args, snapshots, log, seconds, report)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    d = result["paired_diff_vs_base"]
    print(f"{len(log)} steps in {seconds / 60:.1f} min; held-out information gain, last - base (paired): "
          f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] nats; truncated "
          f"{result['truncated_frac_first']:.0%} -> {result['truncated_frac_last']:.0%}; wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
