"""`benchmarks/step_cost.py` keeps running and keeps measuring what docs/performance.md says it measures.

A smoke run on the tiny model (two short groups, no sweep): the JSON has the headline ratios, every variant ran the
same shapes, and the prefill counts show what each variant does: TRL's generation prefills every row (G x prompt),
the prefix-shared sampler one row per context. No timing is asserted (machines here are noisy).
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_cost_smoke(tmp_path):
    out = tmp_path / "step_cost.json"
    G, context = 4, 48
    cmd = [
        sys.executable, os.path.join(ROOT, "benchmarks", "step_cost.py"), "--models", "tiny", "--no-sweep",
        "--steps", "1", "--warmup", "1", "--G", str(G), "--context", str(context), "--thought", "8",
        "--optim", "sgd", "--json", str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())

    for key in ("rlp_over_grpo", "naive_over_rlp", "prefix_sharing_speedup"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert "headline ratios" in proc.stdout
    (run,) = report["runs"]
    variants = {}
    for group in run["groups"]:
        variants.update(group["variants"])
    assert set(variants) == {"grpo", "grpo_shared", "rlp", "rlp_no_sharing", "rlp_naive"}
    prompt = variants["rlp"]["prefill_tokens_per_step"]
    assert prompt >= context  # one context (+ `<think>`) per step
    for name in ("grpo", "rlp_no_sharing", "rlp_naive"):
        assert variants[name]["prefill_tokens_per_step"] == G * prompt, name
    assert variants["grpo_shared"]["prefill_tokens_per_step"] == prompt
    # each ratio is the ratio of the medians of one group (`rlp` runs in both groups)
    (group,) = [g for g in run["groups"] if "rlp_no_sharing" in g["variants"]]
    med = {v: r["median_step_s"] for v, r in group["variants"].items()}
    assert math.isclose(report["prefix_sharing_speedup"], med["rlp_no_sharing"] / med["rlp"], rel_tol=1e-9)


def test_random_config_models():
    """`--models random:<hidden>x<layers>`: a randomly initialised Llama of that size with SmolLM2's tokenizer."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import step_cost

    model, tokenizer, open_ids = step_cost.load_model("random:512x3")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (512, 3, 8, 2)
    assert c.intermediate_size == 1536 and c.intermediate_size % 256 == 0
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) and len(open_ids) == 1
    for bad in ("random:512", "random:500x2"):
        with pytest.raises(SystemExit, match="random:"):
            step_cost.load_model(bad)


def test_loss_pass_benchmark_runs_every_layout(tmp_path):
    """benchmarks/loss_pass.py times TRL's per-row pass, the KV-cache pass and the packed pass on one group."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import loss_pass

    out = tmp_path / "loss_pass.json"
    result = loss_pass.main(["--model", "tiny", "--G", "4", "--context", "24", "--thought", "6", "--reps", "2",
                             "--gradient-checkpointing", "--json", str(out)])
    assert json.loads(out.read_text())["median_s"] == result["median_s"]
    assert set(result["seconds"]) == {"per_row", "packed"}  # no KV cache under checkpointing
    assert all(len(s) == 2 and min(s) > 0 for s in result["seconds"].values())
    assert math.isclose(result["per_row_over_packed"], result["median_s"]["per_row"] / result["median_s"]["packed"])
