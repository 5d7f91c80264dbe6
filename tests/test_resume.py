"""Interruption and resume (issue 6): exact resume (same teacher, step, next batch), atomic checkpoints that resume
never mistakes for complete ones, streaming datasets, and SIGTERM/SIGINT saving a complete checkpoint."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import TrainerCallback

from conftest import tiny_config
import rlp_trl
from rlp_trl import RLPTrainer, RunConfig
from rlp_trl.resilience import (
    COMPLETE_MARKER,
    STAGING_PREFIX,
    checkpoint_problem,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
)
from tiny_model import tiny_corpus

CHECKPOINT_FILES = [  # model, optimizer, scheduler, RNG, EMA teacher, trainer state (data position), RLP resume state
    "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "rlp_teacher.safetensors",
    "rlp_teacher.json", "trainer_state.json", "rlp_resume_state_0.pt", COMPLETE_MARKER,
]


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def record_batches(trainer) -> list[dict]:
    """Every micro-batch the loss sees: contexts, rollouts, advantages."""
    seen = []
    original = trainer._prepare_inputs

    def wrapped(generation_batch):
        out = original(generation_batch)
        seen.append({k: out[k].detach().clone() for k in ("prompt_ids", "completion_ids", "advantages")})
        return out

    trainer._prepare_inputs = wrapped
    return seen


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _final(trainer):
    return trainer.state.global_step, _params(trainer.model), _params(trainer.teacher.module)


# ---------------------------------------------------------------------------------------------- exact resume
# steps_per_generation = 2: one generation batch (2 contexts x G = 4) serves two optimizer steps, so checkpoint-1
# falls inside a generation cycle (the buffered rollouts of trl#3247 must be restored) and checkpoint-2 on a boundary.
EXACT = dict(per_device_train_batch_size=4, steps_per_generation=2, max_steps=4, ema_decay=0.9)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    trainer = RLPTrainer(
        tiny_model_dir, args=tiny_config(tmp, save_strategy="steps", save_steps=1, **EXACT),
        train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}),
    )
    batches = record_batches(trainer)
    rlp_trl.train(trainer)
    return dict(out=trainer.args.output_dir, batches=batches, final=_final(trainer))


@pytest.mark.parametrize("resume_step", [1, 2], ids=["mid-generation-cycle", "cycle-boundary"])
def test_resume_matches_an_uninterrupted_run(reference, tiny_model_dir, tmp_path, resume_step):
    checkpoint = os.path.join(reference["out"], f"checkpoint-{resume_step}")
    assert checkpoint_problem(checkpoint) is None
    assert all(os.path.isfile(os.path.join(checkpoint, f)) for f in CHECKPOINT_FILES)
    buffered = torch.load(os.path.join(checkpoint, "rlp_resume_state_0.pt"), weights_only=True)["buffered_inputs"]
    assert (buffered is not None) == (resume_step % 2 == 1)  # rollouts saved only inside a cycle
    trainer = RLPTrainer(
        tiny_model_dir, args=tiny_config(tmp_path, save_strategy="no", **EXACT),
        train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}),
    )
    batches = record_batches(trainer)
    rlp_trl.train(trainer, resume_from_checkpoint=checkpoint)
    step, policy, teacher = _final(trainer)
    ref_step, ref_policy, ref_teacher = reference["final"]
    assert step == ref_step == 4 and trainer.teacher.num_updates == 4
    assert _same_batches(batches, reference["batches"][resume_step:])  # the same next batch, and every one after
    assert _same(teacher, ref_teacher) and _same(policy, ref_policy)  # bit for bit


def test_streaming_dataset_keeps_groups_and_resumes_in_place(tiny_model_dir, tmp_path):
    docs = tiny_corpus(40)

    def stream():  # unknown features, like a generator or a remote stream
        return IterableDataset.from_generator(lambda: ({"text": t, "source": "gen"} for t in docs))

    kwargs = dict(max_steps=3, ema_decay=0.9, positions_per_document=2)
    first = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path / "a", save_strategy="steps", save_steps=1, **kwargs),
                       train_dataset=stream())
    ref = record_batches(first)
    generation_batches = []
    score = first._generate_and_score_completions

    def spy(inputs):
        generation_batches.append([tuple(x["prompt"]) for x in inputs])
        return score(inputs)

    first._generate_and_score_completions = spy
    rlp_trl.train(first)
    g = first.num_generations
    assert len(generation_batches) == 3
    for prompts in generation_batches:  # whole groups of G rollouts of one context, distinct contexts
        groups = [prompts[i : i + g] for i in range(0, len(prompts), g)]
        assert len(prompts) == 8 and all(len(set(grp)) == 1 for grp in groups)
        assert len({grp[0] for grp in groups}) == len(groups)
    second = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path / "b", save_strategy="no", **kwargs),
                        train_dataset=stream())
    resumed = record_batches(second)
    rlp_trl.train(second, resume_from_checkpoint=os.path.join(first.args.output_dir, "checkpoint-1"))
    assert _same_batches(resumed, ref[1:])
    s1, p1, t1 = _final(first)
    s2, p2, t2 = _final(second)
    assert s1 == s2 == 3 and _same(t1, t2) and _same(p1, p2)


# ---------------------------------------------------------------------------------------------- atomic checkpoints
def test_interrupted_save_is_never_picked_up(tiny_model_dir, tmp_path, tiny_docs, caplog):
    args = tiny_config(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    trainer = RLPTrainer(tiny_model_dir, args=args, train_dataset=tiny_docs)
    original = trainer._save_optimizer_and_scheduler

    def crash_at_step_2(output_dir):
        if trainer.state.global_step == 2:  # the model and teacher of checkpoint-2 are written, the rest is not
            raise OSError("simulated crash in the middle of a checkpoint write")
        return original(output_dir)

    trainer._save_optimizer_and_scheduler = crash_at_step_2
    with pytest.raises(OSError, match="simulated crash"):
        rlp_trl.train(trainer)
    out = args.output_dir
    staging = os.path.join(out, f"{STAGING_PREFIX}checkpoint-2")
    assert os.path.isfile(os.path.join(staging, "checkpoint-2", "model.safetensors"))  # half-written, staged
    assert not os.path.exists(os.path.join(out, "checkpoint-2"))
    assert resolve_resume_checkpoint(True, out) == os.path.join(out, "checkpoint-1")

    resumed = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=3, save_strategy="steps", save_steps=1),
                         train_dataset=tiny_docs)
    result = rlp_trl.train(resumed, resume_from_checkpoint=True)
    assert resumed.state.global_step == 3 and resumed.teacher.num_updates == 3
    assert not any(name.startswith(STAGING_PREFIX) for name in os.listdir(out))  # stale staging removed
    assert [checkpoint_problem(os.path.join(out, f"checkpoint-{i}")) for i in (1, 2, 3)] == [None, None, None]


def test_resume_skips_incomplete_or_damaged_checkpoints(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    for step in (1, 2, 3):
        shutil.copytree(os.path.join(reference["out"], f"checkpoint-{step}"), out / f"checkpoint-{step}")
    # checkpoint-3 damaged after the fact (a truncated file), checkpoint-9 a folder some other writer left half-done
    with open(out / "checkpoint-3" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"partial")
    assert "model.safetensors has 100 bytes" in checkpoint_problem(str(out / "checkpoint-3"))
    assert COMPLETE_MARKER in checkpoint_problem(str(out / "checkpoint-9"))
    path, skipped = last_complete_checkpoint(str(out))
    assert path == str(out / "checkpoint-2") and set(skipped) == {str(out / "checkpoint-3"), str(out / "checkpoint-9")}
    for value in (True, "true", "last", "auto"):
        assert resolve_resume_checkpoint(value, str(out)) == str(out / "checkpoint-2")
    with pytest.raises(ValueError, match="model.safetensors has 100 bytes"):
        resolve_resume_checkpoint(str(out / "checkpoint-3"), str(out))
    with pytest.raises(ValueError, match="checkpoint-2"):  # the error points at the newest complete one
        resolve_resume_checkpoint(str(out / "checkpoint-9"), str(out))
    # a folder without marker but with trainer_state.json (plain Trainer, older rlp_trl) is accepted explicitly only
    os.remove(out / "checkpoint-1" / COMPLETE_MARKER)
    assert resolve_resume_checkpoint(str(out / "checkpoint-1"), str(out)) == str(out / "checkpoint-1")
    # nothing to resume from
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_resume_checkpoint("auto", str(empty)) is None and resolve_resume_checkpoint(None, str(empty)) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint(True, str(empty))


# ---------------------------------------------------------------------------------------------- signals
class _SignalAtStep(TrainerCallback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigint_saves_a_complete_checkpoint_and_stops(tiny_model_dir, tmp_path, tiny_docs):
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=50), train_dataset=tiny_docs,
                         callbacks=[_SignalAtStep(1, signal.SIGINT)])
    # what the process had before (default_int_handler in a terminal; SIG_IGN when started in the background)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = rlp_trl.train(trainer)  # no KeyboardInterrupt: the step finishes, a checkpoint is saved, training stops
    assert result.interrupted == "SIGINT" and trainer.state.global_step == 1
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-1")  # even with save_strategy="no"
    assert checkpoint_problem(checkpoint) is None
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_sigterm_to_a_training_process_then_resume(tiny_model_dir, tmp_path):
    """A real `rlp-train` process gets SIGTERM mid-run: it saves a complete checkpoint, exits with 128 + 15, and a
    new run resumes from it."""
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(40)))
    out = tmp_path / "out"
    flags = dict(
        model_name_or_path=tiny_model_dir, dataset_name=str(data), output_dir=str(out), max_steps=500,
        num_generations=4, per_device_train_batch_size=8, max_completion_length=8, max_context_tokens=64,
        min_context_tokens=4, logging_steps=1, save_strategy="no", report_to="none", bf16="false",
        gradient_checkpointing="false", use_cpu="true", disable_tqdm="true", learning_rate=1e-3, seed=0,
    )
    argv = [sys.executable, "-m", "rlp_trl.tools.train"] + [f"--{k}={v}" for k, v in flags.items()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    logged, lines = 0, []
    try:
        for line in proc.stdout:
            lines.append(line)
            logged += "'rlp/info_gain_mean'" in line
            if logged == 2:  # two optimizer steps done
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received" in output
    checkpoint, _ = last_complete_checkpoint(str(out))
    assert checkpoint is not None, output[-3000:]
    step = int(checkpoint.rsplit("-", 1)[1])
    assert step >= 2 and all(os.path.isfile(os.path.join(checkpoint, f)) for f in CHECKPOINT_FILES)
    assert json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"] == step
    assert not os.path.exists(out / "model.safetensors")  # an interrupted run does not save a "final" model

    docs = Dataset.from_dict({"text": tiny_corpus(40)})
    resumed = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, output_dir=str(out), max_steps=step + 1),
                         train_dataset=docs)
    result = rlp_trl.train(resumed, resume_from_checkpoint=True)
    assert resumed.state.global_step == step + 1 and resumed.teacher.num_updates == step + 1
    assert result.interrupted is None


# ---------------------------------------------------------------------------------------------- issue 14: content
def _copy_run(reference, tmp_path, steps=(1, 2, 3, 4)):
    import shutil

    out = tmp_path / "run"
    for step in steps:
        shutil.copytree(os.path.join(reference["out"], f"checkpoint-{step}"), out / f"checkpoint-{step}")
    return out


def _same_size_garbage(path, offset=None):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if offset is None:
            f.write(b"\x00\xff" * (size // 2) + b"\x00" * (size % 2))
        else:  # a few flipped bytes in the middle (e.g. tensor data turned into NaNs)
            f.seek(offset)
            f.write(b"\xff\xff\xff\xff" * 4)
    assert os.path.getsize(path) == size


def test_same_size_corruption_falls_back_to_a_verifying_checkpoint(reference, tmp_path, caplog):
    out = _copy_run(reference, tmp_path)
    _same_size_garbage(out / "checkpoint-4" / "rlp_teacher.safetensors", offset=os.path.getsize(
        out / "checkpoint-4" / "rlp_teacher.safetensors") // 2)
    _same_size_garbage(out / "checkpoint-3" / "trainer_state.json")
    _same_size_garbage(out / "checkpoint-2" / "rng_state.pth")
    assert "rlp_teacher.safetensors does not match its sha256" in checkpoint_problem(str(out / "checkpoint-4"))
    caplog.set_level("WARNING")
    assert resolve_resume_checkpoint("auto", str(out)) == str(out / "checkpoint-1")
    warned = " ".join(r.getMessage() for r in caplog.records)
    for step, name in ((4, "rlp_teacher.safetensors"), (3, "trainer_state.json"), (2, "rng_state.pth")):
        assert f"not resuming from {out / f'checkpoint-{step}'}: {name}" in warned
    assert "falling back to checkpoint-1" in warned
    with pytest.raises(ValueError, match=r"checkpoint-3: trainer_state.json does not match its sha256"):
        resolve_resume_checkpoint(str(out / "checkpoint-3"), str(out))


def test_garbage_state_files_without_hashes_are_named_not_crashes(reference, tmp_path):
    """Markers without hashes (older rlp_trl) or no marker at all: garbage JSON / torch files are still caught by
    parsing, named, and skipped, instead of a bare JSONDecodeError / UnpicklingError at load time."""
    out = _copy_run(reference, tmp_path, steps=(1, 2, 3))
    for step in (1, 2, 3):  # rewrite the markers as sizes only, as rlp_trl wrote them before
        marker = out / f"checkpoint-{step}" / COMPLETE_MARKER
        data = json.load(open(marker))
        data["files"] = {k: v["size"] for k, v in data["files"].items()}
        marker.write_text(json.dumps(data))
    _same_size_garbage(out / "checkpoint-3" / "rlp_teacher.json")
    _same_size_garbage(out / "checkpoint-2" / "rng_state.pth")
    assert "rlp_teacher.json is not valid JSON" in checkpoint_problem(str(out / "checkpoint-3"))
    assert "rng_state.pth is not a readable torch file" in checkpoint_problem(str(out / "checkpoint-2"))
    assert resolve_resume_checkpoint(True, str(out)) == str(out / "checkpoint-1")
    os.remove(out / "checkpoint-3" / COMPLETE_MARKER)  # no marker, named explicitly: parsed, then refused by name
    with pytest.raises(ValueError, match=r"checkpoint-3: rlp_teacher.json is not valid JSON"):
        resolve_resume_checkpoint(str(out / "checkpoint-3"), str(out))


# ---------------------------------------------------------------------------------------------- issue 14: finished
@pytest.mark.parametrize("mode", ["auto", "true", "path"])
def test_resuming_a_finished_run_is_a_no_op(reference, tiny_model_dir, tmp_path, mode, capsys, caplog):
    out = _copy_run(reference, tmp_path, steps=(3, 4))
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, output_dir=str(out), save_strategy="steps",
                                                          save_steps=1, **EXACT),
                         train_dataset=Dataset.from_dict({"text": tiny_corpus(40)}))
    before = _params(trainer.model)
    result = rlp_trl.train(trainer, resume_from_checkpoint=str(out / "checkpoint-4") if mode == "path" else mode)
    assert result.finished_at == 4 and trainer.state.global_step == 4
    printed = capsys.readouterr()
    logged = [r for r in caplog.records if "already at max_steps" in r.getMessage()]
    assert (printed.out + printed.err).count("already at max_steps 4") + len(logged) == 1  # said once (issue 21, item 1)
    assert sorted(os.listdir(out)) == ["checkpoint-3", "checkpoint-4"]  # no checkpoint-5, nothing rewritten
    assert _same(_params(trainer.model), before)


# ---------------------------------------------------------------------------------------------- issue 14: mismatch
@pytest.mark.parametrize("change", ["corpus", "learning_rate"])
def test_resume_refuses_another_corpus_or_an_ignored_setting(reference, tiny_model_dir, tmp_path, change, caplog):
    docs = tiny_corpus(40, seed=5) if change == "corpus" else tiny_corpus(40)  # same row count, other documents
    settings = {**EXACT, "learning_rate": 1e-4} if change == "learning_rate" else EXACT
    checkpoint = os.path.join(reference["out"], "checkpoint-2")
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, **settings), train_dataset=Dataset.from_dict({"text": docs}))
    expected = "the training data differs .shape fingerprint" if change == "corpus" else "learning_rate was 0.001, now 0.0001"
    from rlp_trl.usage import UsageError  # a user error: one line and exit status 2 from rlp-train (issue 21)

    with pytest.raises(UsageError, match=rf"refusing to resume: resuming from .*checkpoint-2: {expected}"):
        rlp_trl.train(trainer, resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 2 or trainer.state.global_step == 0  # nothing trained
    warned = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, **settings), train_dataset=Dataset.from_dict({"text": docs}))
    rlp_trl.train(warned, resume_from_checkpoint=checkpoint, run_config=RunConfig(resume_mismatch="warn"))
    assert warned.state.global_step == 4 and any("WARNING, resuming from" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- issue 21, item 9
def _remark(checkpoint, hashes=True):
    """Re-write the completion marker over the folder's current files (as a marker rewritten after the fact would)."""
    from rlp_trl.resilience import write_complete_marker

    step = int(str(checkpoint).rsplit("-", 1)[1])
    write_complete_marker(str(checkpoint), step)
    if not hashes:  # as rlp_trl < 0.2 wrote it: sizes only
        marker = checkpoint / COMPLETE_MARKER
        data = json.loads(marker.read_text())
        data["files"] = {k: v["size"] for k, v in data["files"].items()}
        marker.write_text(json.dumps(data))


def test_auto_falls_back_past_checkpoints_whose_files_verify_but_whose_state_is_not_finite(reference, tmp_path, caplog):
    """NaN Adam moments (checkpoint-4) and a NaN EMA teacher (checkpoint-3) under valid markers: every
    `--resume_from_checkpoint auto` loaded them and failed, the same way on every requeue. Now they are skipped."""
    from safetensors.torch import load_file, save_file

    out = _copy_run(reference, tmp_path)
    optimizer = torch.load(out / "checkpoint-4" / "optimizer.pt", weights_only=True)
    first = next(iter(optimizer["state"].values()))
    first["exp_avg_sq"].view(-1)[0] = float("nan")
    torch.save(optimizer, out / "checkpoint-4" / "optimizer.pt")
    _remark(out / "checkpoint-4")
    teacher = load_file(out / "checkpoint-3" / "rlp_teacher.safetensors")
    name = min(teacher)
    teacher[name].view(-1)[0] = float("inf")
    save_file(teacher, out / "checkpoint-3" / "rlp_teacher.safetensors", metadata={"format": "pt"})
    _remark(out / "checkpoint-3")
    assert "optimizer.pt holds non-finite values (NaN/inf) in exp_avg_sq of parameter #" in checkpoint_problem(
        str(out / "checkpoint-4"))
    assert f"rlp_teacher.safetensors holds non-finite values (NaN/inf) in {name}" in checkpoint_problem(
        str(out / "checkpoint-3"))
    caplog.set_level("WARNING")
    assert resolve_resume_checkpoint("auto", str(out)) == str(out / "checkpoint-2")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"not resuming from {out / 'checkpoint-4'}: optimizer.pt holds non-finite values" in warned
    assert "falling back to checkpoint-2" in warned


def test_markers_without_hashes_still_check_the_large_files(reference, tmp_path):
    """Old markers (sizes only) let same-size damage of optimizer.pt / model.safetensors / rlp_teacher.safetensors
    through unverified; now torch archives are checked against their CRCs, safetensors by header and values."""
    out = _copy_run(reference, tmp_path, steps=(1, 2, 3, 4))
    for step in (1, 2, 3, 4):
        _remark(out / f"checkpoint-{step}", hashes=False)
    size = os.path.getsize(out / "checkpoint-4" / "optimizer.pt")
    _same_size_garbage(out / "checkpoint-4" / "optimizer.pt", offset=size // 2)
    _same_size_garbage(out / "checkpoint-3" / "model.safetensors", offset=0)  # its header
    path = out / "checkpoint-2" / "rlp_teacher.safetensors"
    _same_size_garbage(path, offset=os.path.getsize(path) - 64)  # values: 0xffffffff is a NaN
    assert "optimizer.pt is corrupted (CRC mismatch" in checkpoint_problem(str(out / "checkpoint-4"))
    assert "no sha256" in checkpoint_problem(str(out / "checkpoint-4"))
    assert "model.safetensors is not a readable safetensors file" in checkpoint_problem(str(out / "checkpoint-3"))
    assert "rlp_teacher.safetensors holds non-finite values" in checkpoint_problem(str(out / "checkpoint-2"))
    assert resolve_resume_checkpoint("auto", str(out)) == str(out / "checkpoint-1")


def test_one_changed_document_outside_the_sampled_rows_changes_the_shape_fingerprint():
    """The sampled fingerprint reads 64 rows: a change elsewhere resumed silently. The shape fingerprint reads every
    row's targets, positions and prompt lengths (not the prompts' tokens)."""
    import time

    from rlp_trl.resilience import content_fingerprint, shape_fingerprint
    from rlp_trl.resilience.resume import ResumeState

    def positions(n, changed=None):
        rows = {"prompt": [[1 + i % 7] * (5 + i % 11) for i in range(n)], "target_ids": [[i % 13] for i in range(n)],
                "doc_index": list(range(n)), "position": [5 + i % 11 for i in range(n)]}
        if changed == "target":
            rows["target_ids"][1] = [99]
        elif changed == "length":
            rows["prompt"][1] = rows["prompt"][1] + [3]
        return Dataset.from_dict(rows)

    base = positions(500)
    for changed in ("target", "length"):
        other = positions(500, changed)
        assert content_fingerprint(other) == content_fingerprint(base)  # row 1 is not among the 64 sampled
        assert shape_fingerprint(other) != shape_fingerprint(base)
    assert shape_fingerprint(positions(500)) == shape_fingerprint(base)
    assert shape_fingerprint(base.select([4, 2, 0])) is None  # an indices mapping: the sampled fingerprint only
    assert shape_fingerprint(base.select(range(10))) == shape_fingerprint(positions(10))  # a slice reads its rows

    class Args:
        learning_rate, weight_decay, adam_beta1, adam_beta2, adam_epsilon, optim = 1e-3, 0.0, 0.9, 0.999, 1e-8, "adamw"

    state = ResumeState(Args(), None, positions(500, "target"), None)
    saved = {"data": {**ResumeState(Args(), None, base, None).fingerprint()}, "settings": {}}
    assert "shape fingerprint" in state.mismatches(saved)[0]
    del saved["data"]["shape"]  # a checkpoint written before the shape fingerprint: the sampled one decides
    assert state.mismatches(saved) == []

    big = positions(100_000)
    start = time.perf_counter()
    shape_fingerprint(big)
    assert time.perf_counter() - start < 2.0  # offsets and small columns only
