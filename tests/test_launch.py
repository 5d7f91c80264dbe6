"""Preemption through the launchers users run (issue 14): SIGTERM to `rlp-launch accelerate launch ...` (one
process) and `rlp-launch torchrun ...` (two processes) reaches every training process, each finishes its step, a
complete checkpoint is written *before* the launcher exits, and a new run resumes from it.

`accelerate launch` alone dies at once on SIGTERM, leaving its child training on (the fault this file reproduces
first); `rlp-launch` (rlp_trl/tools/launch.py) forwards the signal to the registered training processes and waits."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import tiny_config
from datasets import Dataset
from tiny_model import tiny_corpus

import rlp_trl
from rlp_trl import RLPTrainer
from rlp_trl.resilience import COMPLETE_MARKER, last_complete_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("launch_corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(40)))
    return str(path)


def _flags(model_dir, corpus, out, per_device=8):
    flags = dict(
        model_name_or_path=model_dir, dataset_name=corpus, output_dir=str(out), max_steps=500, num_generations=4,
        per_device_train_batch_size=per_device, max_completion_length=8, max_context_tokens=64, min_context_tokens=4,
        logging_steps=1, save_strategy="no", report_to="none", bf16="false", gradient_checkpointing="false",
        use_cpu="true", disable_tqdm="true", learning_rate=1e-3, seed=0,
    )
    return [f"--{k}={v}" for k, v in flags.items()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _run_until_steps(cmd, steps: int, timeout: float = 240):
    """Start `cmd` in its own session; return (process, output so far) once `steps` optimizer steps were logged."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines, logged, start = [], 0, time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        logged += "'rlp/info_gain_mean'" in line
        if logged >= steps or time.monotonic() - start > timeout:
            break
    return proc, lines


def _finish(proc, lines, timeout: float = 240) -> str:
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        pytest.fail("the launch did not exit:\n" + "".join(lines)[-3000:] + rest[-3000:])
    return "".join(lines) + rest


def _kill_everything(proc):
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _resume_one_step(tiny_model_dir, tmp_path, out):
    checkpoint, _ = last_complete_checkpoint(str(out))
    step = int(checkpoint.rsplit("-", 1)[1])
    resumed = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, output_dir=str(out), max_steps=step + 1),
                         train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}))
    result = rlp_trl.train(resumed, resume_from_checkpoint="auto")
    assert resumed.state.global_step == step + 1 and result.interrupted is None
    return step


def test_plain_accelerate_launch_does_not_wait_for_the_checkpoint(tiny_model_dir, corpus, tmp_path):
    """The fault: SIGTERM to `accelerate launch` (one process) ends the launcher at once; the output folder has no
    checkpoint when it exits (its orphaned child may write one later, or train on)."""
    out = tmp_path / "out"
    cmd = [os.path.join(BIN, "accelerate"), "launch", "--num_processes", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", os.path.join(ROOT, "examples", "train_rlp.py"), *_flags(tiny_model_dir, corpus, out)]
    proc, lines = _run_until_steps(cmd, 2)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert last_complete_checkpoint(str(out))[0] is None  # the launcher is gone, no checkpoint yet
    finally:
        _kill_everything(proc)


@pytest.mark.parametrize("target", ["launcher", "every-process"])
def test_sigterm_to_rlp_launch_of_accelerate_then_resume(tiny_model_dir, corpus, tmp_path, target):
    """`rlp-launch accelerate launch --num_processes 1 ...`: SIGTERM to the launcher (as SLURM's --signal=B:TERM does
    to an `exec`'d batch script), or to every process of the job at once (--signal=TERM, scancel): the training
    process finishes its step and saves, and rlp-launch exits 143 only after the checkpoint is complete."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlp_trl.tools.launch", os.path.join(BIN, "accelerate"), "launch", "--num_processes", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(ROOT, "examples", "train_rlp.py"),
           *_flags(tiny_model_dir, corpus, out)]
    proc, lines = _run_until_steps(cmd, 2)
    try:
        victims = [proc.pid] + (_descendants(proc.pid) if target == "every-process" else [])
        for pid in victims:
            os.kill(pid, signal.SIGTERM)
        output = _finish(proc, lines)
        checkpoint, _ = last_complete_checkpoint(str(out))  # right when the launcher has exited
        assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert checkpoint is not None and os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER)), output[-3000:]
        assert "SIGTERM received" in output and "aborting" not in output
        assert not _descendants(proc.pid)
    finally:
        _kill_everything(proc)
    if target == "launcher":  # (one resume per launcher kind keeps the suite short)
        assert _resume_one_step(tiny_model_dir, tmp_path, out) >= 2


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sigterm_to_rlp_launch_of_two_processes_then_resume(tiny_model_dir, corpus, tmp_path, launcher):
    """`rlp-launch torchrun --nproc_per_node 2 ...` and `rlp-launch accelerate launch --num_processes 2 ...` (which
    runs torchrun's agent): the workers live in their own sessions (a process-group signal misses them) and are
    killed 30 s after the agent forwards SIGTERM; rlp-launch signals both workers, they agree on the stopping step,
    save one checkpoint, and the launcher exits after them."""
    out = tmp_path / "out"
    if launcher == "torchrun":
        # --shutdown_timeout 1: had the agent been the one to stop the workers, it would kill them 1 s later
        head = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()),
                "--shutdown_timeout", "1"]
    else:
        head = [os.path.join(BIN, "accelerate"), "launch", "--config_file",
                os.path.join(ROOT, "examples", "accelerate_configs", "multi_gpu.yaml"), "--num_processes", "2",
                "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    cmd = [sys.executable, "-m", "rlp_trl.tools.launch", *head, os.path.join(ROOT, "examples", "train_rlp.py"),
           *_flags(tiny_model_dir, corpus, out, per_device=4)]
    proc, lines = _run_until_steps(cmd, 2)
    try:
        proc.send_signal(signal.SIGTERM)
        output = _finish(proc, lines)
        checkpoint, _ = last_complete_checkpoint(str(out))
        assert proc.returncode == 128 + signal.SIGTERM, output[-4000:]
        assert checkpoint is not None, output[-4000:]
        assert output.count("SIGTERM received") == 2  # both workers got it, each once
        for rank in (0, 1):
            assert os.path.isfile(os.path.join(checkpoint, f"rlp_resume_state_{rank}.pt"))
    finally:
        _kill_everything(proc)
    if launcher == "torchrun":
        assert _resume_one_step(tiny_model_dir, tmp_path, out) >= 2  # 2-process checkpoint, 1-process resume
