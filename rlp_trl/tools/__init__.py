"""The tools built on the rlp_trl core: the console scripts and what only they use.

| module | what |
|---|---|
| `train.py` | `rlp-train` / `examples/train_rlp.py`: RLP on a model and a corpus, TRL-style CLI |
| `eval.py` | `rlp-eval`: held-out information gain of a checkpoint |
| `heldout.py`, `stats.py` | its positions, thoughts and scores; its confidence intervals (`rlp-bench` uses both) |
| `bench.py` | `rlp-bench`: reasoning benchmarks, offline |
| `lm_eval_bridge.py` | `rlp-bench --lm_eval`: the bridge to lm-evaluation-harness |
| `cpt.py` | `rlp-cpt` / `examples/train_cpt.py`: the compute-matched continued-pretraining baseline |
| `launch.py` | `rlp-launch`: signals reach every training process and the exit waits for the save |
| `assets.py` | the embedded offline model and corpus (`python -m rlp_trl.tools.assets`) |

The import graph points one way: these modules import the core (`rlp_trl.*`), the core never imports them
(tests/test_layout.py). This file imports none of them.
"""
