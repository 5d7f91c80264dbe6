"""Compute-matched continued-pretraining (CPT) baseline for an RLP run (paper Sec. 3 "Continuous Pretraining", Sec. 5
and Sec. 11), as `examples/train_cpt.py` / `rlp-cpt`.

CPT is plain next-token prediction on the same corpus, from the same base model, with the same optimizer settings
(learning rate, schedule, precision), for a token budget derived from the RLP run's config:

    B         = per_device_train_batch_size * gradient_accumulation_steps * num_processes / num_generations
                (contexts per RLP optimizer step; TRL counts completions per device)
    L_ctx     = mean context length in tokens, measured on the corpus with the run's position settings
    T_inp     = B * steps * L_ctx                                   input tokens RLP reads       (--match tokens)
    l_seq     = L_ctx + max_completion_length                       one rollout: context + thought
    T_flop    = num_generations * l_seq * B * steps + T_inp         paper Sec. 11                (--match flops)

The paper's run (170M input tokens, 200 steps of 512 contexts x 16 rollouts, thoughts of 2048 tokens, so
L_ctx = 170M / (512 * 200) ~ 1660) gives 16 * (1660 + 2048) * 512 * 200 + 170M ~ 6.2B tokens: the "about 6B" it
reports. The thought length counts at its limit, as in the paper (a short thought costs less; this is the budget).

CPT packs the documents (each followed by EOS) into blocks of `block_size` tokens (default: the run's
`max_context_tokens`) and trains `ceil(budget / (block_size * batch * accumulation * processes))` steps with the
transformers `Trainer`, repeating the corpus when the budget exceeds it.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

import yaml

from ..config import RLPConfig


# ---------------------------------------------------------------------------------------------------- the budget
@dataclass
class RLPBudget:
    """Token accounting of an RLP run (paper Sec. 11); all counts in tokens."""

    contexts_per_step: float
    num_generations: int
    steps: int
    mean_context_tokens: float
    thought_tokens: int

    @property
    def seq_len(self) -> float:
        return self.mean_context_tokens + self.thought_tokens

    @property
    def input_tokens(self) -> float:
        return self.contexts_per_step * self.steps * self.mean_context_tokens

    @property
    def rollout_tokens(self) -> float:
        return self.num_generations * self.seq_len * self.contexts_per_step * self.steps

    @property
    def flop_tokens(self) -> float:
        return self.rollout_tokens + self.input_tokens

    def tokens(self, match: str) -> float:
        if match not in ("tokens", "flops"):
            raise ValueError(f"match must be 'tokens' (equal input tokens) or 'flops' (equal compute), got {match!r}")
        return self.input_tokens if match == "tokens" else self.flop_tokens

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "seq_len": self.seq_len, "input_tokens": self.input_tokens,
                "rollout_tokens": self.rollout_tokens, "flop_tokens": self.flop_tokens}


def rlp_config_values(path: str) -> dict:
    """An RLP YAML config merged over `RLPConfig`'s defaults (not instantiated, so a GPU config reads on a CPU)."""
    defaults = {}
    for f in dataclasses.fields(RLPConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    with open(path) as fh:
        values = yaml.safe_load(fh) or {}
    return {**defaults, **values}


def contexts_per_step(values: dict, num_processes: int = 1) -> float:
    sequences = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] * num_processes
    return sequences / values["num_generations"]


def mean_context_tokens(docs, tokenizer, values: dict, text_field: str = "text", max_documents: int = 2000) -> float:
    """Mean context length at the positions the run samples (measured on the first `max_documents` documents)."""
    from ..data import build_position_dataset

    docs = docs.select(range(min(max_documents, len(docs))))
    strategy = values["position_strategy"] if values["position_strategy"] != "surprising" else "random"
    positions, _ = build_position_dataset(
        docs, tokenizer, open_ids=[], text_field=text_field, max_context_tokens=values["max_context_tokens"],
        min_context_tokens=values["min_context_tokens"], reward_horizon=values["reward_horizon"],
        positions_per_document=values["positions_per_document"], position_strategy=strategy, seed=values["seed"],
    )
    lengths = [len(c) for c in positions["context_ids"]]
    return sum(lengths) / len(lengths)


def pack_documents(token_lists: list[list[int]], eos_id: int | None, block_size: int) -> list[list[int]]:
    """Concatenate documents (each followed by EOS when there is one) and cut full blocks; the remainder is dropped."""
    stream = []
    for ids in token_lists:
        stream.extend(ids)
        if eos_id is not None:
            stream.append(eos_id)
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


# ---------------------------------------------------------------------------------------------------- CLI
DESCRIPTION = (
    "Compute-matched continued pretraining (the paper's CPT baseline): plain next-token prediction on the RLP run's "
    "corpus, from its base model, with its optimizer settings, for the token budget of the run (--match tokens: equal "
    "input tokens; flops: equal compute, paper Sec. 11). Options can also come from --config FILE.yaml."
)


@dataclass
class CPTArguments:
    """Arguments of `examples/train_cpt.py` / `rlp-cpt` (every field is a flag)."""

    rlp_config: str = field(
        default="examples/configs/demo_cpu.yaml", metadata={"help": "YAML config of the RLP run to match."}
    )
    match: str = field(default="flops", metadata={"help": "'tokens' (equal input tokens) or 'flops' (equal compute)."})
    rlp_max_steps: int | None = field(default=None, metadata={"help": "Override the run's max_steps (e.g. if it stopped early)."})
    rlp_num_processes: int = field(default=1, metadata={"help": "Processes (GPUs) the RLP run used."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model (default: the RLP config's, else the embedded SmolLM2-135M-Instruct)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Corpus (default: the RLP config's, else the embedded corpus)."}
    )
    dataset_text_field: str | None = field(default=None, metadata={"help": "Document column (default: the RLP config's)."})
    block_size: int | None = field(default=None, metadata={"help": "Tokens per training sequence (default: max_context_tokens)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Accumulation steps."})
    learning_rate: float | None = field(default=None, metadata={"help": "Default: the RLP config's (paper: all else equal)."})
    output_dir: str = field(default="outputs/cpt", metadata={"help": "Where the CPT model and cpt_budget.json go."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    seed: int = field(default=0, metadata={"help": "Data order and initialisation seed."})
    dry_run: bool = field(default=False, metadata={"help": "Only compute and print the budget."})


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator
    from trl import TrlParser
    from datasets import Dataset

    from .train import load_documents

    from ..usage import UsageError, check_model, check_path, parse_args, prog_name

    (args,) = parse_args(TrlParser, (CPTArguments,), argv, prog_name("rlp-cpt"), DESCRIPTION)
    if not os.path.isfile(os.path.expanduser(args.rlp_config)):
        raise UsageError(f"--rlp_config {args.rlp_config}: no such file; pass the YAML config of the RLP run to match")
    check_model(args.model_name_or_path)
    check_path(args.dataset_name, "--dataset_name", "corpus file or folder, or a Hub dataset name")
    values = rlp_config_values(args.rlp_config)
    if args.rlp_max_steps is not None:
        values["max_steps"] = args.rlp_max_steps
    if values.get("max_steps", -1) <= 0:
        raise UsageError(f"{args.rlp_config} has no max_steps; pass --rlp_max_steps <optimizer steps of the RLP run>")
    model_path = args.model_name_or_path or values.get("model_name_or_path")
    dataset_name = args.dataset_name or values.get("dataset_name")
    if model_path is None or dataset_name is None:
        from .assets import default_corpus_path, default_model_path

        model_path, dataset_name = model_path or default_model_path(), dataset_name or default_corpus_path()
    text_field = args.dataset_text_field or values.get("dataset_text_field", "text")

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    docs = load_documents(dataset_name)
    budget = RLPBudget(
        contexts_per_step=contexts_per_step(values, args.rlp_num_processes), num_generations=values["num_generations"],
        steps=values["max_steps"], mean_context_tokens=mean_context_tokens(docs, tokenizer, values, text_field),
        thought_tokens=values["max_completion_length"],
    )
    target = budget.tokens(args.match)
    block = args.block_size or values["max_context_tokens"]
    train_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate if args.learning_rate is not None else values["learning_rate"],
        lr_scheduler_type=values["lr_scheduler_type"], warmup_steps=values.get("warmup_steps", 0),
        weight_decay=values.get("weight_decay", 0.0), bf16=bool(values.get("bf16")) and _has_accelerator(),
        gradient_checkpointing=bool(values.get("gradient_checkpointing")), logging_steps=args.logging_steps,
        save_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True, dataloader_pin_memory=_has_accelerator(),
    )
    tokens_per_step = block * args.per_device_train_batch_size * args.gradient_accumulation_steps * train_args.world_size
    steps = max(1, math.ceil(target / tokens_per_step))
    plan = {
        "match": args.match, "rlp_config": args.rlp_config, "rlp": budget.as_dict(), "target_tokens": target,
        "block_size": block, "tokens_per_step": tokens_per_step, "steps": steps, "trained_tokens": steps * tokens_per_step,
        "model": model_path, "dataset": dataset_name, "learning_rate": train_args.learning_rate,
    }
    print(f"[rlp_trl] CPT budget ({args.match}): {json.dumps(plan, indent=1)}")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "cpt_budget.json"), "w") as f:
        json.dump(plan, f, indent=1)
    if args.dry_run:
        return plan

    texts = [t for t in docs[text_field] if isinstance(t, str) and t.strip()]
    token_lists = tokenizer(texts, add_special_tokens=True)["input_ids"]
    blocks = pack_documents(token_lists, tokenizer.eos_token_id, block)
    if not blocks:
        raise UsageError(f"The corpus has fewer than block_size={block} tokens; lower --block_size")
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    train_args.max_steps = steps
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    trainer = Trainer(model=model, args=train_args, train_dataset=dataset, data_collator=default_data_collator)
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    with open(os.path.join(args.output_dir, "cpt_metrics.jsonl"), "w") as f:
        for row in trainer.state.log_history:
            f.write(json.dumps(row) + "\n")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        print(f"[rlp_trl] CPT: {steps} steps, {steps * tokens_per_step} tokens, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return plan


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry point (`rlp-cpt`, `examples/train_cpt.py`): 0, not the budget; a user error is one line
    `rlp-cpt: error: ...` and exit status 2 (`rlp_trl.usage.run_cli`)."""
    from ..usage import run_cli

    return run_cli(main, "rlp-cpt", argv)


if __name__ == "__main__":
    raise SystemExit(cli())
