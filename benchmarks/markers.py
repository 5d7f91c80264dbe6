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
    args = parser.parse_args()
    results = json.load(open(args.json)) if os.path.exists(args.json) else {}  # schemes measured before are kept
    for name in args.schemes.split("|"):
        slug = "".join(c if c.isalnum() else "_" for c in name)
        out = os.path.join(args.output_dir, slug)
        results[name] = learning_curve.main([
            "--minutes", str(args.minutes), "--snapshots", "1", "--eval_documents", str(args.eval_documents),
            "--doc_nll_documents", "16", "--output_dir", out, "--json", os.path.join(out, "result.json"), "--plot", "",
            *SCHEMES[name],
        ])
        for r in results.values():
            r.pop("train_log", None)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


def table(results: dict) -> str:
    ci = lambda s: f"{s['mean']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"  # noqa: E731
    lines = [
        "| scheme | untrained: info gain | closed | after training: info gain | closed | steps | paired diff | "
        "training truncated first -> last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cps = sorted(r["checkpoints"].values(), key=lambda c: c["step"])
        base, last = cps[0], cps[-1]
        lines.append(
            f"| {name} | {ci(base['info_gain'])} | {base['thought_closed_frac']:.0%} | {ci(last['info_gain'])} | "
            f"{last['thought_closed_frac']:.0%} | {r['train_steps']} | {ci(r['paired_diff_vs_base'])} | "
            f"{r['truncated_frac_first']:.0%} -> {r['truncated_frac_last']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
