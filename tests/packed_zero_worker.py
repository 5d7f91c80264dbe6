"""One process under `accelerate launch` with a DeepSpeed config (tests/test_packed_pass.py): at the first loss
computation of a real `RLPTrainer` run (tiny model, gradient checkpointing on), the policy's log-prob pass is taken
once with prefix sharing (under DeepSpeed: the packed pass) and once as TRL's per-row pass, through the DeepSpeed
engine the loss uses; the largest differences of log-probs and entropies go to $RLP_REPORT as JSON (gradients are
compared in one process without DeepSpeed, whose backward hooks fire on any autograd call). Training then goes on
for its steps."""

import json
import os
import sys

import torch

from rlp_trl import RLPConfig, RLPTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_model import tiny_corpus  # noqa: E402

REPORT: dict = {}
_compute_loss = RLPTrainer.compute_loss


@torch.no_grad()
def _passes(trainer, model, ids, mask, width):
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, width, compute_entropy=True)
    real = mask[:, -width:].bool()
    return logps[real], entropies[real]


def _checked_compute_loss(self, model, inputs, *args, **kwargs):
    if not REPORT:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        width = inputs["completion_ids"].size(1)
        REPORT["mode"] = self._loss_pass_sharing(model)
        packed = _passes(self, model, ids, mask, width)
        self.args.prefix_sharing = False
        plain = _passes(self, model, ids, mask, width)
        self.args.prefix_sharing = True
        REPORT.update(
            zero_stage=self.accelerator.state.deepspeed_plugin.zero_stage, rows=ids.size(0),
            logps=(packed[0] - plain[0]).abs().max().item(), entropies=(packed[1] - plain[1]).abs().max().item(),
        )
    return _compute_loss(self, model, inputs, *args, **kwargs)


def main():
    from datasets import Dataset

    RLPTrainer.compute_loss = _checked_compute_loss
    args = RLPConfig(
        output_dir=os.environ["RLP_OUTPUT"], use_cpu=True, bf16=False, gradient_checkpointing=True, num_generations=4,
        per_device_train_batch_size=8, max_completion_length=6, max_context_tokens=48, min_context_tokens=4,
        report_to=[], save_strategy="no", max_steps=1, logging_steps=1, disable_tqdm=True, seed=0,
        reader_nll_coef=1.0, nothink_nll_coef=1.0,
    )
    trainer = RLPTrainer(os.environ["RLP_TINY_MODEL"], args=args,
                         train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}))
    trainer.train()
    REPORT["trained_steps"] = trainer.state.global_step
    with open(os.environ["RLP_REPORT"], "w") as f:
        json.dump(REPORT, f)
    trainer.end()


if __name__ == "__main__":
    main()
