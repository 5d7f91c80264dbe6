"""benchmarks/paper_scale.py on a case small enough to count by hand (no model, no torch)."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("paper_scale", os.path.join(ROOT, "benchmarks", "paper_scale.py"))
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)

# 2 contexts of 4 tokens, G = 2, thoughts of 3 tokens, H = 1: prompt P = 4 + <think> = 5, completion C = 3 + 2 = 5
TINY = ps.StepShape(contexts=2, group=2, context=4, thought=3, horizon=1)


def _visible_pairs(s):
    """Visible query-key pairs of one packed sequence, from the layout itself (prompt keys: causal; segment keys:
    causal within their own segment)."""
    prefix, width = s.prompt - 1, s.completion + 1
    segment = [-1] * prefix + [i for i in range(s.group) for _ in range(width)]
    return sum(1 for q in range(len(segment)) for k in range(q + 1) if segment[k] == -1 or segment[k] == segment[q])


def test_tiny_token_counts():
    assert (TINY.prompt, TINY.completion) == (5, 5)
    c = ps.passes(TINY)
    tokens = {part: {side: v["tokens"] for side, v in sides.items()} for part, sides in c.items()}
    assert tokens["prefill"] == {"trl": 2 * 5, "shared": 5}
    assert tokens["decode"] == {"trl": 2 * 3, "shared": 2 * 3}
    assert tokens["s_pred"] == {"trl": 2 * (5 + 5), "shared": 2 * 1}
    assert tokens["s_ema"] == {"trl": 4 + 1, "shared": 4 + 1}
    assert tokens["loss"]["trl"] == 2 * (5 + 5)
    # the shared pass: prompt once + G x (thought + 2), and the last prompt token again at the head of the G - 1 other
    # segments (it predicts each row's first completion token): (P - 1) + G x (C + 1)
    assert tokens["loss"]["shared"] == 5 + 2 * (3 + 2) + (2 - 1) == 16 == ps.packed_length(TINY)
    per_step = ps.report(ps.QWEN3_1_7B, TINY)["per_step"]
    assert per_step["prefill"]["trl"]["tokens"] == 20 and per_step["loss"]["shared"]["tokens"] == 32


def test_tiny_attention_keys():
    c = ps.passes(TINY)["loss"]
    assert c["trl"]["keys"] == 2 * (10 * 11 // 2)  # two causal rows of 10 tokens
    # the prompt's own causal attention (4 tokens: 10 pairs) once instead of G times
    assert c["shared"]["keys"] == c["trl"]["keys"] - (2 - 1) * 10 == 100 == _visible_pairs(TINY)
    assert c["packed_dense"]["pairs"] == 16 * 16
    assert ps.flex_blocks(TINY, block=1) == 100  # 1 x 1 blocks: exactly the visible pairs
    assert ps.flex_blocks(TINY, block=64) == 1
    s = ps.StepShape(contexts=1, group=3, context=9, thought=4)
    assert ps.passes(s)["loss"]["shared"]["keys"] == _visible_pairs(s) == ps.flex_blocks(s, block=1)
    assert _visible_pairs(s) <= ps.flex_blocks(s, block=4) * 16 <= ps.packed_length(s) ** 2


def test_flops_formula():
    m = ps.ModelShape(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1, head_dim=2, vocab=10)
    assert m.matmul_params == 4 * (2 * 4 + 2 * 2) + 3 * 4 * 8 == 144
    loss = ps.passes(TINY)["loss"]
    # 2 x params x tokens + 4 x layers x d_attn x keys + 2 x vocab x hidden x (G x C log-prob positions)
    assert ps.forward_flops(m, loss["trl"]) == 2 * 144 * 20 + 4 * 1 * 4 * 110 + 2 * 10 * 4 * 10
    assert ps.forward_flops(m, loss["packed_dense"]) == 2 * 144 * 16 + 4 * 4 * 256 + 2 * 10 * 4 * 10
    f = ps.step_flops(m, TINY, "trl")
    assert f["loss_train"] == 4 * f["loss_forward"] == 4 * 2 * ps.forward_flops(m, loss["trl"])
    assert ps.step_flops(m, TINY, "trl", recompute=False)["loss_train"] == 3 * f["loss_forward"]


def test_paper_scale_numbers(tmp_path):
    assert ps.QWEN3_1_7B.matmul_params == 1_409_286_144  # the model card's 1.4B non-embedding parameters
    out = tmp_path / "paper_scale.json"
    results = ps.main(["--thought", "1024", "--json", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert r == json.loads(json.dumps(results[0]))
    assert r["packed_length"] == 2048 + 16 * 1027
    assert r["memory"]["mask"]["bool_bytes"] == r["packed_length"] ** 2
    assert r["memory"]["trl"]["checkpoints"] == 16 * (2049 + 1026) * 2048 * 28 * 2
    assert r["ratios"]["trl_over_shared"]["loss_train"] > 2
