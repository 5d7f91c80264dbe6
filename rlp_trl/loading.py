"""Load what the trainer saved: a full model folder, or a LoRA output folder (adapter_config.json) on its base."""

from __future__ import annotations

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
