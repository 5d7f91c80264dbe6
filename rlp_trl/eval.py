"""`rlp-eval` / `python -m rlp_trl.eval`: does thinking help a checkpoint predict held-out text?

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
import zlib
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from .data import build_position_dataset
from .loading import load_causal_lm
from .generation import prefix_shared_sample
from .scoring import pad_rows, score_last_tokens
from .surprise import document_token_logps, make_position_scorer
from .loss import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE
from .markers import markers_missing, prepare_think_markers, split_thought, split_thought_text, text_marker_ids

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# ---------------------------------------------------------------------------------------------------- statistics
def mean_ci(values, z: float = Z95) -> dict:
    """Mean with a normal confidence interval mean +- z * s / sqrt(n) (s: sample std, ddof=1)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    n = x.numel()
    mean = x.mean().item() if n else float("nan")
    half = z * x.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def wilson_ci(successes: int, n: int, z: float = Z95) -> dict:
    """A fraction with its Wilson score interval (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"mean": p, "ci_low": centre - half, "ci_high": centre + half, "n": n}


def position_metrics(nothink_logps: torch.Tensor, reasoned_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position metrics from `[N]` no-think log-probs and `[N, K]` log-probs after K thoughts (nats).

    Returns `[N]` tensors: `nll_nothink`, `nll_reasoned` (mean over thoughts of the NLL), `nll_marginal`
    (-log of the mean probability), `info_gain` (mean over thoughts of reasoned - no-think log-prob) and
    `positive_thought_frac` (fraction of the K thoughts with a positive gain).
    """
    b = nothink_logps.double()
    r = reasoned_logps.double()
    k = r.size(1)
    return {
        "nll_nothink": -b,
        "nll_reasoned": -r.mean(1),
        "nll_marginal": -(torch.logsumexp(r, 1) - math.log(k)),
        "info_gain": r.mean(1) - b,
        "positive_thought_frac": (r > b[:, None]).double().mean(1),
    }


def summarize_positions(per_position: dict[str, torch.Tensor]) -> dict:
    """Means with CIs, perplexities (exp of the mean NLL and of its CI ends) and the fraction where thinking helps."""
    out = {name: mean_ci(values) for name, values in per_position.items()}
    for name in ("nothink", "reasoned", "marginal"):
        nll = out[f"nll_{name}"]
        out[f"ppl_{name}"] = {k: (math.exp(v) if k != "n" else v) for k, v in nll.items()}
    gains = per_position["info_gain"]
    out["thinking_helps_frac"] = wilson_ci(int((gains > 0).sum()), gains.numel())
    return out


def compare_positions(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Paired differences b - a on the same positions (mean with CI), for every per-position metric."""
    return {name: mean_ci(b[name] - a[name]) for name in a}


# ---------------------------------------------------------------------------------------------------- data
def heldout_split(dataset, text_field: str = "text", fraction: float = 0.1):
    """Split a document dataset into (train, held-out) by a CRC32 hash of each text: stable under reordering."""
    cut = int(fraction * 1000)
    held = [zlib.crc32(str(t).encode("utf-8")) % 1000 < cut for t in dataset[text_field]]
    train = dataset.select([i for i, h in enumerate(held) if not h])
    heldout = dataset.select([i for i, h in enumerate(held) if h])
    return train, heldout


# ---------------------------------------------------------------------------------------------------- model side
def load_with_markers(path: str, think_open: str, think_close: str, seed: int = 0, dtype: str = "float32",
                      init: str = "text", init_texts: tuple[str, str] = ("<", ">")):
    """Model and tokenizer with single-token think markers, added exactly as `RLPTrainer` does when missing (same
    `think_token_init` and init texts, so an untrained model and a model trained from it start from the same rows).

    The seed fixes the noise of `init="mean"` rows, so two runs (and two checkpoints that both lack the markers)
    get the same rows.
    """
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(path, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")  # LoRA folders too
    model.eval()
    torch.manual_seed(seed)
    open_ids, close_id, model = prepare_think_markers(
        tokenizer, model, think_open, think_close, add_tokens=True, init=init, init_texts=init_texts
    )
    return model, tokenizer, open_ids, close_id


def thought_generation_config(max_thought_tokens: int, temperature: float, stop_ids, pad_id: int, **kwargs):
    """Sampling settings of the trainer's thoughts: temperature, no top-p/top-k, >= 1 token, stop on the stop ids."""
    return GenerationConfig(
        max_new_tokens=max_thought_tokens, min_new_tokens=1, do_sample=True, temperature=temperature, top_p=1.0,
        top_k=0, eos_token_id=sorted(stop_ids), pad_token_id=pad_id, **kwargs,
    )


@torch.no_grad()
def sample_thoughts(model, prompts: list[list[int]], *, num_thoughts: int, max_thought_tokens: int, temperature: float,
                    stop_ids, pad_id: int, batch_size: int) -> list[list[list[int]]]:
    """K thoughts per prompt with `model.generate`, sampled as the trainer samples them.

    Returns, per prompt, K token lists as sampled (a stop token and padding may follow the thought: `split_thought`).
    """
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id, num_return_sequences=num_thoughts)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_rows(prompts[start : start + batch_size], pad_id, device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.size(1) :].tolist()
        out.extend(seqs[i : i + num_thoughts] for i in range(0, len(seqs), num_thoughts))
    return out


@torch.no_grad()
def reasoned_logps(model, prompts: list[list[int]], targets: list[list[int]], *, close_id: int, stop_ids: set[int],
                   num_thoughts: int, max_thought_tokens: int, temperature: float, pad_id: int,
                   batch_size: int) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """log p(x_t | prompt, c_k, </think>) for K sampled thoughts c_k per prompt: `[N, K]`, the thoughts, and how each
    ended (`split_thought`).

    Uses the trainer's prefix-shared sampler (`rlp_trl.generation`: one prefill per prompt, x_t scored in the same
    KV cache; `tests/test_evaluation.py` checks it against a separate teacher-forced pass).
    """
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id)
    thoughts, ends, scores = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="positions (K thoughts each)", unit="batch", leave=False):
        batch_prompts = prompts[start : start + batch_size]
        batch_targets = targets[start : start + batch_size]
        rows = [p for p in batch_prompts for _ in range(num_thoughts)]
        row_targets = [y for y in batch_targets for _ in range(num_thoughts)]
        sample = prefix_shared_sample(model, rows, config, [[close_id] + y for y in row_targets])
        split = [split_thought(s, stop_ids, close_id) for s in sample.completion_ids]
        logps = sample.suffix_logps[:, 1].cpu()
        thoughts.extend(t for t, _ in split)
        ends.extend(end for _, end in split)
        scores.append(logps.view(-1, num_thoughts))
    return torch.cat(scores), thoughts, ends


@torch.no_grad()
def reasoned_logps_text(model, tokenizer, prompts: list[list[int]], targets: list[list[int]], *, close: str,
                        num_thoughts: int, max_thought_tokens: int, temperature: float, batch_size: int
                        ) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """`reasoned_logps` for plain-text markers (`think_markers_as_text`), as the trainer does it: sample to EOS or
    the limit, cut at the first occurrence of the close marker's text, then score close ids + x_t in one pass."""
    close_ids = text_marker_ids(tokenizer, close, close)[1]
    pad_id, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    stop_ids = {eos} if eos is not None else set()
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id)
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    device = next(model.parameters()).device
    thoughts, ends, scores = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="positions (K thoughts each)", unit="batch", leave=False):
        rows = [p for p in prompts[start : start + batch_size] for _ in range(num_thoughts)]
        row_targets = [y for y in targets[start : start + batch_size] for _ in range(num_thoughts)]
        sample = prefix_shared_sample(model, rows, config)
        batch_thoughts = []
        for s in sample.completion_ids:
            thought, cut = split_thought_text(s, stop_ids, close, close_ids, decode)
            batch_thoughts.append(thought)
            ends.append(LENGTH_LIMIT if cut else SAMPLED_CLOSE if close in decode(s) else OTHER_STOP)
        thoughts.extend(batch_thoughts)
        ids, mask = pad_rows([p + t + close_ids + y for p, t, y in zip(rows, batch_thoughts, row_targets)], pad_id, device)
        scores.append(score_last_tokens(model, ids, mask, 1, len(rows))[:, 0].cpu().view(-1, num_thoughts))
    return torch.cat(scores), thoughts, ends


@torch.no_grad()
def evaluate_positions(model, tokenizer, positions, *, open_ids: list[int], close_id: int | None, num_thoughts: int = 4,
                       max_thought_tokens: int = 32, temperature: float = 0.7, batch_size: int = 16,
                       seed: int = 0, close_text: str | None = None) -> dict:
    """No-think and reasoned log-probs of the true next token at each position (rows of `build_position_dataset`).

    `close_id` None: the markers are plain text and `close_text` is the close marker (`reasoned_logps_text`).
    Returns `per_position` metrics (`position_metrics`), the raw log-probs, the thought lengths and how thoughts
    ended (closed by a sampled close marker, truncated at the limit).
    """
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    contexts = [list(c) for c in positions["context_ids"]]
    targets = [list(t)[:1] for t in positions["target_ids"]]
    # no-think: log p(x_t | x_<t), one pass per position, only the last position through the LM head
    ids, mask = pad_rows([c + y for c, y in zip(contexts, targets)], pad_id, device)
    nothink = score_last_tokens(model, ids, mask, 1, batch_size)[:, 0].cpu()
    # reasoned: K thoughts after context + <think>, then </think> + x_t scored under teacher forcing
    torch.manual_seed(seed)
    prompts = [c + list(open_ids) for c in contexts]
    common = dict(num_thoughts=num_thoughts, max_thought_tokens=max_thought_tokens, temperature=temperature,
                  batch_size=batch_size)
    if close_id is None:
        reasoned, thoughts, ends = reasoned_logps_text(model, tokenizer, prompts, targets, close=close_text, **common)
    else:
        stop_ids = {close_id} | {t for t in [tokenizer.eos_token_id] if t is not None}
        reasoned, thoughts, ends = reasoned_logps(
            model, prompts, targets, close_id=close_id, stop_ids=stop_ids, pad_id=pad_id, **common
        )
    return {
        "per_position": position_metrics(nothink, reasoned),
        "nothink_logps": nothink,
        "reasoned_logps": reasoned,
        "thought_length_mean": sum(map(len, thoughts)) / len(thoughts),
        "thought_truncated_frac": sum(e == LENGTH_LIMIT for e in ends) / len(ends),
        "thought_closed_frac": sum(e == SAMPLED_CLOSE for e in ends) / len(ends),
        "example_thoughts": [tokenizer.decode(t) for t in thoughts[: 3 * num_thoughts : num_thoughts]],
    }


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
    from .cli import load_documents

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
    from ._extras import missing as missing_extra

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

    from .usage import check_model, check_path, parse_args, prog_name

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
    from .usage import run_cli

    return run_cli(main, "rlp-eval", argv)


if __name__ == "__main__":
    raise SystemExit(cli())
