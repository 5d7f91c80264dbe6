"""Writing checkpoints into the output folder: atomic and verified (docs/reliability.md).

`CheckpointStager` (one per trainer) writes a checkpoint into a hidden staging folder (`.rlp-staging-checkpoint-N/`),
has its files flushed, hashed and listed in the completion marker (written last) and only then renames it to
`checkpoint-N`. A save interrupted midway never looks like a checkpoint; its staging folder is removed at the next
start (`claim_output_dir`, which also takes the output folder's lock and resolves the resume checkpoint). I/O errors
during a save (a full disk) are reported as `CheckpointSaveError` naming the last complete checkpoint.
"""

import contextlib
import errno
import os
import re
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from ..lock import OutputDirLock
from .checkpoints import (
    STAGING_PREFIX,
    _fsync_dir,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
    write_complete_marker,
)
from .nonfinite import NonFiniteError

logger = logging.get_logger("rlp_trl")


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (I/O error, full disk); the message names the last complete checkpoint."""


def remove_stale_staging(output_dir: str) -> list[str]:
    """Delete staging folders left by saves that were interrupted (they never became checkpoints)."""
    removed = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


_IO_PATTERN = re.compile(
    r"No space left|os error|inline_container|PytorchStreamWriter|unexpected pos|file write failed|Disk quota|"
    r"Input/output error|Read-only file system", re.IGNORECASE,
)


def _is_io_error(err: BaseException) -> bool:
    chain = [err, err.__cause__, err.__context__]
    return any(isinstance(e, OSError) or (e is not None and _IO_PATTERN.search(str(e))) for e in chain)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024


def save_failure(run_dir: str, name: str, err: BaseException) -> CheckpointSaveError:
    """A `CheckpointSaveError` that says what happened, how full the disk is, and which checkpoint is the last good one."""
    try:
        usage = shutil.disk_usage(run_dir)
        full = usage.free < max(64 << 20, 0.005 * usage.total)
        disk = f"the disk holding {run_dir} has {_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        full, disk = False, f"the free space of {run_dir} cannot be read"
    nospace = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or re.search(
        r"No space left|unexpected pos|file write failed|Disk quota", str(err), re.IGNORECASE
    )
    if nospace or full:
        what = f"the disk looks full ({disk}; PyTorch reports a full disk as 'unexpected pos' / 'file write failed')"
    else:
        what = f"an I/O error ({disk})"
    last, _ = last_complete_checkpoint(run_dir, verify_content=False)
    return CheckpointSaveError(
        f"Saving {name} failed: {type(err).__name__}: {err}. Cause: {what}. {name} was not written: nothing "
        f"half-written becomes a checkpoint (the staging folder is removed at the next start). The last complete "
        f"checkpoint is {last or 'none'}; free space and resume with --resume_from_checkpoint auto."
    )



class CheckpointStager:
    """Makes `Trainer._save_checkpoint` atomic and verified; one per guarded run (`rlp_trl.resilience.run`).

    `staging_dir` is the staging root while a checkpoint is being written, else None; the trainer's `_get_output_dir`
    returns it while set, so everything the Trainer, TRL and RLP write for this checkpoint lands in
    `<staging root>/checkpoint-N`. With `push_to_hub` (uploads read the folder asynchronously) the folder is written
    in place and only marked complete.
    """

    def __init__(self, args, accelerator):
        self.args = args
        self.accelerator = accelerator
        self.staging_dir: str | None = None

    @contextlib.contextmanager
    def stage(self, run_dir: str, state):
        """Around the whole save of checkpoint `state.global_step` into `run_dir`; yields the folder it is written to.

        On success (the body returned) the marker is written and the folder renamed into place; older checkpoints are
        then rotated (`save_total_limit`). The caller checks first that the state is finite (`verify_state_finite`)."""
        args, accelerator = self.args, self.accelerator
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        final_dir = os.path.join(run_dir, name)
        stage = not args.push_to_hub
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        written = os.path.join(staging_root, name) if stage else final_dir
        try:
            if stage:
                if args.should_save:
                    shutil.rmtree(staging_root, ignore_errors=True)
                    os.makedirs(staging_root, exist_ok=True)
                accelerator.wait_for_everyone()
                self.staging_dir = staging_root
            try:
                yield written
            finally:
                self.staging_dir = None
            accelerator.wait_for_everyone()
            if args.should_save:
                best = state.best_model_checkpoint
                if stage and best is not None and os.path.abspath(best).startswith(os.path.abspath(staging_root)):
                    state.best_model_checkpoint = final_dir
                    state.save_to_json(os.path.join(written, "trainer_state.json"))
                write_complete_marker(written, state.global_step)
                if stage:
                    replaced = staging_root + "-replaced"
                    if os.path.exists(final_dir):  # e.g. an unverifiable folder of the same step: move it aside first
                        shutil.rmtree(replaced, ignore_errors=True)
                        os.rename(final_dir, replaced)
                    os.rename(written, final_dir)
                    _fsync_dir(run_dir)
                    shutil.rmtree(replaced, ignore_errors=True)
                    shutil.rmtree(staging_root, ignore_errors=True)
                    rotate_checkpoints(
                        output_dir=run_dir, save_total_limit=args.save_total_limit,
                        best_model_checkpoint=state.best_model_checkpoint, use_mtime=True,
                    )
        except Exception as err:
            if isinstance(err, (NonFiniteError, CheckpointSaveError)) or not _is_io_error(err):
                raise
            raise save_failure(run_dir, name, err) from err
        accelerator.wait_for_everyone()


def claim_output_dir(output_dir: str, resume_from_checkpoint) -> tuple[OutputDirLock, str | None]:
    """Main process, at the start of `train()`: lock the output folder (`rlp_trl.lock`), resolve and verify the
    checkpoint to resume from, clear stale staging folders. Returns the held lock (the caller releases it) and the
    checkpoint (or None)."""
    lock = OutputDirLock(output_dir)
    lock.acquire()
    try:
        if lock.taken_over:
            logger.warning(f"[rlp_trl] took over the lock of {output_dir}: {lock.taken_over}")
        resume = resolve_resume_checkpoint(resume_from_checkpoint, output_dir)
        for name in remove_stale_staging(output_dir):
            logger.warning(f"[rlp_trl] removed {name}: a checkpoint save that never completed")
    except BaseException:
        lock.release()
        raise
    return lock, resume


@contextlib.contextmanager
def claimed_output_dir(accelerator, output_dir: str, resume_from_checkpoint):
    """For the length of `train()`: the main process holds the output folder's lock (`claim_output_dir`); every
    process gets the verified checkpoint to resume from (or None). The lock is released on exit, whatever happens."""
    from .preflight import check_launch

    check_launch(accelerator.num_processes)  # before the lock: a failed distributed launch, not "another run"
    held = []

    def claim():
        lock, checkpoint = claim_output_dir(output_dir, resume_from_checkpoint)
        held.append(lock)
        return checkpoint

    try:
        yield on_main_then_everywhere(accelerator, claim)
    finally:
        for lock in held:
            lock.release()


def on_main_then_everywhere(accelerator, fn):
    """Run `fn` on the main process only and hand its result (or its exception) to every process."""
    box = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except Exception as err:  # noqa: BLE001 - re-raised on every process below
            box = [("error", err)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
