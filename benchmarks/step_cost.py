"""Step cost of RLP against plain GRPO, a straightforward RLP, and TRL's default generation (issue 4).

Variants, all on the same model, prompts of the same token length, G, thought length and batch:

    grpo            plain `GRPOTrainer`, constant reward, TRL's default generation (`model.generate` on every row)
                    and loss pass (every row's prompt + completion)
    grpo_shared     the same with rlp_trl's prefix sharing (one prefill per context in the sampler, one prompt
                    forward per context in the loss pass), as RLPTrainer uses them
    rlp             `RLPTrainer` defaults: prefix sharing as above, S_pred read from the sampler's KV cache,
                    one EMA-teacher pass per distinct context
    rlp_no_sharing  `RLPConfig(prefix_sharing=False)`: TRL's generation and loss pass + one extra batched S_pred pass
    rlp_naive       the straightforward algorithm: TRL's generation and loss pass, one forward per rollout for S_pred
                    and one per rollout for S_ema, with full-vocabulary logits

Every thought is forced to the full thought length (`min_new_tokens` = `max_completion_length`), so every variant
runs the same shapes. A step is timed from `on_step_begin` to `on_step_end` (rollouts, scoring, loss forward and
backward, optimizer, EMA update), in wall time and in this process's CPU time; the first `--warmup` steps are dropped
and the median of the rest is reported. The variants of a group live in memory together and take optimizer steps in
turns (one thread each, one running at a time), so that load from other processes on a shared machine falls on all of
them alike; each ratio comes from one group. Then a sweep over G, context and thought length, plotted under docs/.

    python benchmarks/step_cost.py --no-sweep --json docs/step_cost.json   # tiny + SmolLM2, P=512, T=64, G=8
    python benchmarks/step_cost.py --models none --json docs/step_cost_sweep.json   # the sweep and its plot only
    python benchmarks/step_cost.py --models tiny --steps 2 --no-sweep      # quick smoke run
    python benchmarks/step_cost.py --models random:2048x24 --no-sweep      # GPU: a randomly initialised ~1.2B Llama

On a CUDA machine every variant runs on the GPU in bf16 autocast (TRL's `bf16=True`); on a CPU in fp32.
`random:<hidden>x<layers>` builds a Llama-style config with SmolLM2's tokenizer and random weights (no download).
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import rlp_trl.trainer as rlp_trainer_module
from rlp_trl import RLPConfig, RLPTrainer
from rlp_trl.fast.generation import loss_pass_sharing, prefix_shared_sample
from rlp_trl.fast.shared_prefix import policy_logps
from rlp_trl.markers import prepare_think_markers

VARIANTS = ("grpo", "grpo_shared", "rlp", "rlp_no_sharing", "rlp_naive")
# Variants timed together (in turns, all in memory); each ratio comes from one group holding both of its variants.
# Two groups of three keep the memory of a 2-core / 23 GB machine (3 models + teachers + one step's activations).
GROUPS = (("grpo", "rlp", "rlp_no_sharing"), ("grpo_shared", "rlp", "rlp_naive"))
RATIOS = (
    ("rlp_over_grpo", "rlp", "grpo"),
    ("prefix_sharing_speedup", "rlp_no_sharing", "rlp"),
    ("rlp_no_sharing_over_grpo", "rlp_no_sharing", "grpo"),
    ("naive_over_rlp", "rlp_naive", "rlp"),
    ("rlp_over_grpo_shared", "rlp", "grpo_shared"),
    ("naive_over_grpo", "rlp_naive", "grpo"),
)
SWEEP_VARIANTS = ("grpo", "rlp", "rlp_no_sharing", "rlp_naive")
CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------- variants
class _Timed:
    """Records rollout-phase times and prefill token counts of one trainer."""

    def _record_generation(self, start, prompts, prefill_tokens=None):
        self.bench["generate_s"].append(time.perf_counter() - start)
        self.bench["prefill_tokens"].append(prefill_tokens or len(prompts) * max(map(len, prompts)))

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.bench["rollout_s"].append(time.perf_counter() - start)
        return out


class _TokenPrompts:
    """GRPO on token-id prompts (as RLP uses), so both see exactly the same prompt lengths."""

    def _tokenize_prompts(self, prompts):
        return [list(p) for p in prompts], None, {}


class TimedGRPO(_Timed, _TokenPrompts, GRPOTrainer):
    _prefill_tokens = None

    def _generate(self, prompts):
        start = time.perf_counter()
        out = super()._generate(prompts)
        self._record_generation(start, prompts, self._prefill_tokens)
        return out


class TimedSharedGRPO(TimedGRPO):
    """GRPO with rlp_trl's prefix sharing: `prefix_shared_sample` in place of `generate`, and the shared-prompt loss
    pass (`rlp_trl.fast.shared_prefix.policy_logps`), as `RLPTrainer` uses them."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model, torch.no_grad():
            sample = prefix_shared_sample(model, prompt_ids, self.generation_config)
        self._prefill_tokens = sample.prefill_tokens
        return sample.completion_ids, None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        unwrapped = self.accelerator.unwrap_model(model)
        wrapped = self.is_deepspeed_enabled or self.is_fsdp_enabled or self.args.gradient_checkpointing
        logps, entropies, _ = policy_logps(
            model, unwrapped, input_ids, attention_mask, logits_to_keep, batch_size or input_ids.size(0),
            compute_entropy, self.accelerator.autocast, share=loss_pass_sharing(unwrapped, wrapped),
        )
        return logps, entropies, None


class TimedRLP(_Timed, RLPTrainer):
    def sample_thoughts(self, prompts, suffixes=None):
        start = time.perf_counter()
        rollouts = super().sample_thoughts(prompts, suffixes)
        self._record_generation(start, prompts, rollouts.prefill_tokens)
        return rollouts


@torch.no_grad()
def _naive_reasoned(model, input_ids, attention_mask, logits_to_keep, num_tokens, batch_size, share, pad_id):
    """S_pred one rollout at a time, full logits (the straightforward computation; `completion_scores`' signature)."""
    rows = []
    for ids, mask in zip(input_ids, attention_mask):
        row = ids[mask.bool()]  # prompt + completion without padding
        logits = model(input_ids=row[None]).logits[0, -num_tokens - 1 : -1]
        rows.append(torch.log_softmax(logits.float(), -1).gather(-1, row[-num_tokens:, None]).squeeze(-1))
    return torch.stack(rows)


@torch.no_grad()
def _naive_baseline(model, sequences, num_tokens, batch_size, pad_id):
    """S_ema one rollout at a time (no sharing between the G rollouts of a context), full logits."""
    device = next(model.parameters()).device
    rows = []
    for seq in sequences:
        ids = torch.tensor(seq, device=device)
        logits = model(input_ids=ids[None]).logits[0, -num_tokens - 1 : -1]
        rows.append(torch.log_softmax(logits.float(), -1).gather(-1, ids[-num_tokens:, None]).squeeze(-1))
    return torch.stack(rows)


class TimedNaiveRLP(TimedRLP):
    def _generate_and_score_completions(self, inputs):
        with (
            mock.patch.object(rlp_trainer_module, "completion_scores", _naive_reasoned),
            mock.patch.object(rlp_trainer_module, "score_sequence_ends", _naive_baseline),
        ):
            return super()._generate_and_score_completions(inputs)


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


class _Baton:
    """Round-robin turns: the trainers of one comparison run in threads and take one optimizer step at a time each,
    so that load from other processes on a shared machine falls on every variant alike."""

    def __init__(self, names):
        self.names, self.turn, self.done = list(names), 0, set()
        self.cond = threading.Condition()

    def wait(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.names[self.turn] == name)

    def _advance(self):
        for _ in self.names:
            self.turn = (self.turn + 1) % len(self.names)
            if self.names[self.turn] not in self.done:
                break
        self.cond.notify_all()

    def release(self, name, finished=False):
        with self.cond:
            if finished:
                self.done.add(name)
            if self.names[self.turn] == name:
                self._advance()


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _rss_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return float("nan")


class _StepTimer(TrainerCallback):
    """Wall and CPU time of each optimizer step (on_step_begin -> on_step_end). A trainer holds the turn from one
    on_step_begin to the next (so its logging runs alone too) and hands it on there."""

    def __init__(self, name, baton, bar):
        self.name, self.baton, self.bar = name, baton, bar
        self.wall, self.cpu, self.rss_gb, self._start = [], [], [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.baton.wait(self.name)

    def on_step_begin(self, args, state, control, **kwargs):
        self.baton.release(self.name)
        self.baton.wait(self.name)
        if CUDA:  # kernels queued by the previous trainer's turn are not this step's
            torch.cuda.synchronize()
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        if CUDA:
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])
        self.bar.update(1)
        # glibc keeps one heap arena per thread: hand the freed activations back, or every trainer's thread holds
        # on to its own peak and several models' worth of steps no longer fit in memory
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.rss_gb.append(_rss_gb())

    def on_train_end(self, args, state, control, **kwargs):
        self.baton.release(self.name, finished=True)


# ---------------------------------------------------------------------------------------------------- data, models
def load_model(name: str):
    """(model, tokenizer) with single-token <think>/</think> (added and embeddings resized where needed)."""
    if name == "tiny":
        from tiny_model import build_tiny_model

        path = build_tiny_model(os.path.join(tempfile.gettempdir(), "rlp_trl_bench_tiny"))
    elif name == "smollm2" or name.startswith("random:"):
        from rlp_trl.tools.assets import default_model_path

        path = default_model_path()
    else:
        path = name
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if name.startswith("random:"):
        model = AutoModelForCausalLM.from_config(random_config(name, path), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    open_ids, _, model = prepare_think_markers(tokenizer, model, "<think>", "</think>", add_tokens=True)
    return model, tokenizer, open_ids


def random_config(name: str, tokenizer_path: str):
    """`random:<hidden>x<layers>`: SmolLM2's Llama config scaled to that width and depth (head dim 64, 4 query heads
    per KV head, MLP width 8/3 x hidden rounded up to 256), for timing larger models without downloading them."""
    from transformers import AutoConfig

    try:
        hidden, layers = (int(x) for x in name.split(":", 1)[1].lower().split("x"))
    except ValueError:
        raise SystemExit(f"--models {name!r}: write random:<hidden>x<layers>, e.g. random:2048x24") from None
    if hidden % 256:
        raise SystemExit(f"--models {name!r}: the hidden size must be a multiple of 256")
    config = AutoConfig.from_pretrained(tokenizer_path)
    heads = hidden // 64
    config.update(dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        intermediate_size=-(-hidden * 8 // 3 // 256) * 256, head_dim=64,
    ))
    return config


def corpus_tokens(name: str, tokenizer, needed: int) -> list[int]:
    if name == "tiny":
        from tiny_model import tiny_corpus

        texts = tiny_corpus(400, seed=7)
    else:
        from rlp_trl.tools.assets import default_corpus_path

        # RLP_BENCH_CORPUS: a .jsonl of {"text": ...} rows (the GPU check carries the embedded corpus that way)
        with open(os.environ.get("RLP_BENCH_CORPUS") or default_corpus_path()) as f:
            texts = [json.loads(line)["text"] for line in f]
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= needed:
            break
    while len(ids) < needed:
        ids += ids
    return ids


def position_rows(tokens: list[int], open_ids, context: int, horizon: int, count: int) -> dict:
    """`count` positions with exactly `context` tokens of context, taken from consecutive corpus windows."""
    rows = {"prompt": [], "context_ids": [], "target_ids": []}
    for i in range(count):
        window = tokens[i * (context + horizon) : (i + 1) * (context + horizon)]
        rows["prompt"].append(window[:context] + list(open_ids))
        rows["context_ids"].append(window[:context])
        rows["target_ids"].append(window[context:])
    return rows


# ---------------------------------------------------------------------------------------------------- one run
def build_trainer(variant, model_name, shape, steps, warmup, timer, out_dir, train_args):
    torch.manual_seed(0)
    model, tokenizer, open_ids = load_model(model_name)
    g, p, t, b = shape["G"], shape["context"], shape["thought"], shape["contexts_per_step"]
    total = steps + warmup
    tokens = corpus_tokens(model_name, tokenizer, total * b * (p + 1) + 1)
    rows = position_rows(tokens, open_ids, p, 1, total * b)
    common = dict(
        output_dir=os.path.join(out_dir, variant), use_cpu=not CUDA, bf16=CUDA, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, max_steps=total, seed=0, num_generations=g,
        per_device_train_batch_size=b * g, max_completion_length=t, temperature=0.7, beta=0.0, loss_type="grpo",
        scale_rewards="none", learning_rate=1e-6, lr_scheduler_type="constant", dataloader_num_workers=0, **train_args,
    )
    if variant.startswith("grpo"):
        cls = TimedGRPO if variant == "grpo" else TimedSharedGRPO
        args = GRPOConfig(**common, generation_kwargs={"min_new_tokens": t})
        trainer = cls(
            model=model, reward_funcs=constant_reward, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": rows["prompt"]}), callbacks=[timer],
        )
    else:
        cls = TimedNaiveRLP if variant == "rlp_naive" else TimedRLP
        args = RLPConfig(**common, min_thought_tokens=t, prefix_sharing=variant == "rlp", max_context_tokens=p)
        trainer = cls(
            model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_dict(rows), callbacks=[timer]
        )
    trainer.remove_callback(PrinterCallback)
    trainer.bench = defaultdict(list)
    return trainer


def run_config(model_name, shape, variants, steps, warmup, bar, out_dir, train_args) -> dict:
    """Build one trainer per variant, then train them in lock-step turns (one optimizer step each in turn)."""
    baton = _Baton(variants)
    timers = {v: _StepTimer(v, baton, bar) for v in variants}
    trainers = {v: build_trainer(v, model_name, shape, steps, warmup, timers[v], out_dir, train_args) for v in variants}
    errors = []

    def train(variant):
        try:
            trainers[variant].train()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other threads are released
            errors.append(e)
            baton.release(variant, finished=True)

    threads = [threading.Thread(target=train, args=(v,)) for v in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    results = {}
    for v in variants:
        bench, timer = trainers[v].bench, timers[v]
        results[v] = {
            "step_s": timer.wall[warmup:],
            "step_cpu_s": timer.cpu[warmup:],
            "median_step_s": statistics.median(timer.wall[warmup:]),
            "median_step_cpu_s": statistics.median(timer.cpu[warmup:]),
            "median_generate_s": statistics.median(bench["generate_s"][warmup:]),
            "median_scoring_s": statistics.median(
                r - gen for r, gen in zip(bench["rollout_s"][warmup:], bench["generate_s"][warmup:])
            ),
            "prefill_tokens_per_step": bench["prefill_tokens"][-1],
            "process_rss_gb_after_step": max(timer.rss_gb),
        }
    trainers.clear()
    gc.collect()
    med = {v: r["median_step_s"] for v, r in results.items()}
    cpu = {v: r["median_step_cpu_s"] for v, r in results.items()}
    ratios, cpu_ratios = {}, {}
    for key, num, den in RATIOS:
        if num in med and den in med:
            ratios[key] = med[num] / med[den]
            cpu_ratios[key] = cpu[num] / cpu[den]
    return {
        "model": model_name, "shape": shape, "train_args": train_args, "variants": results, "ratios": ratios,
        "cpu_time_ratios": cpu_ratios,
    }


def print_table(run: dict) -> None:
    s = run["shape"]
    shape = " ".join(f"{k}={v}" for k, v in s.items())
    print(f"\n{run['model']}: {shape}")
    print(f"{'variant':<16}{'step s':>9}{'step cpu s':>12}{'generate s':>12}{'scoring s':>11}{'prefill tok':>13}")
    for v, r in run["variants"].items():
        print(
            f"{v:<16}{r['median_step_s']:>9.2f}{r['median_step_cpu_s']:>12.2f}{r['median_generate_s']:>12.2f}"
            f"{r['median_scoring_s']:>11.2f}{r['prefill_tokens_per_step']:>13d}"
        )
    print(f"  {'ratio (median wall / median cpu)':<34}")
    for k, v in run["ratios"].items():
        print(f"  {k:<34}{v:>7.3f}{run['cpu_time_ratios'][k]:>8.3f}")


# ---------------------------------------------------------------------------------------------------- sweep
def sweep_shapes(base: dict, grid: dict) -> list[tuple[str, dict]]:
    shapes = []
    for axis, values in grid.items():
        for value in values:
            shapes.append((axis, {**base, axis: value}))
    return shapes


def plot_sweep(sweep: list[dict], path: str) -> None:
    from rlp_trl._extras import missing

    if missing("matplotlib", "plots", "--plot"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(dict.fromkeys(run["axis"] for run in sweep))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.2 * len(axes_names), 3.6), squeeze=False)
    for ax, axis in zip(axes[0], axes_names):
        runs = [r for r in sweep if r["axis"] == axis]
        xs = [r["shape"][axis] for r in runs]
        for variant in runs[0]["variants"]:
            ax.plot(xs, [r["variants"][variant]["median_step_s"] for r in runs], marker="o", label=variant)
        fixed = ", ".join(f"{k}={v}" for k, v in runs[0]["shape"].items() if k not in (axis, "contexts_per_step"))
        ax.set_xlabel(axis)
        ax.set_ylabel("median step time (s)")
        ax.set_title(fixed, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{sweep[0]['model']}: step time vs G, context and thought length", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if CUDA else False,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
    }


def deepspeed_config(stage: int) -> dict:
    """A DeepSpeed config for one process, every variant alike (the 'auto' values come from the training arguments)."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    return {
        "zero_optimization": {"stage": stage}, "bf16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1000000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default="tiny,smollm2",
        help="comma-separated: tiny, smollm2, a model path or hub name, random:<hidden>x<layers>; none",
    )
    parser.add_argument(
        "--groups", default=";".join(",".join(g) for g in GROUPS),
        help="';'-separated groups of ','-separated variants; each group is timed in turns in memory together",
    )
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--thought", type=int, default=64)
    parser.add_argument("--contexts-per-step", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="dropped first steps per variant")
    parser.add_argument("--optim", default="adamw_torch", help="optimizer of every variant (same for all)")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="for every variant (TRL's default; off on CPU)"
    )
    parser.add_argument(
        "--deepspeed", choices=("zero2", "zero3"), default=None,
        help="wrap every variant in DeepSpeed ZeRO-2 or ZeRO-3 (one process; on CPU too)",
    )
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--sweep-model", default="smollm2")
    parser.add_argument("--sweep-base", default="G=4,context=128,thought=32")
    parser.add_argument("--sweep-grid", default="G=2:4:8,context=64:128:256,thought=16:32:64")
    parser.add_argument("--sweep-steps", type=int, default=2)
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "step_cost_sweep.png"))
    parser.add_argument("--json", default=None, help="write all results and the headline ratios here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    train_args = {"optim": args.optim, "gradient_checkpointing": args.gradient_checkpointing}
    if args.deepspeed:
        train_args["deepspeed"] = deepspeed_config(int(args.deepspeed[-1]))

    shape = {"G": args.G, "context": args.context, "thought": args.thought, "contexts_per_step": args.contexts_per_step}
    models = [m for m in args.models.split(",") if m and m != "none"]
    groups = [g.split(",") for g in args.groups.split(";") if g]
    sweep_configs = []
    if not args.no_sweep:
        base = {**shape, **{k: int(v) for k, v in (kv.split("=") for kv in args.sweep_base.split(","))}}
        grid = {k: [int(x) for x in v.split(":")] for k, v in (kv.split("=") for kv in args.sweep_grid.split(","))}
        sweep_configs = sweep_shapes(base, grid)
    total = len(models) * sum(map(len, groups)) * (args.steps + args.warmup)
    unique_sweep = len({tuple(sorted(c.items())) for _, c in sweep_configs})
    total += unique_sweep * len(SWEEP_VARIANTS) * (args.sweep_steps + args.warmup)

    report = {"machine": machine(), "runs": [], "sweep": []}
    with tempfile.TemporaryDirectory() as out_dir, tqdm(total=total, desc="benchmark steps", unit="step") as bar:
        for model_name in models:
            runs = []
            for group in groups:
                bar.set_postfix_str(f"{model_name}: {'+'.join(group)}")
                runs.append(run_config(model_name, shape, group, args.steps, args.warmup, bar, out_dir, train_args))
                tqdm.write("")
                print_table(runs[-1])
            ratios = {}
            for run in reversed(runs):  # a ratio both groups can give comes from the first
                ratios.update(run["ratios"])
            report["runs"].append({"model": model_name, "shape": shape, "groups": runs, "ratios": ratios})
        done = {}  # the base shape sits on every axis: run it once
        for axis, sweep_shape in sweep_configs:
            key = tuple(sorted(sweep_shape.items()))
            if key not in done:
                bar.set_postfix_str(f"sweep {axis}={sweep_shape[axis]}")
                done[key] = run_config(
                    args.sweep_model, sweep_shape, SWEEP_VARIANTS, args.sweep_steps, args.warmup, bar, out_dir,
                    train_args,
                )
            report["sweep"].append({**done[key], "axis": axis})
    if report["sweep"]:
        os.makedirs(os.path.dirname(args.plot), exist_ok=True)
        plot_sweep(report["sweep"], args.plot)
        print(f"\nsweep plot: {args.plot}")
        for run in report["sweep"]:
            print_table(run)
    if report["runs"]:  # headline ratios: the last model of --models (the embedded SmolLM2 by default)
        print(f"\nheadline ratios ({report['runs'][-1]['model']}, median step times):")
        for key, value in report["runs"][-1]["ratios"].items():
            print(f"  {key:<34}{value:>7.3f}")
        report.update(report["runs"][-1]["ratios"])
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} CPUs, GPU: {m['gpu']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
