"""Which think markers let a model without them learn to think? One short RLP run per scheme, evaluated held out.

    python benchmarks/markers.py [--minutes 5] [--json docs/markers.json]

For each scheme, `benchmarks/learning_curve.py` trains the embedded SmolLM2-135M-Instruct (no think tokens in its
vocabulary) for `--minutes` and `rlp-eval` scores the untrained model (with the scheme's marker rows) and the trained
one on the same held-out positions and thought seeds. Prints a markdown table (docs/markers.md) and writes the JSON.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import learning_curve  # noqa: E402

SCHEMES = {
    "mean": ["--think_token_init", "mean"],
    "text < >": ["--think_open_init", "<", "--think_close_init", ">"],
    "text marker itself": ["--think_open_init", "", "--think_close_init", ""],
    "text ' (' ')'": ["--think_open_init", " (", "--think_close_init", ")"],
    "plain-text markers": ["--think_markers_as_text", "true"],
    "text < > without close gradient": ["--think_open_init", "<", "--think_close_init", ">", "--think_close_in_loss", "false"],
}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--eval_documents", type=int, default=64)
    parser.add_argument("--output_dir", default="outputs/markers")
    parser.add_argument("--json", default="docs/markers.json")
    parser.add_argument("--schemes", default="|".join(SCHEMES), help="'|'-separated subset of the schemes")
    parser.add_argument("--untrained_only", action="store_true", help="only rlp-eval of the untrained model per scheme")
    args = parser.parse_args()
    results = json.load(open(args.json)) if os.path.exists(args.json) else {}  # schemes measured before are kept
    for name in args.schemes.split("|"):
        slug = "".join(c if c.isalnum() else "_" for c in name)
        out = os.path.join(args.output_dir, slug)
        if args.untrained_only:
            results.setdefault(name, {})["untrained"] = untrained(SCHEMES[name], args.eval_documents, out)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            continue
        results[name] = {**results.get(name, {}), **learning_curve.main([
            "--minutes", str(args.minutes), "--snapshots", "1", "--eval_documents", str(args.eval_documents),
            "--doc_nll_documents", "16", "--output_dir", out, "--json", os.path.join(out, "result.json"), "--plot", "",
            *SCHEMES[name],
        ])}
        for r in results.values():
            r.pop("train_log", None)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


def untrained(flags: list[str], eval_documents: int, out: str) -> dict:
    """rlp-eval of the untrained embedded model with one scheme's markers (the settings of learning_curve.py)."""
    from trl import TrlParser

    from rlp_trl.tools.assets import default_model_path
    from rlp_trl.tools.eval import run_eval

    (curve,) = TrlParser((learning_curve.CurveArguments,)).parse_args_and_config(args=flags)
    eval_args = learning_curve.eval_arguments(curve, out, num_documents=eval_documents, doc_nll_documents=4)
    m = next(iter(run_eval(eval_args, {"base": default_model_path()})["models"].values()))
    keep = ("thought_closed_frac", "thought_truncated_frac", "thought_length_mean", "example_thoughts")
    return {"info_gain": m["summary"]["info_gain"], "thinking_helps_frac": m["summary"]["thinking_helps_frac"],
            **{k: m[k] for k in keep}}


def table(results: dict) -> str:
    """Markdown: per scheme, the untrained model and (where measured) the model after a short RLP run."""
    ci = lambda s: f"{s['mean']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"  # noqa: E731
    lines = [
        "| scheme | untrained: info gain | helps | closed | truncated | length | after RLP: steps | info gain | "
        "paired diff | closed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        u = r.get("untrained")
        if u is None and "checkpoints" in r:
            u = min(r["checkpoints"].values(), key=lambda c: c["step"])
        row = [name, ci(u["info_gain"]), f"{u['thinking_helps_frac']['mean']:.0%}", f"{u['thought_closed_frac']:.0%}",
               f"{u['thought_truncated_frac']:.0%}", f"{u['thought_length_mean']:.1f}"]
        if "checkpoints" in r:
            last = max(r["checkpoints"].values(), key=lambda c: c["step"])
            row += [str(r["train_steps"]), ci(last["info_gain"]), ci(r["paired_diff_vs_base"]),
                    f"{last['thought_closed_frac']:.0%}"]
        else:
            row += ["-", "-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
