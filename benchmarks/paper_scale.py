"""Paper scale on paper: tokens, FLOPs and activation memory of one RLP optimizer step at the paper's settings.

Counts, without running a model, what each pass of one optimizer step processes for TRL's per-row path and for
`rlp_trl`'s shared paths, at the paper's run (Qwen3-1.7B-Base, contexts of 2048 tokens, thoughts up to 2048, G = 16,
512 contexts per optimizer step, bf16, gradient checkpointing, horizon 1; RLP paper Sec. 9-10), and prints markdown
tables (docs/performance.md, "Paper scale on paper").

Layout (the trainer's): prompt = context + `<think>` (P = c + 1 tokens), completion = thought + `</think>` + x_t
(C = T + 1 + H tokens). Every thought of a step has the same length T (the mean; no padding on either path).

Passes, per context (its G rows):
    sampling prefill   TRL's `generate`: G x P; `prefix_shared_sample`: P (one prefill, KV cache copied to the rows)
    sampling decode    G x T single-token steps on both paths (the thought tokens fed back)
    S_pred             TRL's path: one extra forward of prompt + completion per row, G x (P + C);
                       ours: H more decode steps per row in the sampler's cache, G x H
    S_ema              one teacher forward of context + x_t per distinct context (c + H) on both paths
    loss pass          TRL: G x (P + C) forward + backward; shared (KV cache or packed): (P - 1) + G x (C + 1):
                       the prompt once, then per row its last prompt token + completion
    theta_old          the loss pass's layout, forward only, when it applies (several optimizer steps per generation,
                       or vLLM importance sampling); `--theta_old` adds it to the totals

FLOPs of a forward: 2 x (non-embedding matmul params) per token + 4 x n_layers x d_attn x (keys attended) per token
+ 2 x vocab x hidden at each position whose log-prob is needed (LM head). Backward = 2 x forward; gradient
checkpointing recomputes the forward once more in the backward. The packed pass under a dense 4D mask (`sdpa`)
computes every query-key pair of its sequence (S^2), not only the visible ones; a block-sparse kernel (FlexAttention)
computes the blocks that hold a visible pair.

    python benchmarks/paper_scale.py                          # thoughts of 1024 and 2048 tokens, the paper's run
    python benchmarks/paper_scale.py --thought 512 1024 --json /tmp/paper_scale.json
"""

import argparse
import json
from dataclasses import asdict, dataclass

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder (Llama/Qwen3 layout: GQA attention with q/k norms, SwiGLU MLP)."""

    hidden: int = 2048
    intermediate: int = 6144
    layers: int = 28
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151936
    tied: bool = True

    @property
    def d_attn(self) -> int:  # query heads x head dim: the width of QK^T and AV per token
        return self.heads * self.head_dim

    @property
    def d_kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def matmul_params(self) -> int:
        """Non-embedding weights that multiply every token (q, k, v, o, gate, up, down); norms excluded (~0.01%)."""
        attn = self.hidden * (2 * self.d_attn + 2 * self.d_kv)
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


QWEN3_1_7B = ModelShape()


@dataclass(frozen=True)
class StepShape:
    contexts: int = 512  # contexts (prompts) per optimizer step
    group: int = 16  # G rollouts per context
    context: int = 2048  # context tokens x_<t
    thought: int = 1024  # thought tokens (mean; every thought of the step is this long)
    horizon: int = 1  # H: tokens x_t .. scored after the thought
    open_len: int = 1  # `<think>` (one token in Qwen3's vocabulary)
    close_len: int = 1  # `</think>`

    @property
    def prompt(self) -> int:
        return self.context + self.open_len

    @property
    def completion(self) -> int:
        return self.thought + self.close_len + self.horizon


def tri(n: int) -> int:
    """Keys attended by n causal queries over themselves: 1 + 2 + ... + n."""
    return n * (n + 1) // 2


def _pass(tokens: int, keys: int, head: int, pairs: int | None = None) -> dict:
    """One pass per context: tokens run, keys attended (sum over queries of the visible keys), LM-head positions, and
    the query-key pairs the attention kernel actually computes (= keys unless a dense mask makes it compute more)."""
    return {"tokens": tokens, "keys": keys, "head": head, "pairs": keys if pairs is None else pairs}


def packed_length(s: StepShape) -> int:
    """Length of one packed sequence: the prompt minus its last token, then G segments of last prompt token +
    completion (`shared_prefix.packed_logps`)."""
    return s.prompt - 1 + s.group * (s.completion + 1)


def flex_blocks(s: StepShape, block: int = 128) -> int:
    """Query x key blocks of `block` x `block` that hold at least one visible pair in one packed sequence: what a
    block-sparse kernel (FlexAttention's default block size is 128) computes."""
    prefix, width, length = s.prompt - 1, s.completion + 1, packed_length(s)
    n = -(-length // block)
    count = 0
    for qb in range(n):
        q0, q1 = qb * block, min(length, (qb + 1) * block)  # queries q0 .. q1 - 1
        for kb in range(qb + 1):  # no visible key lies after its query
            k0, k1 = kb * block, min(length, (kb + 1) * block)
            if k0 < prefix:  # a prompt key: every query at or after it sees it
                count += 1
                continue
            # segment keys: visible to a query of the same segment at or after the key
            first, last = (k0 - prefix) // width, (k1 - 1 - prefix) // width
            for seg in range(first, last + 1):
                lo, hi = prefix + seg * width, prefix + (seg + 1) * width  # the segment's columns
                if max(k0, lo) <= min(q1, hi) - 1 and max(q0, lo) < min(q1, hi):
                    count += 1
                    break
    return count


def passes(s: StepShape, block: int = 128) -> dict:
    """Per-context counts of every pass, for TRL's path (`trl`) and the shared paths (`shared`: KV cache or packed with
    a kernel that skips masked pairs; `packed_dense`: packed under a dense 4D mask; `packed_flex`: packed under a
    block-sparse kernel)."""
    g, p, c, t, h = s.group, s.prompt, s.completion, s.thought, s.horizon
    length = packed_length(s)
    shared_keys = tri(p - 1) + g * ((c + 1) * (p - 1) + tri(c + 1))
    decode_keys = g * (t * p + tri(t))  # thought token k (k = 0 .. T-1) sits at position P + k
    loss_trl = _pass(g * (p + c), g * tri(p + c), g * c)
    loss_shared = _pass(length, shared_keys, g * c)
    return {
        "prefill": {"trl": _pass(g * p, g * tri(p), g), "shared": _pass(p, tri(p), 1)},
        "decode": {"trl": _pass(g * t, decode_keys, g * t), "shared": _pass(g * t, decode_keys, g * t)},
        "s_pred": {
            "trl": _pass(g * (p + c), g * tri(p + c), g * (1 + h)),
            # the close marker and x_t .. x_{t+H-2} fed at positions P + T + j, j < H
            "shared": _pass(g * h, g * sum(p + t + j + 1 for j in range(h)), g * h),
        },
        "s_ema": {"trl": _pass(s.context + h, tri(s.context + h), h), "shared": _pass(s.context + h, tri(s.context + h), h)},
        "loss": {
            "trl": loss_trl,
            "shared": loss_shared,
            "packed_dense": {**loss_shared, "pairs": length * length},
            "packed_flex": {**loss_shared, "pairs": flex_blocks(s, block) * block * block},
        },
    }


def forward_flops(m: ModelShape, counts: dict, dense: bool = True) -> int:
    """FLOPs of one forward with these counts: linear layers, attention (pairs the kernel computes when `dense`, else
    the visible keys), LM head at the needed positions."""
    keys = counts["pairs"] if dense else counts["keys"]
    return 2 * m.matmul_params * counts["tokens"] + 4 * m.layers * m.d_attn * keys + 2 * m.vocab * m.hidden * counts["head"]


def step_flops(m: ModelShape, s: StepShape, loss_variant: str, theta_old: bool = False, recompute: bool = True,
               block: int = 128) -> dict:
    """FLOPs of one optimizer step (all its contexts) per part, for TRL's path (`loss_variant="trl"`) or a shared
    one (`shared`, `packed_dense`, `packed_flex`): sampling (prefill + decode), S_pred, S_ema, the loss pass forward,
    its forward + backward (x 3, + 1 recomputed forward under gradient checkpointing), theta_old (forward)."""
    counts = passes(s, block)
    side = "trl" if loss_variant == "trl" else "shared"
    n = s.contexts
    loss_fwd = forward_flops(m, counts["loss"][loss_variant]) * n
    out = {
        "sampling": (forward_flops(m, counts["prefill"][side]) + forward_flops(m, counts["decode"][side])) * n,
        "s_pred": forward_flops(m, counts["s_pred"][side]) * n,
        "s_ema": forward_flops(m, counts["s_ema"][side]) * n,
        "loss_forward": loss_fwd,
        "loss_train": loss_fwd * (4 if recompute else 3),
        "theta_old": loss_fwd,
    }
    out["total"] = out["sampling"] + out["s_pred"] + out["s_ema"] + out["loss_train"] + (out["theta_old"] if theta_old else 0)
    return out


def layer_bytes_per_token(m: ModelShape) -> int:
    """bf16 bytes one recomputed decoder layer keeps for its backward, per token (the assumption, stated): the two
    RMSNorms' inputs and outputs (4 d), the q/k/v projections (d_attn + 2 d_kv), q and k after norm + RoPE (the
    attention inputs, d_attn + d_kv), the attention output (d_attn), the MLP's gate, up, act(gate), act(gate) x up
    (4 f); plus the incoming and outgoing hidden-state gradients (2 d) and the kernel's fp32 log-sum-exp per head."""
    elements = 4 * m.hidden + (m.d_attn + 2 * m.d_kv) + (m.d_attn + m.d_kv) + m.d_attn + 4 * m.intermediate
    return 2 * (elements + 2 * m.hidden) + 4 * m.heads


def activation_memory(m: ModelShape, s: StepShape, block: int = 128) -> dict:
    """Peak activation bytes of the loss pass for one micro-batch of one group (G rows) with gradient checkpointing:
    the checkpointed layer inputs (tokens x hidden x layers x 2 bytes) + the final hidden states (pre/post norm) + one
    recomputed layer's working set (`layer_bytes_per_token`); the packed pass adds its mask. Weights, gradients,
    optimizer states, the EMA teacher and the fused LM head's tiles are not counted."""
    counts = passes(s, block)["loss"]
    out = {}
    for name in ("trl", "shared"):
        tokens = counts[name]["tokens"]
        checkpoints = tokens * m.hidden * m.layers * 2
        final = tokens * m.hidden * 2 * 2
        layer = tokens * layer_bytes_per_token(m)
        out[name] = {"tokens": tokens, "checkpoints": checkpoints, "final_hidden": final, "layer_working_set": layer,
                     "total": checkpoints + final + layer}
    length = packed_length(s)
    mask_bool = length * length  # [1, 1, S, S] booleans, held for the whole pass
    mask_additive = 2 * length * length  # SDPA turns a boolean mask into a bf16 additive one per call
    n_blocks = -(-length // block)
    out["mask"] = {
        "length": length,
        "bool_bytes": mask_bool,
        "sdpa_additive_bytes": mask_additive,
        "eager_float32_bytes": 4 * length * length,
        "eager_probabilities_bytes_per_layer": 2 * m.heads * length * length,
        # FlexAttention's BlockMask: int32 block counts and indices, forward and transposed (backward), partial and full
        "flex_block_mask_bytes": 4 * 4 * (n_blocks + n_blocks * n_blocks),
    }
    out["packed_dense"] = {**out["shared"], "mask": mask_bool + mask_additive,
                           "total": out["shared"]["total"] + mask_bool + mask_additive}
    return out


def report(m: ModelShape, s: StepShape, theta_old: bool = False, block: int = 128) -> dict:
    """Everything for one step shape: per-context pass counts, per-step token counts, FLOPs and memory."""
    counts = passes(s, block)
    per_step = {part: {side: {k: v * s.contexts for k, v in c.items()} for side, c in sides.items()}
                for part, sides in counts.items()}
    flops = {v: step_flops(m, s, v, theta_old, block=block) for v in ("trl", "shared", "packed_dense", "packed_flex")}
    ratios = {
        f"trl_over_{v}": {"loss_train": flops["trl"]["loss_train"] / flops[v]["loss_train"],
                          "step": flops["trl"]["total"] / flops[v]["total"]}
        for v in ("shared", "packed_dense", "packed_flex")
    }
    return {"step": asdict(s), "prompt": s.prompt, "completion": s.completion, "packed_length": packed_length(s),
            "per_context": counts, "per_step": per_step, "flops": flops, "ratios": ratios,
            "memory": activation_memory(m, s, block), "theta_old_in_total": theta_old}


def _fmt_tokens(n: float) -> str:
    return f"{n / 1e6:,.2f} M"


def _fmt_flops(n: float) -> str:
    return f"{n / 1e15:,.1f}"


def markdown(r: dict) -> str:
    s = r["step"]
    lines = [
        f"### Mean thought {s['thought']} tokens (P = {r['prompt']}, C = {r['completion']}, "
        f"packed sequence S = {r['packed_length']:,})",
        "",
        "Tokens per optimizer step (millions):",
        "",
        "| pass | TRL's path | `rlp_trl` | TRL / ours |",
        "|---|---:|---:|---:|",
    ]
    names = {"prefill": "sampling prefill", "decode": "sampling decode (both)", "s_pred": "S_pred",
             "s_ema": "S_ema (teacher)", "loss": "loss pass (fwd + bwd)"}
    for part, label in names.items():
        a, b = r["per_step"][part]["trl"]["tokens"], r["per_step"][part]["shared"]["tokens"]
        lines.append(f"| {label} | {_fmt_tokens(a)} | {_fmt_tokens(b)} | {a / b:.2f} |")
    a, b = r["per_step"]["loss"]["trl"]["tokens"], r["per_step"]["loss"]["shared"]["tokens"]
    lines.append(f"| theta_old (fwd, where it applies) | {_fmt_tokens(a)} | {_fmt_tokens(b)} | {a / b:.2f} |")
    lines += [
        "",
        "PFLOPs per optimizer step (loss pass: forward + backward + the recomputed forward of gradient checkpointing):",
        "",
        "| part | TRL's path | shared, visible pairs only (KV cache) | packed, dense 4D mask (`sdpa`) | packed, FlexAttention (128-blocks) |",
        "|---|---:|---:|---:|---:|",
    ]
    f = r["flops"]
    for part, label in (("sampling", "sampling (prefill + decode)"), ("s_pred", "S_pred"), ("s_ema", "S_ema"),
                        ("loss_forward", "loss pass, forward"), ("loss_train", "loss pass, fwd + bwd + recompute"),
                        ("theta_old", "theta_old (where it applies)"), ("total", "step total")):
        lines.append(f"| {label} | " + " | ".join(_fmt_flops(f[v][part]) for v in ("trl", "shared", "packed_dense", "packed_flex")) + " |")
    ra = r["ratios"]
    lines.append("| TRL / this, loss pass | 1 | " + " | ".join(f"{ra[f'trl_over_{v}']['loss_train']:.2f}" for v in ("shared", "packed_dense", "packed_flex")) + " |")
    lines.append("| TRL / this, step | 1 | " + " | ".join(f"{ra[f'trl_over_{v}']['step']:.2f}" for v in ("shared", "packed_dense", "packed_flex")) + " |")
    mem = r["memory"]
    mask = mem["mask"]
    lines += [
        "",
        "Activation memory of the loss pass, one micro-batch = one group of 16 rows, gradient checkpointing (GB):",
        "",
        "| | per-row (TRL) | packed |",
        "|---|---:|---:|",
        f"| tokens in the micro-batch | {mem['trl']['tokens']:,} | {mem['shared']['tokens']:,} |",
        f"| checkpointed layer inputs | {mem['trl']['checkpoints'] / GB:.2f} | {mem['shared']['checkpoints'] / GB:.2f} |",
        f"| final hidden states | {mem['trl']['final_hidden'] / GB:.2f} | {mem['shared']['final_hidden'] / GB:.2f} |",
        f"| one recomputed layer's working set | {mem['trl']['layer_working_set'] / GB:.2f} | {mem['shared']['layer_working_set'] / GB:.2f} |",
        f"| dense mask: bool S x S + SDPA's bf16 additive copy | — | {mask['bool_bytes'] / GB:.2f} + {mask['sdpa_additive_bytes'] / GB:.2f} |",
        f"| **peak activations** | **{mem['trl']['total'] / GB:.2f}** | **{mem['packed_dense']['total'] / GB:.2f}** |",
        "",
        f"Mask of one packed sequence: S^2 = {mask['bool_bytes']:,} query-key booleans ({mask['bool_bytes'] / GB:.2f} GB); "
        f"eager attention would hold a float32 mask ({mask['eager_float32_bytes'] / GB:.2f} GB) and "
        f"{mask['eager_probabilities_bytes_per_layer'] / GB:.1f} GB of bf16 probabilities per layer; "
        f"a FlexAttention block mask: {mask['flex_block_mask_bytes'] / 1e6:.2f} MB.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--thought", type=int, nargs="+", default=[1024, 2048], help="mean thought lengths (tokens)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--contexts", type=int, default=512, help="contexts per optimizer step")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--block", type=int, default=128, help="FlexAttention block size")
    parser.add_argument("--theta_old", action="store_true", help="count theta_old's forward in the step totals")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    m = QWEN3_1_7B
    print(f"Qwen3-1.7B-Base: {m.matmul_params:,} non-embedding matmul params, {m.embedding_params:,} embedding "
          f"(tied), d_attn {m.d_attn}, {args.contexts} contexts x G = {args.group} per step, context {args.context}, "
          f"H = {args.horizon}\n")
    results = []
    for t in args.thought:
        s = StepShape(contexts=args.contexts, group=args.group, context=args.context, thought=t, horizon=args.horizon)
        r = report(m, s, args.theta_old, args.block)
        results.append(r)
        print(markdown(r) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": {**asdict(m), "matmul_params": m.matmul_params}, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
