"""Continued pretraining (plain next-token prediction) with the token budget of an RLP run, the paper's CPT baseline.

    python examples/train_cpt.py --rlp_config examples/configs/demo_cpu.yaml --match tokens   # equal input tokens
    python examples/train_cpt.py --rlp_config examples/configs/demo_cpu.yaml --match flops    # equal FLOPs (Sec. 11)

The budget formula, the data packing and every flag are in `rlp_trl/tools/cpt.py` (also installed as `rlp-cpt`) and
docs/evaluation.md. Run it with `accelerate launch` / `torchrun` for several GPUs like any transformers Trainer script.
"""

from rlp_trl.tools.cpt import cli

if __name__ == "__main__":
    raise SystemExit(cli())
