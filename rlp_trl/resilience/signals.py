"""Graceful interruption: SIGTERM / SIGINT during `train()` finish the current optimizer step, save a complete
checkpoint and stop; `RunResult.interrupted` names the signal. A second signal (more than `DUPLICATE_WINDOW_S` after
the first) aborts at once. Under `rlp-launch` the training processes register themselves, so the launcher signals
exactly them and waits."""

import contextlib
import json
import os
import signal
import sys
import threading
import time

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .checkpoints import last_complete_checkpoint

logger = logging.get_logger("rlp_trl")

DUPLICATE_WINDOW_S = 5.0
REGISTRY_ENV = "RLP_LAUNCH_REGISTRY"


class GracefulStop(TrainerCallback):
    """SIGTERM / SIGINT: finish the optimizer step, save a complete checkpoint, stop. A second signal aborts, unless
    it comes within `DUPLICATE_WINDOW_S` of the first (a launcher forwarding the signal the process already got from
    its process group). Under `rlp-launch` the process registers its pid so the launcher signals it directly."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.received: int | None = None
        self.received_at: float | None = None
        self.stopped_at: int | None = None
        self._previous = {}
        self._registered: str | None = None

    def install(self) -> None:
        self.received = self.received_at = self.stopped_at = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("[rlp_trl] train() is not running in the main thread: SIGTERM/SIGINT are not intercepted")
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        registry = os.environ.get(REGISTRY_ENV)
        if registry and os.path.isdir(registry):
            path = os.path.join(registry, str(os.getpid()))
            try:
                with open(path, "w") as f:
                    json.dump({"pid": os.getpid(), "rank": self.accelerator.process_index}, f)
                self._registered = path
            except OSError:
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self._registered:
            with contextlib.suppress(OSError):
                os.remove(self._registered)
            self._registered = None

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self.received_at < DUPLICATE_WINDOW_S:
                sys.stderr.write(f"\n[rlp_trl] {name} again within {DUPLICATE_WINDOW_S:.0f} s: taken as the same "
                                 f"request (send it again later to abort without saving)\n")
                return
            sys.stderr.write(f"\n[rlp_trl] second {name}: aborting without saving\n")
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received, self.received_at = signum, time.monotonic()
        sys.stderr.write(
            f"\n[rlp_trl] {name} received: finishing the current optimizer step, then saving a checkpoint and stopping "
            f"(send it again to abort without saving)\n"
        )

    def requested(self) -> bool:
        flag = self.received is not None
        accelerator = self.accelerator
        if accelerator.num_processes > 1:  # every process must stop at the same step
            flag = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum").item() > 0
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def report(self, global_step: int, output_dir: str) -> str | None:
        """After `train()`: the name of the signal that stopped training (logged with the checkpoint), else None."""
        if self.received is not None and self.stopped_at is None:
            logger.warning("[rlp_trl] a stop signal arrived after the last step: training had already completed")
        elif self.received is not None:
            name = signal.Signals(self.received).name
            last, _ = last_complete_checkpoint(output_dir, verify_content=False)
            logger.warning(
                f"[rlp_trl] stopped by {name} after step {global_step}; checkpoint: {last}. "
                f"Resume with resume_from_checkpoint=True (CLI: --resume_from_checkpoint true)."
            )
            return name
        return None
