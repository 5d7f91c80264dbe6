"""`rlp-eval` / `python -m rlp_trl.tools.eval`: does thinking help a checkpoint predict held-out text?

At sampled positions t of held-out documents (`rlp_trl.data.build_position_dataset`, the trainer's sampler) it measures,
for one checkpoint or two:

* no-think NLL  = -log p(x_t | x_<t)                              (and perplexity = exp of its mean)
* reasoned NLL  = mean_k -log p(x_t | x_<t, <think> c_k </think>)  over K thoughts c_k sampled like in training
  (prompt = context + `<think>`, stop at `</think>`, temperature 0.7, the closing marker appended when a thought runs
  to the limit)
* marginal NLL  = -log (1/K sum_k p(x_t | x_<t, c_k))             (thought marginalised out; Prop. 2's quantity)
* information gain = mean_k log p(x_t | x_<t, c_k) - log p(x_t | x_<t), the training reward (eq. 5) with the model
  itself as the no-think baseline (training uses the lagged EMA teacher), and the fraction of positions where it is > 0.
* document NLL / perplexity: every token of the same documents, no thought (the ordinary held-out likelihood; cheap
  and more precise than the sampled positions).

Means come with 95% normal confidence intervals over positions (the unit is a position; its K thoughts are averaged
first), fractions with Wilson intervals. With a second checkpoint, differences are paired on identical positions.
Writes `eval.json` (summaries and per-position values) and `eval.png` to `--output_dir`.

Without `--model_name_or_path` / `--dataset_name` it uses the embedded offline model and the held-out part of the
embedded corpus (`heldout_split`: ~10% of the documents, chosen by a hash of their text; `make compare` trains on
the rest, `make demo` on everything).
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..data import build_position_dataset
from ..loading import load_causal_lm
from ..surprise import document_token_logps, make_position_scorer
from ..markers import markers_missing, text_marker_ids
from .heldout import evaluate_positions, heldout_split, load_with_markers
from .stats import compare_positions, mean_ci, summarize_positions


# ---------------------------------------------------------------------------------------------------- CLI
@dataclass
class EvalArguments:
    """Arguments of `rlp-eval` (every field is a flag; `--config file.yaml` also works)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint to evaluate: a model or LoRA output folder, or a Hub name (default: the embedded SmolLM2-135M-Instruct)."})
    compare_to: str | None = field(default=None, metadata={"help": "Optional second checkpoint; differences are paired."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out documents: a .txt/.jsonl/.parquet/.csv file, folder or hub name. "
                                        "Default: the held-out split of the embedded corpus."}
    )
    dataset_text_field: str = field(default="text", metadata={"help": "Column with the documents."})
    num_documents: int = field(default=32, metadata={"help": "Documents with sampled positions (the first N held out)."})
    doc_nll_documents: int = field(
        default=64, metadata={"help": "Documents (the first N held out) for the whole-document NLL (no thoughts: cheap)."}
    )
    positions_per_document: int = field(default=1, metadata={"help": "Positions sampled per document."})
    position_strategy: str = field(default="random", metadata={"help": "'random', 'stride' or 'surprising' (per model: unpaired)."})
    max_context_tokens: int = field(default=128, metadata={"help": "Left-truncate contexts to this many tokens."})
    min_context_tokens: int = field(default=16, metadata={"help": "Minimum context before a position."})
    num_thoughts: int = field(default=4, metadata={"help": "K thoughts sampled per position."})
    max_thought_tokens: int = field(default=32, metadata={"help": "Maximum thought length."})
    temperature: float = field(default=0.7, metadata={"help": "Thought sampling temperature (paper: 0.7)."})
    think_open: str = field(default="<think>", metadata={"help": "Marker that opens a thought."})
    think_close: str = field(default="</think>", metadata={"help": "Marker that closes a thought."})
    think_token_init: str = field(
        default="text", metadata={"help": "Rows of markers added to a vocabulary that lacks them: 'text' or 'mean' "
                                          "(use the training run's setting; RLPConfig.think_token_init)."}
    )
    think_open_init: str = field(default="<", metadata={"help": "Text whose token rows initialise an added open marker."})
    think_close_init: str = field(default=">", metadata={"help": "Text whose token rows initialise an added close marker."})
    think_markers_as_text: bool = field(
        default=False, metadata={"help": "Markers missing from the vocabulary are plain text (as in training with it)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per scoring pass; prompts per generate call (x K rows)."})
    seed: int = field(default=0, metadata={"help": "Seed of positions, marker embeddings and thoughts."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where eval.json and eval.png go."})


def load_heldout_documents(args: EvalArguments):
    from .train import load_documents

    if args.dataset_name is None:
        from .assets import default_corpus_path

        _, docs = heldout_split(load_documents(default_corpus_path()), "text")
        text_field = "text"
    else:
        docs, text_field = load_documents(args.dataset_name), args.dataset_text_field
    return docs.select(range(min(max(args.num_documents, args.doc_nll_documents), len(docs)))), text_field


def load_checkpoint(path: str, args: EvalArguments):
    """(model, tokenizer, open_ids, close_id) with the markers as the training run had them; close_id is None for
    plain-text markers (then open_ids is the open marker's text ids)."""
    if args.think_markers_as_text:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if markers_missing(tokenizer, args.think_open, args.think_close):
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = load_causal_lm(path, dtype=torch.float32).eval()
            return model, tokenizer, text_marker_ids(tokenizer, args.think_open, args.think_close)[0], None
    return load_with_markers(
        path, args.think_open, args.think_close, args.seed, init=args.think_token_init,
        init_texts=(args.think_open_init, args.think_close_init),
    )


def evaluate_checkpoint(path: str, docs, text_field: str, args: EvalArguments) -> dict:
    """Load one checkpoint, build positions with its tokenizer, and evaluate them."""
    model, tokenizer, open_ids, close_id = load_checkpoint(path, args)
    positions, stats = build_position_dataset(
        docs.select(range(min(args.num_documents, len(docs)))), tokenizer, open_ids=open_ids, text_field=text_field, max_context_tokens=args.max_context_tokens,
        min_context_tokens=args.min_context_tokens, positions_per_document=args.positions_per_document,
        position_strategy=args.position_strategy, seed=args.seed,
        position_scorer=make_position_scorer(model, args.max_context_tokens, tokenizer.pad_token_id, args.batch_size)
        if args.position_strategy == "surprising" else None,
    )
    result = evaluate_positions(
        model, tokenizer, positions, open_ids=open_ids, close_id=close_id, num_thoughts=args.num_thoughts,
        max_thought_tokens=args.max_thought_tokens, temperature=args.temperature, batch_size=args.batch_size,
        seed=args.seed, close_text=args.think_close,
    )
    result["positions_key"] = [(list(c), list(t)) for c, t in zip(positions["context_ids"], positions["target_ids"])]
    result["summary"] = summarize_positions(result["per_position"])
    # every token of the same documents, no thought: the ordinary held-out log-likelihood (cheap, and more precise)
    texts = docs.select(range(min(args.doc_nll_documents, len(docs))))[text_field]
    doc_ids = [tokenizer(t)["input_ids"] for t in texts if isinstance(t, str) and t.strip()]
    logps = document_token_logps(model, doc_ids, args.max_context_tokens, args.batch_size, tokenizer.pad_token_id)
    token_nll = [[-v for v in lp[1:]] for lp in logps if len(lp) > 1]
    result["per_document"] = {"doc_nll": torch.tensor([sum(x) / len(x) for x in token_nll], dtype=torch.float64)}
    total = sum(map(sum, token_nll)) / sum(map(len, token_nll))
    result["summary"]["doc_nll"] = mean_ci(result["per_document"]["doc_nll"])
    result["summary"]["doc_token_ppl"] = {"mean": math.exp(total), "tokens": sum(map(len, token_nll))}
    result["documents_key"] = doc_ids
    result["position_stats"] = stats.summary()
    return result


def _label(path: str) -> str:
    return os.path.basename(str(path).rstrip("/")) or str(path)


def run_eval(args: EvalArguments, paths: dict[str, str] | None = None) -> dict:
    """Evaluate `paths` ({label: checkpoint}; default: the model and `compare_to`) and write JSON + plot."""
    if paths is None:
        if args.model_name_or_path is None:
            from .assets import default_model_path

            args.model_name_or_path = default_model_path()
        paths = {_label(args.model_name_or_path): args.model_name_or_path}
        if args.compare_to:
            paths[_label(args.compare_to) if _label(args.compare_to) not in paths else "compare_to"] = args.compare_to
    docs, text_field = load_heldout_documents(args)
    results = {
        label: evaluate_checkpoint(path, docs, text_field, args)
        for label, path in tqdm(paths.items(), desc="rlp-eval checkpoints", unit="model")
    }
    labels = list(results)
    report = {"config": asdict(args), "models": {}, "comparisons": {}}
    for label in labels:
        r = results[label]
        report["models"][label] = {
            "checkpoint": paths[label],
            "positions": r["position_stats"],
            "summary": r["summary"],
            "thought_length_mean": r["thought_length_mean"],
            "thought_truncated_frac": r["thought_truncated_frac"],
            "thought_closed_frac": r["thought_closed_frac"],
            "example_thoughts": r["example_thoughts"],
            "per_position": {k: v.tolist() for k, v in r["per_position"].items()},
            "per_document": {k: v.tolist() for k, v in r["per_document"].items()},
        }
    for other in labels[1:]:
        paired = results[other]["positions_key"] == results[labels[0]]["positions_key"]
        report["comparisons"][f"{other} - {labels[0]}"] = (
            {**compare_positions(results[labels[0]]["per_position"], results[other]["per_position"]),
             **compare_positions(results[labels[0]]["per_document"], results[other]["per_document"])}
            if paired and results[other]["documents_key"] == results[labels[0]]["documents_key"]
            else {"note": "tokenizers differ, positions are not identical: compare the per-model CIs instead"}
        )
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot_eval(report, os.path.join(args.output_dir, "eval.png"))
    return report


def format_table(report: dict) -> str:
    """One line per model: NLLs at the positions, perplexity of the whole documents, information gain, and the
    fraction of positions where thinking helps; then the paired differences."""
    head = (f"{'model':<20} {'no-think NLL':>20} {'reasoned NLL':>20} {'marginal NLL':>13} {'info gain':>21} "
            f"{'helps':>14} {'doc NLL':>20} {'doc ppl':>8}")
    lines = [head, "-" * len(head)]
    ci = lambda s: f"{s['mean']:.3f} [{s['ci_low']:.2f},{s['ci_high']:.2f}]"  # noqa: E731
    for label, m in report["models"].items():
        s = m["summary"]
        helps = s["thinking_helps_frac"]
        lines.append(
            f"{label[:20]:<20} {ci(s['nll_nothink']):>20} {ci(s['nll_reasoned']):>20} {s['nll_marginal']['mean']:>13.3f} "
            f"{ci(s['info_gain']):>21} {helps['mean']:>5.0%} [{helps['ci_low']:.0%},{helps['ci_high']:.0%}] "
            f"{ci(s['doc_nll']):>20} {s['doc_token_ppl']['mean']:>8.2f}"
        )
    for name, diff in report["comparisons"].items():
        if "note" in diff:
            lines.append(f"{name}: {diff['note']}")
        else:
            lines.append(f"{name} (paired): no-think NLL {ci(diff['nll_nothink'])}, reasoned NLL {ci(diff['nll_reasoned'])}, "
                         f"info gain {ci(diff['info_gain'])}, doc NLL {ci(diff['doc_nll'])}")
    return "\n".join(lines)


def plot_eval(report: dict, path: str) -> None:
    """Left: NLLs with 95% CIs per model. Right: distribution of the per-position information gain."""
    from .._extras import missing as missing_extra

    if missing_extra("matplotlib", "plots", "eval.png"):  # the JSON report is written; the plot is optional
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [("nll_nothink", "no-think"), ("nll_reasoned", "reasoned (mean over K)"), ("nll_marginal", "marginal")]
    labels = list(report["models"])
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        s = report["models"][label]["summary"]
        means = [s[n]["mean"] for n, _ in names]
        errs = [[s[n]["mean"] - s[n]["ci_low"] for n, _ in names], [s[n]["ci_high"] - s[n]["mean"] for n, _ in names]]
        ax1.bar([j + i * width for j in range(len(names))], means, width, yerr=errs, capsize=3, label=label)
        gains = report["models"][label]["per_position"]["info_gain"]
        ax2.hist(gains, bins=30, alpha=0.5, label=label)
    ax1.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(names))], [n for _, n in names])
    ax1.set_ylabel("NLL of the true next token (nats)")
    ax1.set_title("held-out next-token NLL (95% CI)")
    ax1.legend(fontsize=8)
    ax2.axvline(0, color="k", lw=1)
    ax2.set_xlabel("information gain per position (nats)")
    ax2.set_title("does thinking help? (> 0: yes)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DESCRIPTION = (
    "Does thinking help a checkpoint predict held-out text? At sampled positions of held-out documents: the no-think "
    "NLL of the true next token, the NLL after K sampled thoughts, the information gain (the RLP reward with the model "
    "as its own baseline) and the whole-document NLL, with 95% intervals; two checkpoints are compared pairwise. "
    "Writes eval.json and eval.png to --output_dir. Options can also come from --config FILE.yaml."
)


def main(argv: list[str] | None = None) -> dict:
    from trl import TrlParser

    from ..usage import check_model, check_path, parse_args, prog_name

    (args,) = parse_args(TrlParser, (EvalArguments,), argv, prog_name("rlp-eval"), DESCRIPTION)
    check_model(args.model_name_or_path)
    check_model(args.compare_to, "--compare_to")
    check_path(args.dataset_name, "--dataset_name", "held-out corpus file or folder, or a Hub dataset name")
    report = run_eval(args)
    print(format_table(report))
    print(f"wrote {args.output_dir}/eval.json and {args.output_dir}/eval.png")
    return report


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry point (`rlp-eval`): 0, not the report (`sys.exit(report)` would exit 1); a user error is
    one line `rlp-eval: error: ...` and exit status 2 (`rlp_trl.usage.run_cli`)."""
    from ..usage import run_cli

    return run_cli(main, "rlp-eval", argv)


if __name__ == "__main__":
    raise SystemExit(cli())
