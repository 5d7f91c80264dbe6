"""`make compare`: base vs RLP vs compute-matched CPT on the embedded defaults, then rlp-eval and rlp-bench.

    python examples/compare.py [--rlp_steps 32] [--learning_rate 1e-5] [--cpt_match flops] [--output_dir outputs/compare]

1. Split the embedded corpus (Wikipedia math/science extracts) into train and held-out documents (`heldout_split`).
2. RLP: `examples/configs/demo_cpu.yaml` (2 contexts x G=4 rollouts per step, 32-token thoughts, 128-token contexts)
   on the train split for `--rlp_steps` steps.
3. CPT: next-token prediction on the same train split from the same base model, with the token budget of step 2
   (`rlp_trl.tools.cpt`: equal FLOPs by default, `--cpt_match tokens` for equal input tokens) and the same learning
   rate.
4. `rlp-eval` on the held-out split for the three models (same positions, same seeds) and `rlp-bench` (reasoning-gym
   and CHAMP problems, with and without a thought) for each.
5. One table on stdout, `compare.json` and `compare.png` in `--output_dir`.

What it simplifies: the budgets are tiny (minutes on a 2-core CPU; the paper uses 170M input tokens on 32 H100s), and
the learning rate defaults to 1e-5 instead of the paper's 1e-6 so that a few steps move the weights at all. At 135M
parameters benchmark accuracies are near zero; held-out log-likelihood and information gain are the signals to read.
`--skip_training` re-evaluates the models already in `--output_dir`.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlp_trl.tools import cpt  # noqa: E402
from rlp_trl.tools.assets import default_corpus_path, default_model_path  # noqa: E402
from rlp_trl.tools.bench import run_benchmarks  # noqa: E402
from rlp_trl.tools.eval import EvalArguments, run_eval  # noqa: E402
from rlp_trl.tools.heldout import heldout_split, load_with_markers  # noqa: E402
from rlp_trl.tools.train import load_documents  # noqa: E402
from rlp_trl.tools.train import main as rlp_train  # noqa: E402

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo_cpu.yaml")


@dataclass
class CompareArguments:
    output_dir: str = field(default="outputs/compare", metadata={"help": "Models, JSON, plot."})
    rlp_steps: int = field(default=32, metadata={"help": "RLP optimizer steps (2 contexts x 4 rollouts each)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of both RLP and CPT."})
    cpt_match: str = field(default="flops", metadata={"help": "'flops' or 'tokens' (rlp_trl.tools.cpt)."})
    eval_documents: int = field(default=64, metadata={"help": "Held-out documents (one position each) for rlp-eval."})
    doc_nll_documents: int = field(default=48, metadata={"help": "Held-out documents for the whole-document NLL."})
    eval_thoughts: int = field(default=4, metadata={"help": "K thoughts per position."})
    bench_tasks: str = field(default="basic_arithmetic,gsm_symbolic,champ", metadata={"help": "rlp-bench tasks."})
    bench_problems: int = field(default=20, metadata={"help": "Problems per task."})
    seed: int = field(default=0, metadata={"help": "Seed of everything."})
    skip_training: bool = field(default=False, metadata={"help": "Reuse the models in output_dir."})


def train_models(args: CompareArguments, base: str) -> dict:
    """Write the train split and the RLP config, train RLP, then CPT with the matched budget."""
    train, _ = heldout_split(load_documents(default_corpus_path()))
    train_path = os.path.join(args.output_dir, "train.jsonl")
    train.to_json(train_path)
    with open(DEMO_CONFIG) as f:
        config = yaml.safe_load(f)
    config.update(
        model_name_or_path=base, dataset_name=train_path, output_dir=os.path.join(args.output_dir, "rlp"),
        max_steps=args.rlp_steps, learning_rate=args.learning_rate, save_strategy="no", report_to=[],
        log_completions=False, seed=args.seed,
    )
    config_path = os.path.join(args.output_dir, "rlp.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    timings = {}
    start = time.time()
    rlp_train(["--config", config_path])
    timings["rlp_s"] = time.time() - start
    start = time.time()
    plan = cpt.main(["--rlp_config", config_path, "--match", args.cpt_match, "--output_dir",
                     os.path.join(args.output_dir, "cpt"), "--seed", str(args.seed)])
    timings["cpt_s"] = time.time() - start
    return {"rlp_config": config_path, "cpt_plan": plan, "timings": timings}


def table(report: dict, bench: dict, budget: dict) -> str:
    ci = lambda s: f"{s['mean']:.3f} ±{(s['ci_high'] - s['ci_low']) / 2:.3f}"  # noqa: E731
    first = next(iter(bench.values()))
    cols = [(t, m) for t in first for m in first[t]]
    head = ("| model | train tokens | held-out doc NLL (ppl) | NLL at positions, no thought | NLL after a thought | "
            "info gain | thinking helps | "
            + " | ".join(f"{t} {m}" for t, m in cols) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, m in report["models"].items():
        s = m["summary"]
        helps = s["thinking_helps_frac"]
        acc = " | ".join(
            f"{round(bench[label][t][mm]['accuracy']['mean'] * bench[label][t][mm]['accuracy']['n'])}/"
            f"{bench[label][t][mm]['accuracy']['n']}" for t, mm in cols
        )
        lines.append(
            f"| {label} | {budget.get(label, '-')} | {ci(s['doc_nll'])} ({s['doc_token_ppl']['mean']:.2f}) | "
            f"{ci(s['nll_nothink'])} | {ci(s['nll_reasoned'])} | {ci(s['info_gain'])} | {helps['mean']:.0%} | {acc} |"
        )
    lines.append("")
    for name, diff in report["comparisons"].items():
        lines.append(f"paired {name}: doc NLL {ci(diff['doc_nll'])}, NLL at positions {ci(diff['nll_nothink'])}, "
                     f"NLL after a thought {ci(diff['nll_reasoned'])}, info gain {ci(diff['info_gain'])}")
    return "\n".join(lines)


def plot(report: dict, bench: dict, path: str) -> None:
    """Held-out NLLs per model, paired differences against the base model, benchmark accuracies (all with 95% CIs)."""
    from rlp_trl._extras import missing

    if missing("matplotlib", "plots", "compare.png"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["models"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {label: f"C{i}" for i, label in enumerate(labels)}

    def bars(ax, groups, series):  # series: [(label, [stat dicts per group])]
        width = 0.8 / len(series)
        for i, (label, stats) in enumerate(series):
            means = [st["mean"] for st in stats]
            errs = [[st["mean"] - st["ci_low"] for st in stats], [st["ci_high"] - st["mean"] for st in stats]]
            ax.bar([j + i * width for j in range(len(groups))], means, width, yerr=errs, capsize=3, label=label,
                   color=colors[label])
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups, fontsize=8)
        ax.legend(fontsize=8)

    nll = [("doc_nll", "all tokens"), ("nll_nothink", "positions,\nno thought"), ("nll_reasoned", "positions,\nafter a thought")]
    bars(axes[0], [n for _, n in nll], [(lb, [report["models"][lb]["summary"][k] for k, _ in nll]) for lb in labels])
    axes[0].set_ylabel("NLL of the true next token (nats)")
    axes[0].set_title("held-out next-token NLL")
    deltas = [("doc_nll", "Δ doc NLL"), ("nll_nothink", "Δ NLL, no thought"), ("nll_reasoned", "Δ NLL after\na thought"),
              ("info_gain", "Δ info gain")]
    series = [(name.split(" - ")[0], [diff[k] for k, _ in deltas]) for name, diff in report["comparisons"].items()
              if "note" not in diff]
    if series:
        bars(axes[1], [n for _, n in deltas], series)
    axes[1].axhline(0, color="k", lw=1)
    axes[1].set_title(f"paired difference vs {labels[0]} (same positions)")
    cols = [(t, m) for t in bench[labels[0]] for m in bench[labels[0]][t]]
    bars(axes[2], [f"{t.replace('basic_', '').replace('_symbolic', '')}\n{m}" for t, m in cols],
         [(lb, [bench[lb][t][m]["accuracy"] for t, m in cols]) for lb in labels])
    axes[2].set_ylim(0, 1)
    axes[2].set_title("benchmark accuracy (Wilson CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging
    from trl import TrlParser

    disable_progress_bar()
    hf_logging.set_verbosity_error()
    (args,) = TrlParser((CompareArguments,)).parse_args_and_config(args=argv)
    os.makedirs(args.output_dir, exist_ok=True)
    base = default_model_path()
    t0 = time.time()
    training = {} if args.skip_training else train_models(args, base)
    paths = {"base": base, "rlp": os.path.join(args.output_dir, "rlp"), "cpt": os.path.join(args.output_dir, "cpt")}

    start = time.time()
    eval_args = EvalArguments(
        num_documents=args.eval_documents, doc_nll_documents=args.doc_nll_documents, num_thoughts=args.eval_thoughts,
        seed=args.seed,
        output_dir=os.path.join(args.output_dir, "eval"),
    )
    report = run_eval(eval_args, paths)
    eval_s = time.time() - start
    start = time.time()
    bench = {}
    for label, path in paths.items():
        model, tokenizer, open_ids, close_id = load_with_markers(path, "<think>", "</think>", args.seed)
        bench[label] = run_benchmarks(
            model, tokenizer, open_ids, close_id, tasks=args.bench_tasks.split(","), num_problems=args.bench_problems,
            max_thought_tokens=32, max_answer_tokens=16, batch_size=32, seed=args.seed,
        )
    bench_s = time.time() - start

    budget_path = os.path.join(paths["cpt"], "cpt_budget.json")
    budget = {}
    if os.path.exists(budget_path):
        with open(budget_path) as f:
            plan = json.load(f)
        rlp = plan["rlp"]
        budget = {"base": "0", "rlp": f"{rlp['input_tokens']:.0f} input ({rlp['flop_tokens']:.0f} FLOP-equiv.)",
                  "cpt": f"{plan['trained_tokens']} ({plan['match']}-matched)"}
    text = table(report, bench, budget)
    timings = {**training.get("timings", {}), "eval_s": eval_s, "bench_s": bench_s, "total_s": time.time() - t0}
    out = {"args": asdict(args), "training": training, "eval": {k: v for k, v in report.items()}, "bench": bench,
           "budget": budget, "timings": timings}
    for m in out["eval"]["models"].values():
        m.pop("per_position", None)
    with open(os.path.join(args.output_dir, "compare.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(report, bench, os.path.join(args.output_dir, "compare.png"))
    print("\n" + text)
    print(f"\ntimings (s): {json.dumps({k: round(v) for k, v in timings.items()})}")
    print(f"wrote {args.output_dir}/compare.json and {args.output_dir}/compare.png")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
