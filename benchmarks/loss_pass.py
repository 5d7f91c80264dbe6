"""Time the three loss-pass layouts of `rlp_trl.fast.shared_prefix` on one group, forward + backward, in one process.

    python benchmarks/loss_pass.py [--model smollm2|tiny|<path>] [--G 8] [--context 512] [--thought 64]
                                   [--reps 4] [--threads 2] [--gradient-checkpointing] [--json out.json]

per_row  TRL's pass: every row runs its prompt + completion (`padded_logps`)
cache    the prompt runs once with a KV cache, the rows run their completions on it (`shared_prefix_logps`)
packed   the prompt once and the G rows' segments in one sequence under a 4D mask (`packed_logps`)

The layouts take turns, repetition by repetition, so load from other processes falls on all of them alike; the first
repetition is dropped and the median of the rest reported. The trainer uses `cache` where it can run and `packed`
under gradient checkpointing, DeepSpeed and FSDP (`generation.loss_pass_sharing`); this is the measurement behind it.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from rlp_trl.fast.shared_prefix import packed_logps, padded_logps, shared_prefix_logps  # noqa: E402

LAYOUTS = {"per_row": padded_logps, "cache": shared_prefix_logps, "packed": packed_logps}


def model_path(name: str) -> str:
    if name == "smollm2":
        from rlp_trl.tools.assets import default_model_path

        return default_model_path()
    if name == "tiny":
        import tempfile

        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from tiny_model import build_tiny_model

        return build_tiny_model(tempfile.mkdtemp())
    return name


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--thought", type=int, default=64)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path(args.model), dtype=torch.float32)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vocab = model.config.vocab_size
    prompt_len, width = args.context + 1, args.thought + 2  # context + <think>; thought + </think> + x_t
    prompt = torch.randint(100, vocab, (1, prompt_len)).expand(args.G, prompt_len)
    ids = torch.cat([prompt, torch.randint(100, vocab, (args.G, width))], 1)
    mask = torch.ones_like(ids)
    # under gradient checkpointing the model runs without a cache: the KV-cache layout cannot (the trainer packs)
    layouts = {k: v for k, v in LAYOUTS.items() if not (args.gradient_checkpointing and k == "cache")}
    seconds = {name: [] for name in layouts}
    for _ in range(args.reps):
        for name, layout in layouts.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = layout(model, model, ids, mask, width, True, contextlib.nullcontext)
            if out is None:
                raise SystemExit(f"{name}: this shape is not shared (packing would cost more than the per-row pass)")
            (out[0].sum() + out[1].sum()).backward()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s[1:] or s) for name, s in seconds.items()}
    result = {"settings": vars(args), "torch_threads": torch.get_num_threads(), "seconds": seconds, "median_s": median}
    for num, den in (("per_row", "cache"), ("per_row", "packed"), ("packed", "cache")):
        if num in median and den in median:
            result[f"{num}_over_{den}"] = median[num] / median[den]
    for name, value in median.items():
        print(f"{name:<8} {value:8.2f} s (median of {max(1, len(seconds[name]) - 1)})")
    print(", ".join(f"{k} {v:.2f}" for k, v in result.items() if k.endswith(tuple(LAYOUTS))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
