"""Shared fixtures for the rlp_trl test suite: offline mode, the tiny model, the tiny corpus, a fast config."""

import os

# Must be set before transformers / datasets / huggingface_hub are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # `import tiny_model` from any rootdir

from tiny_model import build_tiny_model, tiny_corpus  # noqa: E402

# Fields set by tiny_config; overrides win.
TINY_DEFAULTS = dict(
    use_cpu=True,
    bf16=False,
    fp16=False,
    gradient_checkpointing=False,
    num_generations=4,
    per_device_train_batch_size=8,
    max_completion_length=8,
    max_context_tokens=64,
    min_context_tokens=4,
    report_to=[],
    logging_steps=1,
    save_strategy="no",
    seed=0,
    learning_rate=1e-3,
    max_steps=2,
    disable_tqdm=True,
    dataloader_num_workers=0,
)
if os.environ.get("RLP_TEST_CUDA") == "1":  # benchmarks/gpu_check.sh: the same tests on the GPU, in bf16
    TINY_DEFAULTS.update(use_cpu=False, bf16=True)


def tiny_config(tmp_path, **overrides):
    """An RLPConfig sized for a 2-core CPU: G=4, 2 contexts per step, 8-token thoughts, 64-token contexts."""
    from rlp_trl import RLPConfig

    kwargs = {**TINY_DEFAULTS, **overrides}
    kwargs.setdefault("output_dir", str(tmp_path / "out"))
    return RLPConfig(**kwargs)


def loss_with_logps_grad(trainer, batch):
    """Run the trainer's loss (TRL's `_compute_loss`) on a captured batch and backpropagate from zeroed gradients; returns the loss,
    d loss / d per-token log-probs, and those log-probs."""
    store = {}
    original = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        logps, entropies, aux = original(*args, **kwargs)
        logps.retain_grad()
        store["logps"] = logps
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = spy
    try:
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, batch)
        loss.backward()
    finally:
        del trainer._get_per_token_logps_and_entropies
    return loss, store["logps"].grad, store["logps"].detach()


def nan_first_reward(real):
    """`real` (rlp_trl.rewards.information_gain) with the first rollout's reward made NaN: a non-finite group."""
    def information_gain(s_pred, s_ema, discount=1.0):
        rewards = real(s_pred, s_ema, discount).clone()
        rewards[0] = float("nan")
        return rewards

    return information_gain


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama + BPE tokenizer (<think>, </think> single tokens), built once per session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture
def tiny_docs():
    from datasets import Dataset

    return Dataset.from_dict({"text": tiny_corpus(40)})


# The `compat` subset: what `make test` also runs in the oldest-versions environment (.compat/; `make test-compat`).
# Fast, and still training end to end through every private TRL member RLP uses (tests/test_compat.py), plus the
# exactness checks of the prefix-shared sampler against transformers' own generate/cache (test_speed_correctness.py),
# and TRL's loss against eq. 8 (test_loss_equivalence.py), the likelihood terms and the packed pass (its 4D mask goes
# through transformers' masking code, which moves between releases).
COMPAT_MODULES = {"test_compat.py", "test_math.py", "test_data.py", "test_speed_correctness.py", "test_loss_equivalence.py",
                  "test_likelihood.py", "test_packed_pass.py", "test_run.py"}
COMPAT_TESTS = {
    "test_trainer.py::test_rewards_equal_a_plain_recomputation_first_batch",
    "test_trainer.py::test_only_thought_tokens_receive_gradient",
    "test_trainer.py::test_teacher_is_ema_of_policy_after_each_step",
    "test_trainer.py::test_checkpoint_and_resume_restore_teacher_and_step",
    "test_distributed.py::test_peft_teacher_is_an_ema_of_the_adapter",  # LoRA and QLoRA (peft, bitsandbytes)
}


def pytest_collection_modifyitems(config, items):
    seen = set()
    for item in items:
        module = os.path.basename(str(item.path))
        key = f"{module}::{item.originalname}"
        if module in COMPAT_MODULES or key in COMPAT_TESTS:
            item.add_marker(pytest.mark.compat)
            seen.add(key)
    markexpr = config.getoption("markexpr", "") or ""
    if "compat" in markexpr and not config.getoption("keyword", ""):  # a renamed test must not leave the subset
        collected = {os.path.basename(str(item.path)) for item in items}
        lost = sorted(k for k in COMPAT_TESTS - seen if k.split("::")[0] in collected)
        if lost:
            raise pytest.UsageError(f"tests/conftest.py COMPAT_TESTS names tests that no longer exist: {lost}")
