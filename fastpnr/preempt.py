"""Stop at the next step boundary on SIGTERM / SIGUSR2: the checkpoint written there resumes the run exactly.

A scheduler stops a job by signalling it first (Slurm: SIGTERM then SIGKILL after ``KillWait``; ``--signal=USR2@90``
before a time limit, submitit's preemption signal). ``fastpnr train`` catches both while it trains: the step in
flight finishes, the loop writes its checkpoint (task, epoch, step in the epoch), and the process exits with
``EXIT_CHECKPOINTED``; ``--resume`` continues from that step. A second signal ends the process at once (the default
action), so a step that never finishes cannot keep it alive; a repeat within ``REPEAT_S`` of the first is the same stop
delivered twice (Slurm signals every process of a job, and torchrun forwards the SIGTERM it got to its workers) and
only the first counts.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
REPEAT_S = 5.0  # a second signal this soon after the first is the same stop (scheduler + launcher), not "now"
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
        self._first_at = 0.0  # time.monotonic() of the first signal

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stop_line(self, where: str, out) -> str:
        """The line after the checkpoint of a signal stop: the signal, where the checkpoint stands, how to resume."""
        name = signal.Signals(self.signum).name if self.signum else "a signal on another rank"
        return f"stopped by {name}: checkpoint at {where}; resume with --resume {out}"

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at >= REPEAT_S:  # a second stop: the default action (terminate) now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


NEVER = StopRequest()  # what the loop reads where no handler can be installed (another thread)
_BEFORE: dict = {}  # while stop_on_signals is active: {signal: the handler it replaced}


_FORKING = threading.local()  # the signal mask of before the fork, for the thread that forks


def _block_before_fork() -> None:
    """Block the stop signals across the fork. A signal sent to a child in the instant after the fork, before its
    handlers are restored, would meet the inherited stop handler, and Python drops a signal caught then: the child
    outlived Pool.terminate's SIGTERM (a pool worker forked on a loaded machine, before it first ran). Blocked, the
    signal waits in the child until the handlers of before are back, then takes their action."""
    if _BEFORE:
        _FORKING.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BEFORE.keys())


def _restore_mask() -> None:
    """The forking thread's signal mask of before the fork: in the parent after it, and in the child (which has that
    thread's mask) once its handlers are restored."""
    mask = getattr(_FORKING, "mask", None)
    if mask is not None:
        _FORKING.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _restore_in_forked_child() -> None:
    """A child forked while the handlers are installed (the decode pool's workers) gets the handlers of before.
    Otherwise it would inherit the stop handler and outlive the SIGTERM with which multiprocessing.Pool ends its
    workers (Pool.terminate then waits for them forever). Then the signals blocked across the fork are delivered."""
    for s, handler in _BEFORE.items():
        try:
            signal.signal(s, handler)
        except ValueError:  # forked from another thread (Python allows signal.signal in the main thread only)
            pass
    _restore_mask()


# Looked up at each fork (a test puts a signal into the window after the fork through these names).
os.register_at_fork(before=lambda: _block_before_fork(), after_in_parent=lambda: _restore_mask(),
                    after_in_child=lambda: _restore_in_forked_child())


@contextmanager
def stop_on_signals():
    """Install the handlers for the body (main thread only; elsewhere a request that never comes), then restore.
    Children forked inside the body start with the handlers of before (``_restore_in_forked_child``)."""
    if threading.current_thread() is not threading.main_thread():
        yield NEVER
        return
    request = StopRequest()
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS}
    outer = dict(_BEFORE)  # nested: a child gets the handlers of before the outermost
    _BEFORE.update(outer or {s: h for s, h in previous.items() if h is not None})  # None: not set from Python
    try:
        yield request
    finally:
        _BEFORE.clear()
        _BEFORE.update(outer)
        for s, handler in previous.items():
            signal.signal(s, handler)
