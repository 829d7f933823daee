"""Stop at the next step boundary on SIGTERM / SIGUSR2: the checkpoint written there resumes the run exactly.

A scheduler stops a job by signalling it first (Slurm: SIGTERM then SIGKILL after ``KillWait``; ``--signal=USR2@90``
before a time limit, submitit's preemption signal). ``fastpnr train`` catches both while it trains: the step in
flight finishes, the loop writes its checkpoint (task, epoch, step in the epoch), and the process exits with
``EXIT_CHECKPOINTED``; ``--resume`` continues from that step. A second signal ends the process at once (the default
action), so a step that never finishes cannot keep it alive.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
EXIT_CHECKPOINTED = 75  # EX_TEMPFAIL: stopped by a signal after writing the checkpoint; resume to continue


class CheckpointedOnSignal(SystemExit):
    """Raised after the checkpoint of a signal stop: the process exits with ``EXIT_CHECKPOINTED``."""

    def __init__(self, signum: int):
        super().__init__(EXIT_CHECKPOINTED)
        self.signum = signum


class StopRequest:
    """Set by a stop signal; the training loop reads ``signum`` (a Python int: no device sync) at step boundaries."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stop_line(self, where: str, out) -> str:
        """The line after the checkpoint of a signal stop: the signal, where the checkpoint stands, how to resume."""
        name = signal.Signals(self.signum).name if self.signum else "a signal on another rank"
        return f"stopped by {name}: checkpoint at {where}; resume with --resume {out}"

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: the default action (terminate) now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum


NEVER = StopRequest()  # what the loop reads where no handler can be installed (another thread)


@contextmanager
def stop_on_signals():
    """Install the handlers for the body (main thread only; elsewhere a request that never comes), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield NEVER
        return
    request = StopRequest()
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
