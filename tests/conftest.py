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


def tiny_config(tmp_path, **overrides):
    """An RLPConfig sized for a 2-core CPU: G=4, 2 contexts per step, 8-token thoughts, 64-token contexts."""
    from rlp_trl import RLPConfig

    kwargs = {**TINY_DEFAULTS, **overrides}
    kwargs.setdefault("output_dir", str(tmp_path / "out"))
    return RLPConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama + BPE tokenizer (<think>, </think> single tokens), built once per session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture
def tiny_docs():
    from datasets import Dataset

    return Dataset.from_dict({"text": tiny_corpus(40)})
