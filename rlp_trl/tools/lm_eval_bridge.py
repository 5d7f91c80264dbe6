"""`rlp-bench --lm_eval`: the bridge to lm-evaluation-harness (the `lm-eval` extra). The command line that runs a task
suite on a checkpoint (`PAPER_SUITE`: the paper's, on a GPU with the Hub), and the lm-eval tasks shipped with rlp_trl
over local data (`LOCAL_LM_EVAL_TASKS`: rlp-bench's seeded problems and prompt, offline)."""

import json
import os
import subprocess
import sys

import yaml

from .._extras import require

# The paper's suite (Table 1) in lm-evaluation-harness 0.4.13 task names. AMC23 and Minerva Math (the MIT problem set)
# have no lm-eval task; `minerva_math500` is MATH-500 with Minerva's prompt and answer check.
PAPER_SUITE = ("aime25", "minerva_math500", "gsm8k", "mmlu", "mmlu_pro", "gpqa_diamond_zeroshot")


def lm_eval_command(model: str, tasks: list[str], *, backend: str = "hf", output_path: str = "outputs/lm_eval",
                    batch_size: str = "auto", dtype: str = "bfloat16", limit: float | None = None,
                    extra_model_args: str = "", include_path: str | None = None) -> list[str]:
    """The lm-evaluation-harness command line that runs `tasks` on `model` (backend `hf` or `vllm`); a LoRA output
    folder runs as its base model with `peft=<folder>`."""
    from ..loading import is_adapter_folder

    pretrained = f"pretrained={model}"
    if is_adapter_folder(model):
        with open(os.path.join(model, "adapter_config.json")) as f:
            pretrained = f"pretrained={json.load(f)['base_model_name_or_path']},peft={model}"
    model_args = f"{pretrained},dtype={dtype}" + (f",{extra_model_args}" if extra_model_args else "")
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", backend, "--model_args", model_args,
           "--tasks", ",".join(tasks), "--batch_size", str(batch_size), "--output_path", output_path, "--log_samples"]
    if include_path:
        cmd += ["--include_path", include_path]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


# Tasks shipped with rlp_trl: lm-eval tasks over local data, so the bridge runs offline (and in the test suite).
# `rlp_gsm_symbolic`: reasoning-gym's seeded GSM-style problems (`gsm_symbolic`), written to a JSON-lines file, asked
# as `Question: ...\nAnswer:`, greedy answer to the end of the line, exact match after lm-eval's normalisation
# (case, punctuation, spaces) and taking the last number of the answer.
LOCAL_LM_EVAL_TASKS = {"rlp_gsm_symbolic": "gsm_symbolic"}
def _local_task_config(task: str, data: str, *, max_tokens: int, generator: str, seed: int, n: int) -> dict:
    from .bench import ANSWER_CUE, QUESTION_TEMPLATE  # rlp-bench's prompt (rlp_trl/tools/bench.py imports this module)

    return {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": QUESTION_TEMPLATE.replace("{question}", "{{question}}") + ANSWER_CUE,
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n", "Question:"], "max_gen_toks": max_tokens, "do_sample": False},
        # the answer is the last number the model wrote (units and words around it are not graded)
        "filter_list": [{"name": "last_number", "filter": [
            {"function": "regex", "regex_pattern": r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?!.*[0-9])", "group_select": 0},
            {"function": "take_first"},
        ]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
        "metadata": {"version": 1.0, "source": f"rlp_trl: reasoning-gym {generator}, seed {seed}, {n} problems"},
    }


def write_local_lm_eval_tasks(tasks: list[str], folder: str, *, num_problems: int, seed: int,
                              max_answer_tokens: int) -> str | None:
    """Write the data and YAML of the local tasks among `tasks` into `folder`; the folder (for lm-eval's
    `--include_path`), or None when no local task was asked for."""
    from .bench import reasoning_gym_problems  # rlp-bench's seeded problems (rlp_trl/tools/bench.py imports this module)

    local = [t for t in tasks if t in LOCAL_LM_EVAL_TASKS]
    if not local:
        return None
    os.makedirs(folder, exist_ok=True)
    for task in local:
        generator = LOCAL_LM_EVAL_TASKS[task]
        problems = reasoning_gym_problems(generator, num_problems, seed)
        data = os.path.abspath(os.path.join(folder, f"{task}.jsonl"))
        with open(data, "w", encoding="utf-8") as f:
            for p in problems:
                f.write(json.dumps({"question": p.question.strip(), "answer": p.answer}) + "\n")
        config = _local_task_config(task, data, max_tokens=max_answer_tokens, generator=generator, seed=seed,
                                    n=len(problems))
        with open(os.path.join(folder, f"{task}.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
    return folder


def run_lm_eval(cmd: list[str]) -> int:
    require("lm_eval", "lm-eval", "rlp-bench --lm_eval", import_module=False)
    env = dict(os.environ)
    offline = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if env.get(k) == "1"]
    hub_tasks = [t for t in cmd[cmd.index("--tasks") + 1].split(",") if t not in LOCAL_LM_EVAL_TASKS]
    if offline and hub_tasks:
        print(f"[rlp-bench] note: {offline} are set; lm-eval needs the hub for the datasets of {hub_tasks} unless they "
              f"are cached (the local tasks: {sorted(LOCAL_LM_EVAL_TASKS)})")
    return subprocess.call(cmd, env=env)
