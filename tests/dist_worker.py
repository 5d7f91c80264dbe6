"""One process of a multi-process test run (tests/test_distributed.py): `accelerate launch ... tests/dist_worker.py`.

Each run is `rlp_trl.tools.train.main` (the code behind examples/train_rlp.py) on the tiny model, so the launcher, the
accelerate config, DeepSpeed and the CLI flags are the real ones. Several runs share one launch (`--run` separates
their flag lists) to pay the start-up once; the process group is destroyed only after the last one.

Every rank writes `rank<r>.json` into $RLP_REPORT_DIR: per run, the backend, the EMA teacher's kind and digests
(after every optimizer step, after a resume load, at the end), the rank-local metrics history and the gathered
per-rollout logs, and how far the teacher's scoring output is from a plain model built from the teacher's weights.
"""

import faulthandler
import hashlib
import json
import os
import sys

import torch
from transformers import TrainerCallback

from rlp_trl.tools import train as cli
from rlp_trl.teacher import AdapterEMATeacher
from rlp_trl.trainer import RLPTrainer

REPORT: dict = {"runs": []}


def full_teacher_state(teacher) -> dict[str, torch.Tensor]:
    """The teacher's checkpoint tensors (full weights, or the adapter shadow) on every rank (gathers ZeRO-3 shards:
    call on every rank)."""
    return teacher.state_tensors(write=True)


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Record(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        teacher = self.trainer.teacher
        if teacher.initialized:
            self.trainer._test_run["step_digests"][str(state.global_step)] = digest(full_teacher_state(teacher))


_init, _load, _end = RLPTrainer.__init__, RLPTrainer._load_optimizer_and_scheduler, RLPTrainer.end


def _patched_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self._test_run = {"step_digests": {}, "loaded_digest": None, "loaded_updates": None}
    self.add_callback(_Record(self))


def _patched_load(self, checkpoint):
    _load(self, checkpoint)
    if checkpoint is not None and self.teacher.initialized:
        self._test_run["loaded_digest"] = digest(full_teacher_state(self.teacher))
        self._test_run["loaded_updates"] = self.teacher.num_updates


@torch.no_grad()
def scoring_check(trainer) -> dict:
    """Teacher scoring vs a plain (non-distributed) model holding the teacher's weights; and vs the policy."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    ids = torch.tensor([trainer.train_dataset[0]["prompt"][-24:]])
    with trainer.teacher.scoring(unwrapped) as teacher_model:
        got = teacher_model(input_ids=ids).logits.float()
        # ranks may score different numbers of distinct contexts: under ZeRO-3 every forward is a collective, so
        # `scoring` must even the counts out on exit (else this hangs)
        for _ in range(trainer.accelerator.process_index):
            teacher_model(input_ids=ids[:, :3])
    policy = trainer.model  # the engine / DDP wrapper: collectives happen on every rank alike
    was_training = policy.training
    policy.eval()
    theta = unwrapped(input_ids=ids).logits.float()
    policy.train(was_training)
    state = full_teacher_state(trainer.teacher)
    base_config = (unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped).config
    reference = type(unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped)(base_config)
    reference.load_state_dict(_base_weights(trainer), strict=False)
    if isinstance(trainer.teacher, AdapterEMATeacher):
        from peft import get_peft_model

        reference = get_peft_model(reference, unwrapped.peft_config[trainer.teacher.source_adapter])
        named = dict(reference.named_parameters())
        for name, value in state.items():
            named[name.replace(f".{trainer.teacher.adapter_name}.", ".default.")].data.copy_(value)
    else:
        reference.load_state_dict(state, strict=False)
        reference.tie_weights()
    want = reference.float().eval()(input_ids=ids).logits
    return {"teacher_vs_reference": (got - want).abs().max().item(), "teacher_vs_policy": (got - theta).abs().max().item()}


def _base_weights(trainer) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(os.environ["RLP_TINY_MODEL"], "model.safetensors"))


def _patched_end(self):
    record = {
        "world_size": self.accelerator.num_processes,
        "distributed_type": str(self.accelerator.distributed_type),
        "zero_stage": self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None,
        "teacher_class": type(self.teacher).__name__,
        "teacher_offload": getattr(self.teacher, "offload", None),
        "num_updates": self.teacher.num_updates,
        "global_step": self.state.global_step,
        "final_digest": digest(full_teacher_state(self.teacher)),
        "gradient_checkpointing": bool(self.args.gradient_checkpointing),
        "history": [h for h in self.state.log_history if "rlp/info_gain_mean" in h],
        "prompts": list(self._logs["prompt"]),
        "rewards": list(self._logs["rewards"]["info_gain"]),
        "advantages": list(self._logs["advantages"]),
        "scoring": scoring_check(self),
        **self._test_run,
    }
    REPORT["runs"].append(record)
    if self._test_last_run:
        _end(self)


RLPTrainer.__init__ = _patched_init
RLPTrainer._load_optimizer_and_scheduler = _patched_load
RLPTrainer.end = _patched_end


def main():
    # a hung collective must not hang the test session: dump every thread's stack and exit
    faulthandler.dump_traceback_later(float(os.environ.get("RLP_WORKER_TIMEOUT", 400)), exit=True)
    runs, current = [], []
    for arg in sys.argv[1:]:
        if arg == "--run":
            runs.append(current)
            current = []
        else:
            current.append(arg)
    runs.append(current)
    runs = [r for r in runs if r]
    rank = int(os.environ.get("RANK", 0))
    for i, argv in enumerate(runs):
        RLPTrainer._test_last_run = i == len(runs) - 1
        cli.main(argv)
        with open(os.path.join(os.environ["RLP_REPORT_DIR"], f"rank{rank}.json"), "w") as f:
            json.dump(REPORT, f)


if __name__ == "__main__":
    main()
