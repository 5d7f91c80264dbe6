"""One writer per `output_dir` (docs/reliability.md).

`rlp_trl.train(trainer)` takes `<output_dir>/.rlp-lock` before it touches the folder (stale staging clean-up, checkpoints,
the final model) and releases it when training ends. The file names its holder: host, pid, the process's start time
(so a recycled pid is not taken for the holder), the SLURM job id if any, the command line and a heartbeat refreshed
every `HEARTBEAT_S` seconds by a daemon thread.

A second run on the same folder refuses with `OutputDirLockedError`, naming the holder. The lock is taken over,
with a warning, when its holder cannot be running any more:

* same host and the pid is gone (or is another process now: different start time);
* the same SLURM job id (a requeued job: its earlier incarnation is dead by definition);
* a heartbeat older than `STALE_AFTER_S` (a holder on another host that crashed or lost its node).
"""

import json
import os
import socket
import sys
import threading
import time

LOCK_NAME = ".rlp-lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class OutputDirLockedError(RuntimeError):
    """Another live run holds the output directory."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable / half-written: judged by its age below


def _why_stale(path: str, holder: dict, stale_after: float) -> str | None:
    """Why the holder recorded in `path` cannot be running any more, or None if it may be."""
    me = os.getpid()
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if pid == me:
            return "held by this process (an earlier train() that did not release it)"
        if isinstance(pid, int) and not _pid_alive(pid, holder.get("pid_start")):
            return f"its holder (pid {pid} on this host) is no longer running"
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job:
        return f"held by an earlier run of the same SLURM job {job} (requeued)"
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError:
        return "it disappeared"
    if age > stale_after:
        return f"its heartbeat is {age:.0f} s old (more than {stale_after:.0f} s)"
    return None


def _unwritable(output_dir: str, err: OSError):
    from .usage import UsageError

    return UsageError(f"output_dir {output_dir}: cannot write there ({err.strerror or err}); pass an --output_dir "
                      f"this user can create files in")


class OutputDirLock:
    """`acquire()` / `release()` the lock of `output_dir` (re-entrant within one object)."""

    def __init__(self, output_dir: str, stale_after: float = STALE_AFTER_S, heartbeat: float = HEARTBEAT_S):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.held = False
        self.taken_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }

    def acquire(self) -> "OutputDirLock":
        if self.held:
            return self
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as err:
            raise _unwritable(self.output_dir, err) from err
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is None:  # released meanwhile
                    continue
                reason = _why_stale(self.path, holder, self.stale_after)
                if reason is None:
                    raise OutputDirLockedError(
                        f"{self.output_dir} is in use by another run (host {holder.get('host')}, pid "
                        f"{holder.get('pid')}, started {holder.get('started')}: {holder.get('command', '?')[:200]}). "
                        f"Two runs writing one output_dir replace each other's checkpoints: use another --output_dir, "
                        f"or stop that run. If it is dead (e.g. on a lost node), delete {self.path}; it is also taken "
                        f"over once its heartbeat is {self.stale_after:.0f} s old."
                    ) from None
                self.taken_over = reason
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            except OSError as err:  # read-only file system, no permission: the user's folder, not a bug
                raise _unwritable(self.output_dir, err) from err
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="rlp-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise OutputDirLockedError(f"could not take {self.path}: it keeps being re-created by another process")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self.held = False
        holder = _read(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
