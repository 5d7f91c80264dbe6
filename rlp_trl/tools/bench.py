"""`rlp-bench`: reasoning benchmarks, offline on CPU or through lm-evaluation-harness on a GPU.

Offline (default): seeded problems from `reasoning-gym` (`basic_arithmetic`, `chain_sum`, `gsm_symbolic`, ...; scored
by each generator's own `score_answer`) and the 270 competition problems of `champ-dataset` (scored by `champ_score`),
each answered in two modes:

* `direct`: `Question: <q>\\n` `Answer:` then a greedy answer;
* `think`:  `Question: <q>\\n` `<think>`, a thought sampled as in RLP training (temperature 0.7, stop at `</think>`,
  closed by `</think>` if it runs to the limit), `</think>` `Answer:`, then a greedy answer. RLP's format (context,
  thought, continuation), with the same answer cue as `direct`: the thought is the only difference.

The answer is the first non-empty generated line, reduced by `extract_answer`. Accuracy is the fraction of problems
with full score, with a 95% Wilson interval. Problems are drawn with `--seed`, so two checkpoints see the same ones.

GPU with hub access: `rlp-bench --model_name_or_path <ckpt> --lm_eval paper` runs the paper's suite (`PAPER_SUITE`)
with lm-evaluation-harness (`pip install -e ".[lm-eval]"`); see docs/evaluation.md for how it maps onto the paper.
"""

import importlib.util
import json
import os
import random
import re
import shlex
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable

import torch
from tqdm.auto import tqdm

from .._extras import require
from .heldout import load_with_markers, sample_thoughts
from .lm_eval_bridge import LOCAL_LM_EVAL_TASKS, PAPER_SUITE, lm_eval_command, run_lm_eval, write_local_lm_eval_tasks
from .stats import wilson_ci
from ..markers import split_thought
from ..fast.scoring import pad_rows

REASONING_GYM_TASKS = ("basic_arithmetic", "chain_sum", "gsm_symbolic")
MODES = ("direct", "think")


@dataclass
class Problem:
    """One benchmark item: the question text, the gold answer (for display) and a scorer of a predicted answer."""

    question: str
    answer: str
    score: Callable[[str], float]


# ---------------------------------------------------------------------------------------------------- problems
def reasoning_gym_problems(name: str, num_problems: int, seed: int) -> list[Problem]:
    """`num_problems` seeded problems of a reasoning-gym generator, scored by its own verifier."""
    reasoning_gym = require("reasoning_gym", "bench", "rlp-bench's reasoning-gym tasks")
    ds = reasoning_gym.create_dataset(name, size=num_problems, seed=seed)
    return [
        Problem(e["question"], str(e["answer"]), lambda answer, e=e: float(ds.score_answer(answer=answer, entry=e)))
        for e in ds
    ]


def champ_path() -> str:
    require("champ_dataset", "bench", "rlp-bench's champ task", import_module=False)
    spec = importlib.util.find_spec("champ_dataset")
    return os.path.join(spec.submodule_search_locations[0], "dataset_files", "v0.json")


def champ_problems(num_problems: int, seed: int) -> list[Problem]:
    """A seeded sample of the 270 CHAMP competition problems (question `_text`, gold `_answer`)."""
    with open(champ_path(), encoding="utf-8") as f:
        problems = list(json.load(f)["problems"].values())
    chosen = random.Random(seed).sample(problems, min(num_problems, len(problems)))
    return [Problem(p["_text"], p["_answer"], lambda answer, g=p["_answer"]: champ_score(answer, g)) for p in chosen]


def check_tasks(tasks: list[str], modes: list[str]) -> None:
    """Unknown task or mode names as a one-line `UsageError` with the closest name, before any model is loaded
    (reasoning-gym reports a misspelled task as a `ValueError` traceback, after the model loaded)."""
    import difflib

    from ..usage import UsageError

    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"--modes: unknown mode {mode!r}; use {', '.join(MODES)} (comma-separated)")
    reasoning_gym = require("reasoning_gym", "bench", "rlp-bench's reasoning-gym tasks")
    known = {"champ", *reasoning_gym.factory.DATASETS}
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"--tasks: unknown task {task!r}; {hint}Use 'champ' or a reasoning-gym generator name "
                             f"(e.g. {', '.join(REASONING_GYM_TASKS)}), comma-separated")


def load_problems(task: str, num_problems: int, seed: int) -> list[Problem]:
    return champ_problems(num_problems, seed) if task == "champ" else reasoning_gym_problems(task, num_problems, seed)


# ---------------------------------------------------------------------------------------------------- scoring
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:=]?\s*", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The answer in a generation: the content of the last `\\boxed{..}` if any, else the first non-empty line, minus a
    leading "The answer is", then the part after the last "=", without surrounding `$`, spaces and a final period."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        line = boxed[-1]
    else:
        line = next((s.strip() for s in text.splitlines() if s.strip()), "")
        line = _ANSWER_PREFIX.sub("", line)
        if "=" in line:
            line = line.rsplit("=", 1)[1]
    return line.strip().strip("$").strip().rstrip(".").strip()


def _normalize(s: str) -> str:
    s = s.lower().replace("**", "^").replace("\\", "").replace("$", "")
    return re.sub(r"\s+", "", s).rstrip(".")


def _number(s: str) -> Fraction | None:
    try:
        return Fraction(s.replace(",", "")) if re.fullmatch(r"-?[\d,]*\.?\d+(/\d+)?", s.strip()) else None
    except (ValueError, ZeroDivisionError):
        return None


def champ_score(prediction: str, gold: str) -> float:
    """1.0 if the prediction equals one of the gold answer's forms, else 0.0.

    Forms: the gold split at "or equivalently" ("C(10, 5), or equivalently 252" has two). Equal means equal after
    lower-casing and removing spaces, `$`, backslashes and a final period (with `**` read as `^`), or the same number
    (integers, decimals, fractions like 3/2). Free-form gold answers ("No such values") therefore need the same words:
    this is a strict lower bound on what a human or LLM grader (as in the CHAMP paper) would accept.
    """
    if not prediction:
        return 0.0
    pred_norm, pred_num = _normalize(prediction), _number(prediction)
    for form in re.split(r",?\s*or equivalently\s*", gold):
        if pred_norm == _normalize(form) or (pred_num is not None and pred_num == _number(form)):
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------------- answering
QUESTION_TEMPLATE, ANSWER_CUE = "Question: {question}\n", "Answer:"


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], *, mode: str, open_ids: list[int], close_id: int,
                     max_thought_tokens: int = 64, max_answer_tokens: int = 24, temperature: float = 0.7,
                     batch_size: int = 16, seed: int = 0) -> tuple[list[str], list[str]]:
    """Answers (greedy) to `questions` in `direct` or `think` mode; returns (answer texts, thought texts)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pad_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    # the same token pieces in both modes, so the thought is the only difference
    prompts = [tokenizer(QUESTION_TEMPLATE.format(question=q.strip()))["input_ids"] for q in questions]
    cue = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    thoughts = [""] * len(prompts)
    if mode == "think":
        torch.manual_seed(seed)
        stop = {close_id} | ({eos} if eos is not None else set())
        prompts = [p + list(open_ids) for p in prompts]
        sampled = sample_thoughts(
            model, prompts, num_thoughts=1, max_thought_tokens=max_thought_tokens, temperature=temperature,
            stop_ids=sorted(stop), pad_id=pad_id, batch_size=batch_size,
        )
        cut = [split_thought(s[0], stop)[0] for s in sampled]
        thoughts = [tokenizer.decode(c) for c in cut]
        prompts = [p + c + [close_id] for p, c in zip(prompts, cut)]
    prompts = [p + cue for p in prompts]
    device = next(model.parameters()).device
    # the answer has at least one token and ends at EOS or at a think marker (a model that has not learned the format
    # may emit them anywhere; SmolLM2 ends right after an untrained thought: an empty answer would only measure that)
    stops = sorted({close_id, *open_ids} | ({eos} if eos is not None else set()))
    answers = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_rows(prompts[start : start + batch_size], pad_id, device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_answer_tokens, min_new_tokens=1, do_sample=False,
            eos_token_id=stops, pad_token_id=pad_id, top_p=None, top_k=None, temperature=None,
        )
        for o in out[:, ids.size(1) :].tolist():
            o = next((o[:i] for i, tok in enumerate(o) if tok in stops), o)
            answers.append(tokenizer.decode(o, skip_special_tokens=True))
    return answers, thoughts


def run_benchmarks(model, tokenizer, open_ids, close_id, *, tasks, num_problems: int, modes=MODES,
                   max_thought_tokens: int = 64, max_answer_tokens: int = 24, batch_size: int = 16,
                   seed: int = 0) -> dict:
    """Accuracy per task and mode: `{task: {mode: {"accuracy": wilson_ci, "mean_score", "examples"}}}`.

    The problems of all tasks are answered together (one batch sequence per mode): on a CPU the number of sequential
    decoding steps, not the batch size, sets the time.
    """
    problems = {task: load_problems(task, num_problems, seed) for task in tasks}
    flat = [(task, p) for task in tasks for p in problems[task]]
    results = {task: {} for task in tasks}
    for mode in tqdm(modes, desc=f"rlp-bench ({len(flat)} problems)", unit="mode", leave=False):
        outputs, thoughts = generate_answers(
            model, tokenizer, [p.question for _, p in flat], mode=mode, open_ids=open_ids, close_id=close_id,
            max_thought_tokens=max_thought_tokens, max_answer_tokens=max_answer_tokens, batch_size=batch_size,
            seed=seed,
        )
        for task in tasks:
            rows = [(p, t, o) for (name, p), t, o in zip(flat, thoughts, outputs) if name == task]
            answers = [extract_answer(o) for _, _, o in rows]
            scores = [p.score(a) for (p, _, _), a in zip(rows, answers)]
            results[task][mode] = {
                "accuracy": wilson_ci(sum(s >= 1.0 for s in scores), len(scores)),
                "mean_score": sum(scores) / len(scores),
                "examples": [
                    {"question": p.question[:200], "gold": p.answer, "thought": t[:200], "output": o[:200], "answer": a,
                     "score": sc}
                    for (p, t, o), a, sc in list(zip(rows, answers, scores))[:3]
                ],
            }
    return results


def format_benchmarks(results_by_model: dict[str, dict]) -> str:
    """Accuracy table: one row per model, one column per task x mode."""
    first = next(iter(results_by_model.values()))
    cols = [(t, m) for t in first for m in first[t]]
    head = f"{'model':<24}" + "".join(f"{t[:14] + '/' + m:>22}" for t, m in cols)
    lines = [head, "-" * len(head)]
    for label, res in results_by_model.items():
        cells = []
        for t, m in cols:
            a = res[t][m]["accuracy"]
            cells.append(f"{a['mean']:.0%} ({round(a['mean'] * a['n'])}/{a['n']})")
        lines.append(f"{label[:24]:<24}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
@dataclass
class BenchArguments:
    """Arguments of `rlp-bench` (every field is a flag; `--config file.yaml` also works)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint: a model or LoRA output folder, or a Hub name (default: the embedded SmolLM2-135M-Instruct)."})
    compare_to: str | None = field(default=None, metadata={"help": "Optional second checkpoint, same problems."})
    tasks: str = field(
        default="basic_arithmetic,chain_sum,gsm_symbolic,champ",
        metadata={"help": "Comma-separated reasoning-gym generator names and/or 'champ'."},
    )
    num_problems: int = field(default=20, metadata={"help": "Problems per task (seeded)."})
    modes: str = field(default="direct,think", metadata={"help": "'direct', 'think' or both (comma-separated)."})
    max_thought_tokens: int = field(default=64, metadata={"help": "Thought length limit in think mode."})
    max_answer_tokens: int = field(default=24, metadata={"help": "Answer length limit."})
    think_open: str = field(default="<think>", metadata={"help": "Marker that opens a thought."})
    think_close: str = field(default="</think>", metadata={"help": "Marker that closes a thought."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    seed: int = field(default=0, metadata={"help": "Seed of the problems and of the thoughts."})
    output_dir: str = field(default="outputs/bench", metadata={"help": "Where bench.json (or lm-eval's output) goes."})
    lm_eval: str | None = field(
        default=None, metadata={"help": "Run lm-evaluation-harness instead: 'paper' (PAPER_SUITE), 'rlp_gsm_symbolic' (shipped, "
                                        "offline: --num_problems seeded reasoning-gym problems) or comma-separated task names."}
    )
    lm_eval_backend: str = field(default="hf", metadata={"help": "lm-eval model backend: 'hf' or 'vllm'."})
    lm_eval_batch_size: str = field(default="auto", metadata={"help": "lm-eval --batch_size."})
    lm_eval_dtype: str = field(default="bfloat16", metadata={"help": "dtype of the model under lm-eval (float32 on CPU)."})
    lm_eval_limit: float | None = field(default=None, metadata={"help": "lm-eval --limit (examples per task), for a quick look."})
    lm_eval_model_args: str = field(default="", metadata={"help": "Extra lm-eval --model_args, e.g. 'tensor_parallel_size=2'."})
    dry_run: bool = field(default=False, metadata={"help": "With --lm_eval: print the command, do not run it."})


DESCRIPTION = (
    "Reasoning benchmarks for a checkpoint, each problem answered directly and after a thought between the think "
    "markers: seeded reasoning-gym problems and the CHAMP competition problems, offline on CPU (the bench extra); or, "
    "with --lm_eval, tasks of lm-evaluation-harness (the lm-eval extra): the paper's suite ('paper', needs the Hub and a "
    "GPU) or the offline task shipped with rlp_trl ('rlp_gsm_symbolic'). Options can also come from --config FILE.yaml."
)


def main(argv: list[str] | None = None):
    from trl import TrlParser

    from ..usage import check_model, parse_args, prog_name

    (args,) = parse_args(TrlParser, (BenchArguments,), argv, prog_name("rlp-bench"), DESCRIPTION)
    check_model(args.model_name_or_path, hub=not args.dry_run)  # a dry run only prints the command
    check_model(args.compare_to, "--compare_to", hub=not args.dry_run)
    if args.model_name_or_path is None:
        from .assets import default_model_path

        args.model_name_or_path = default_model_path()
    paths = [p for p in (args.model_name_or_path, args.compare_to) if p]
    if args.lm_eval:
        tasks = list(PAPER_SUITE) if args.lm_eval == "paper" else args.lm_eval.split(",")
        include = None
        if not args.dry_run and any(t in LOCAL_LM_EVAL_TASKS for t in tasks):
            include = write_local_lm_eval_tasks(
                tasks, os.path.join(args.output_dir, "lm_eval_tasks"), num_problems=args.num_problems, seed=args.seed,
                max_answer_tokens=args.max_answer_tokens,
            )
        status = 0
        for path in paths:
            cmd = lm_eval_command(
                path, tasks, backend=args.lm_eval_backend, batch_size=args.lm_eval_batch_size,
                output_path=os.path.join(args.output_dir, "lm_eval"), limit=args.lm_eval_limit,
                extra_model_args=args.lm_eval_model_args, dtype=args.lm_eval_dtype, include_path=include,
            )
            print(shlex.join(cmd))
            if not args.dry_run:
                status = run_lm_eval(cmd) or status
        return status
    check_tasks(args.tasks.split(","), args.modes.split(","))
    results = {}
    for path in paths:
        model, tokenizer, open_ids, close_id = load_with_markers(path, args.think_open, args.think_close, args.seed)
        # (LoRA output folders load on their base: rlp_trl.loading)
        label = os.path.basename(path.rstrip("/")) or path
        label = label if label not in results else f"{label} (2)"
        results[label] = run_benchmarks(
            model, tokenizer, open_ids, close_id, tasks=args.tasks.split(","), num_problems=args.num_problems,
            modes=args.modes.split(","), max_thought_tokens=args.max_thought_tokens,
            max_answer_tokens=args.max_answer_tokens, batch_size=args.batch_size, seed=args.seed,
        )
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "bench.json"), "w") as f:
        json.dump({"config": asdict(args), "results": results}, f, indent=1)
    print(format_benchmarks(results))
    print(f"wrote {args.output_dir}/bench.json")
    return results


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry point (`rlp-bench`): lm-eval's exit status with `--lm_eval`, else 0 (not the results); a
    user error is one line `rlp-bench: error: ...` and exit status 2 (`rlp_trl.usage.run_cli`)."""
    from ..usage import run_cli

    return run_cli(main, "rlp-bench", argv)


if __name__ == "__main__":
    raise SystemExit(cli())
