"""Train a base model with RLP (arXiv 2510.01265) on a plain-text corpus.

    accelerate launch -q examples/train_rlp.py --config examples/configs/demo_cpu.yaml     # offline CPU demo
    accelerate launch --config_file <accelerate config> examples/train_rlp.py \
        --config examples/configs/paper_qwen3_1.7b.yaml --dataset_name <corpus>               # the paper's settings

Every RLPConfig, ModelConfig (incl. --use_peft, --load_in_4bit) and script field is a flag; see docs/config.md.
The same entry point is installed as `rlp-train`. The logic lives in `rlp_trl.tools.train` so both stay identical.
"""

from rlp_trl.tools.train import cli

if __name__ == "__main__":
    raise SystemExit(cli())
