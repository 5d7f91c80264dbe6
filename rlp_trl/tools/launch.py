"""`rlp-launch`: run a launcher so that a stop signal reaches every training process and the exit waits for the save.

    rlp-launch accelerate launch --num_processes 8 examples/train_rlp.py --resume_from_checkpoint auto ...
    rlp-launch torchrun --nproc_per_node 8 -m rlp_trl.tools.train --resume_from_checkpoint auto ...
    python -m rlp_trl.tools.launch [--kill-after SECONDS] -- <any command>

Why: `accelerate launch` with one process runs the script as a child and dies at once on SIGTERM without waiting
for it; `torchrun` (and `accelerate launch` with several processes, which uses it) starts its workers in their own
sessions, forwards SIGTERM to them and kills them 30 s later; a scheduler that ends the job when the launcher
exits then never gets the checkpoint. `rlp-launch`:

* runs the command in its own session, with `RLP_LAUNCH_REGISTRY` set: every `rlp_trl.train(trainer)` under it (`rlp-train` runs one)
  registers its pid there (`rlp_trl.resilience.GracefulStop`);
* on SIGTERM / SIGINT / SIGHUP / SIGUSR1 / SIGUSR2, sends the signal to exactly the registered training processes (not to the launchers
  between, which would kill or hurry them), or to the command's process group while nothing is registered yet
  (still loading: nothing to save). Each training process finishes its step, saves a complete checkpoint and exits
  with 128 + signal; a second signal, more than 5 s later, aborts them;
* waits until the command *and* every training process have exited (it is a child subreaper on Linux, so a
  training process orphaned by a launcher that died is still waited for), then exits with the command's status,
  or 128 + signal after a forwarded stop signal;
* `--kill-after S`: SIGKILL everything S seconds after the first signal (default: wait as long as it takes; leave
  the scheduler's grace period, e.g. SLURM's `--signal=B:TERM@120`, to bound it).

Under SLURM, `exec rlp-launch ...` in the batch script makes it the process that `--signal=B:TERM@<s>` signals.
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REGISTRY_ENV = "RLP_LAUNCH_REGISTRY"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
POLL_S = 0.2


def _say(message: str) -> None:
    sys.stderr.write(f"[rlp-launch] {message}\n")
    sys.stderr.flush()


def _become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux PR_SET_CHILD_SUBREAPER), so they can be waited for."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive (it has exited and waits to be reaped)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Launcher:
    def __init__(self, command: list[str], kill_after: float | None = None):
        self.command = command
        self.kill_after = kill_after
        self.registry = tempfile.mkdtemp(prefix="rlp-launch-")
        self.child: subprocess.Popen | None = None
        self.signalled: int | None = None
        self.first_signal_at: float | None = None
        self.child_status: int | None = None

    def registered(self) -> list[int]:
        pids = []
        for name in os.listdir(self.registry):
            try:
                with open(os.path.join(self.registry, name)) as f:
                    pid = int(json.load(f)["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _alive(pid):
                pids.append(pid)
        return pids

    def forward(self, signum, frame=None) -> None:
        name = signal.Signals(signum).name
        if self.first_signal_at is None:
            self.first_signal_at = time.monotonic()
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) and self.signalled is None:
            self.signalled = signum
        pids = self.registered()
        if pids:
            _say(f"{name} -> training process(es) {', '.join(map(str, pids))}; waiting for them to save and exit")
            for pid in pids:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        elif self.child is not None:
            _say(f"{name} -> process group {self.child.pid} (no training process registered yet: nothing to save)")
            try:
                os.killpg(self.child.pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        """Collect exited children (the command, orphans re-parented to us); remember the command's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid:
                self.child_status = os.waitstatus_to_exitcode(status)
                self.child.returncode = self.child_status

    def run(self) -> int:
        _become_subreaper()
        env = {**os.environ, REGISTRY_ENV: self.registry}
        previous = {sig: signal.signal(sig, self.forward) for sig in FORWARDED}
        try:
            self.child = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as err:
            _say(f"cannot start {self.command[0]!r}: {err}")
            return 127
        try:
            while True:
                self._reap()
                done = self.child_status is not None
                stragglers = self.registered()
                if done and not stragglers and not _group_alive(self.child.pid):
                    break
                if (self.kill_after is not None and self.first_signal_at is not None
                        and time.monotonic() - self.first_signal_at > self.kill_after):
                    _say(f"still running {self.kill_after:.0f} s after the signal: SIGKILL")
                    for pid in stragglers:
                        with _suppress():
                            os.kill(pid, signal.SIGKILL)
                    with _suppress():
                        os.killpg(self.child.pid, signal.SIGKILL)
                    self.kill_after = None
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.registry, ignore_errors=True)
        code = self.child_status
        code = 128 - code if code < 0 else code  # killed by a signal: shell convention
        if self.signalled is not None and code != 0:
            code = 128 + int(self.signalled)
        if self.signalled is not None:
            _say(f"every process has exited (status {code})")
        return code


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="rlp-launch", description=__doc__.split("\n\n")[0],
        usage="rlp-launch [--kill-after SECONDS] [--] COMMAND [ARGS ...]",
    )
    parser.add_argument("--kill-after", type=float, default=None,
                        help="SIGKILL everything this many seconds after the first signal (default: wait)")
    options = []
    while argv and argv[0].startswith("-") and argv[0] != "--":
        options.append(argv.pop(0))
        if options[-1] == "--kill-after" and argv:
            options.append(argv.pop(0))
    if argv and argv[0] == "--":
        argv.pop(0)
    args = parser.parse_args(options)
    if not argv:
        parser.error("no command given, e.g. rlp-launch accelerate launch examples/train_rlp.py ...")
    return Launcher(argv, args.kill_after).run()


def cli() -> int:
    """Console-script entry point (`rlp-launch`)."""
    return main()


if __name__ == "__main__":
    raise SystemExit(main())
