"""User errors of the console scripts: one line `<prog>: error: <what to fix>`, exit status 2, no traceback.

`UsageError` (a `ValueError`, so Python callers that catch `ValueError` keep working) marks a mistake in what the
user passed: a config value, a missing or empty file, a missing column, a corpus with no usable row, a context window
that cannot fit, a checkpoint that cannot be resumed. It is raised where the input is checked (`RLPConfig`,
`rlp_trl.data`, `load_documents`, the trainer's pre-flight checks). Every entry point (`rlp-train` /
`examples/train_rlp.py`, `rlp-eval`, `rlp-bench`, `rlp-cpt`) runs through `run_cli`, which prints such an error (and
a missing optional extra, `rlp_trl._extras.MissingExtraError`) as one line on stderr and exits 2, like argparse does
for a bad flag. Anything else is a bug and keeps its traceback.

Under `accelerate launch` the training script is a child process: it prints the one line and exits 2, then accelerate
raises its own `CalledProcessError` (a second traceback, from the launcher). `accelerate launch --quiet` (`-q`)
leaves only the script's line (accelerate then exits 1); `rlp-launch accelerate launch ...` passes the status on.
"""

from __future__ import annotations

import os
import sys

from ._extras import MissingExtraError

# suffixes that make an argument a local path rather than a Hub name ("Qwen/Qwen3-1.7B" has a dot but no suffix)
PATH_SUFFIXES = (
    ".txt", ".text", ".md", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".gz", ".bz2", ".zst", ".xz",
    ".zip", ".yaml", ".yml", ".safetensors", ".bin", ".gguf", ".pt",
)


class UsageError(ValueError):
    """A mistake in the user's input; the message says what to change. Console scripts print it as one line."""


def looks_like_path(value: str) -> bool:
    """`./x`, `../x`, `/x`, `~/x`, `x.jsonl` (a known data/model suffix), or more than one `/` (a Hub id has one)."""
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(("./", "../", "/", "~", ".\\")) or value in (".", ".."):
        return True
    return value.lower().endswith(PATH_SUFFIXES) or value.strip("/").count("/") > 1


def check_path(value: str | None, flag: str, what: str) -> None:
    """UsageError when `value` looks like a local path (`looks_like_path`) that does not exist."""
    if value and looks_like_path(value) and not os.path.exists(os.path.expanduser(value)):
        where = "" if os.path.isabs(os.path.expanduser(value)) else f" (relative to {os.getcwd()})"
        raise UsageError(f"{flag} {value}: no such file or folder{where}; pass an existing {what}")


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(value: str | None, flag: str = "--model_name_or_path", hub: bool = True) -> None:
    """A missing local model folder, or a Hub name that cannot load offline, as a one-line UsageError."""
    if not value:
        return
    check_path(value, flag, "model folder (config.json and weights), or a Hub model name")
    path = os.path.expanduser(value)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise UsageError(f"{flag} {value}: the folder has no config.json (nor adapter_config.json): not a model "
                             f"folder saved by save_pretrained")
        return
    if os.path.isfile(path):
        raise UsageError(f"{flag} {value}: is a file; pass the model's folder (the one holding config.json)")
    if hub and hub_offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(value, "config.json")
        except Exception:  # noqa: BLE001 - an invalid repo id, for instance
            cached = None
        if not isinstance(cached, str):
            raise UsageError(
                f"{flag} {value}: not a local folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1) with no "
                f"cached copy of it; pass a local model folder, or unset HF_HUB_OFFLINE to download it"
            )


def check_output_dir(value: str, flag: str = "--output_dir") -> None:
    """A folder that cannot be created or written to (read-only file system, no permission, a file in the way) as a
    one-line UsageError, before anything is loaded; found otherwise only when the run takes its lock or saves."""
    import tempfile

    path = os.path.expanduser(value)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rlp-write-check-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"{flag} {value}: cannot write there ({error.strerror or one_line(error)}); pass a folder "
                         f"this user can create files in") from error


def check_hub_push(token: str | None = None) -> None:
    """`--push_to_hub`: the upload happens after training, and the Hub repo is created when the trainer is built
    (after the model loaded): an offline Hub, no login or no network fail here instead, in one line. Only the main
    process asks (the whoami endpoint is rate-limited); a rate limit or a server error is not the user's and passes."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return
    fix = ("log in (`hf auth login`) or pass --hub_token, check the network, or train without --push_to_hub and upload "
           "the output folder afterwards (`hf upload <repo> <output_dir>`)")
    if hub_offline():
        raise UsageError("--push_to_hub: the Hugging Face Hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE); unset "
                         "it, or train without --push_to_hub and upload the output folder afterwards (`hf upload`)")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami(token=token, cache=True)
    except Exception as error:  # every failure to reach the Hub as a user is reported in one line
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and (status == 429 or status >= 500):
            return
        raise UsageError(f"--push_to_hub: cannot use the Hugging Face Hub ({type(error).__name__}: "
                         f"{one_line(error)[:200]}); {fix}") from error


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def prog_name(default: str) -> str:
    """The name the user typed: `rlp-train`, `train_rlp.py`, ...; `default` for `python -m` (of a module of
    rlp_trl/tools/, whose file name is not what the user typed) and `-c`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("rlp-") or (name.endswith(".py") and name != "__main__.py"
                                               and not _is_tool_module(sys.argv[0])) else default


def _is_tool_module(path: str) -> bool:
    """A file of rlp_trl/tools/ (`python -m rlp_trl.tools.train` puts its path in argv[0]); only a path comparison:
    the core does not import the tools."""
    tools = os.path.join(os.path.dirname(os.path.realpath(__file__)), "tools")
    return os.path.dirname(os.path.realpath(path)) == tools


def report(prog: str, error: BaseException) -> int:
    sys.stderr.write(f"{prog}: error: {one_line(error)}\n")
    sys.stderr.flush()
    return 2


def run_cli(main, default_prog: str, argv: list[str] | None = None) -> int:
    """Run a console script's `main(argv)`: its exit status (an int result, else 0); a `UsageError` or a missing extra
    is one line on stderr and exit status 2."""
    from .lock import OutputDirLockedError  # another live run writes to --output_dir

    prog = prog_name(default_prog)
    try:
        result = main(argv)
    except (UsageError, MissingExtraError, OutputDirLockedError) as error:
        return report(prog, error)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def parse_args(parser_cls, dataclasses, argv, prog: str, description: str | None = None, overrides=None, groups=None,
               usage: str | None = None):
    """`TrlParser(dataclasses).parse_args_and_config(argv)` with a program name and description, `--config`
    documented, help texts overridden (`overrides`: {dest: help}), and a bad value, an unknown key or a missing
    `--config` file reported as a `UsageError` (one line, exit 2) instead of a traceback."""
    import yaml

    if groups:
        parser_cls = grouped(parser_cls, groups)
    parser = parser_cls(dataclasses, prog=prog, description=description, formatter_class=_HelpFormatter, usage=usage)
    for action in parser._actions:
        if overrides and action.dest in overrides:
            action.help = overrides[action.dest]
    _hide_negated_flags(parser)
    args = _join_negative_values(parser, list(sys.argv[1:] if argv is None else argv))
    config = None
    if "--config" in args:
        i = args.index("--config")
        path = args[i + 1] if i + 1 < len(args) else None
        if path is None or path.startswith("--"):
            parser.error("--config needs a YAML file: --config FILE.yaml")
        if not os.path.isfile(os.path.expanduser(path)):
            raise UsageError(f"--config {path}: no such file")
        args[i + 1] = config = os.path.expanduser(path)
    # unknown names first: TRL reports them only after the dataclasses' own checks ran on the defaults they replaced
    _check_known_options(parser, args, config)
    try:
        return parser.parse_args_and_config(args=args)
    except UsageError:
        raise
    except yaml.YAMLError as error:
        raise UsageError(f"--config: not valid YAML ({one_line(error)})") from error
    except ValueError as error:  # the dataclasses' __post_init__ checks (RLPConfig, TrainingArguments, ...)
        raise UsageError(one_line(error)) from error


def _option_names(parser) -> dict[str, object]:
    """`--flag` -> its action, for every option of the parser (aliases included)."""
    return {name: action for action in parser._actions for name in action.option_strings if name.startswith("--")}


def _did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_known_options(parser, args: list[str], config: str | None) -> None:
    """A misspelled key of the `--config` file or a misspelled flag is a `UsageError` naming the closest option.

    Checked first because TRL's parser builds the dataclasses before it looks at unknown names: an unknown YAML key
    would surface as a check failing on the default the key meant to replace (`num_generation: 2` -> "not a
    multiple of 16")."""
    import yaml

    options = _option_names(parser)
    if config is not None:
        try:
            with open(config) as f:
                values = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise UsageError(f"--config: not valid YAML ({one_line(error)})") from error
        if not isinstance(values, dict):
            raise UsageError(f"--config {config}: the file must hold `option: value` lines (a YAML mapping)")
        dests = {a.dest for a in parser._actions if a.option_strings} | {"env"}
        for key in values:
            if key not in dests:
                hint = _did_you_mean(f"--{key}", options).replace("--", "")
                raise UsageError(f"--config {config}: unknown option {key!r}{hint or ' (rlp-train --help lists them)'}")
    without_config = list(args)
    if "--config" in without_config:
        i = without_config.index("--config")
        del without_config[i : i + 2]
    required = [a for a in parser._actions if a.required]  # may come from the YAML file: not checked here
    for action in required:
        action.required = False
    try:
        _, rest = parser.parse_known_args(without_config)
    finally:
        for action in required:
            action.required = True
    for token in rest:
        if token.startswith("-") and not _is_number(token):
            name = token.split("=", 1)[0]
            raise UsageError(f"unknown option {name}{_did_you_mean(name, options) or ' (--help lists them)'}")
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}: options are `--name value` pairs (--help lists them)")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _join_negative_values(parser, args: list[str]) -> list[str]:
    """`--learning_rate -1e-5` -> `--learning_rate=-1e-5`: argparse takes `-1e-5` (exponent form) for an option and
    reports "expected one argument"; joined, it is the value the user meant."""
    options = _option_names(parser)
    out = []
    for token in args:
        previous = out[-1] if out else ""
        if token.startswith("-") and _is_number(token) and previous in options and options[previous].nargs != 0:
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def _hide_negated_flags(parser) -> None:
    """transformers adds `--no_<flag>` for every boolean option that defaults to True, with the positive flag's help
    text: 19 duplicate entries in --help. They keep working; `--<flag> false` says the same and the description says
    so once."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction) and any(s.startswith("--no_") for s in action.option_strings):
            action.help = argparse.SUPPRESS


def grouped(parser_cls, groups):
    """A parser class that puts each dataclass's fields into titled argument groups, in the order of `groups`:
    [(title, dataclass type, field names or None for "the rest of that dataclass")]."""

    class GroupedParser(parser_cls):
        def _add_dataclass_arguments(self, dtype):
            import dataclasses
            from transformers.hf_argparser import get_type_hints

            if not hasattr(self, "_rlp_groups"):
                self._rlp_groups = [(self.add_argument_group(title), cls, names) for title, cls, names in groups]
            hints = get_type_hints(dtype)
            taken = {n for _, cls, names in self._rlp_groups if cls is dtype and names for n in names}
            for field in dataclasses.fields(dtype):
                if not field.init:
                    continue
                group = next((g for g, cls, names in self._rlp_groups
                              if cls is dtype and (field.name in names if names else field.name not in taken)), self)
                field.type = hints[field.name]
                self._parse_dataclass_field(group, field)

    return GroupedParser


def _formatter_base():
    import argparse

    return argparse.ArgumentDefaultsHelpFormatter


class _HelpFormatter(_formatter_base()):
    """argparse's defaults formatter, except where the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower():
            return text
        return super()._get_help_string(action)


CONFIG_HELP = (
    "Options can also come from a YAML file: --config FILE.yaml, one `option: value` per line (the option names "
    "below, without --). Flags on the command line override the file. A boolean option takes true or false "
    "(--bf16 false); --no_<option> is the same as --<option> false. A negative number may follow its option "
    "(--learning_rate -1e-5) or be joined to it (--learning_rate=-1e-5)."
)
