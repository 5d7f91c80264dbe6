"""Models in and out: the policy a run starts from (`load_policy`) and its attention dropout off
(`disable_attention_dropout`); the KV cache on while a model is saved (`kv_cache_on`); what the trainer saved, a full
model folder or a LoRA output folder (adapter_config.json) on its base (`load_causal_lm`)."""

from __future__ import annotations

import contextlib
import os


def is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(str(path)), "adapter_config.json"))


def load_causal_lm(path: str, dtype="auto", merge: bool = True):
    """`AutoModelForCausalLM.from_pretrained(path)`, or for a LoRA output folder `AutoPeftModelForCausalLM` (its base
    from `base_model_name_or_path`, embeddings resized to the folder's tokenizer, which holds the think markers), merged
    into plain weights when `merge` (evaluation only reads the model)."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_folder(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(os.path.expanduser(str(path)), dtype=dtype)
    return model.merge_and_unload() if merge else model


def load_policy(name: str, args, quantization_config=None):
    """The model `RLPTrainer` starts from, loaded as `GRPOTrainer` would (`args.model_init_kwargs`, a quantization
    config, `trust_remote_code`) when the trainer needs the weights before TRL wraps the model."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


def disable_attention_dropout(model) -> None:
    """Zero the attention dropout that models keep as a float rather than an `nn.Dropout` (Llama, Qwen, Mistral:
    `self.attention_dropout`); TRL's `disable_dropout_in_model` only reaches `nn.Dropout` modules."""
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


@contextlib.contextmanager
def kv_cache_on(model):
    """`config.use_cache = True` for the duration (training turns it off), then back to what it was."""
    config = getattr(model, "config", None)
    if config is None:
        yield
        return
    before = getattr(config, "use_cache", None)
    config.use_cache = True
    try:
        yield
    finally:
        config.use_cache = before
