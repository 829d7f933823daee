"""Stop at the next step boundary on SIGTERM / SIGUSR2 / Ctrl-C: the checkpoint written there resumes the run exactly.

A scheduler stops a job by signalling it first (Slurm: SIGTERM then SIGKILL after ``KillWait``; ``--signal=USR2@90``
before a time limit, submitit's preemption signal). ``fastpnr train`` catches both while it trains: the step in
flight finishes, the loop writes its checkpoint (task, epoch, step in the epoch), and the process exits with
``EXIT_CHECKPOINTED``; ``--resume`` continues from that step. A second signal ends the process at once (the default
action), so a step that never finishes cannot keep it alive; a repeat within ``REPEAT_S`` of the first is the same stop
delivered twice (Slurm signals every process of a job, and torchrun forwards the SIGTERM it got to its workers) and
only the first counts.

Ctrl-C (SIGINT), once the run has a checkpoint (``StopRequest.catch_interrupts``): the first prints
``stopping after this step (Ctrl-C again to stop now)`` at once and stops like SIGTERM (checkpoint at the step
boundary, exit ``EXIT_CHECKPOINTED``); a second one stops at once with the resume line and exit ``EXIT_INTERRUPTED``
(the last checkpoint resumes the run; the steps since it are done again). "At once" even while the main thread is
inside a step that takes minutes (a C++ call, where Python runs no signal handler): the C-level handler writes the
signal to a pipe (``signal.set_wakeup_fd``) that a watcher thread reads.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
REPEAT_S = 5.0  # a second signal this soon after the first is the same stop (scheduler + launcher), not "now"
EXIT_CHECKPOINTED = 75  # EX_TEMPFAIL: stopped by a signal after writing the checkpoint; resume to continue
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C stopped the run at once; its last checkpoint resumes it
STOPPING = "stopping after this step (Ctrl-C again to stop now)"


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
        self._watcher: _InterruptWatcher | None = None  # Ctrl-C, once catch_interrupts installed it
        self.checkpoint_at: str | None = None  # where the latest checkpoint stands (the run sets it after each one)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stop_line(self, where: str, out) -> str:
        """The line after the checkpoint of a signal stop: the signal, where the checkpoint stands, how to resume."""
        name = signal.Signals(self.signum).name if self.signum else "a signal on another rank"
        return f"stopped by {name}: checkpoint at {where}; resume with --resume {out}"

    def catch_interrupts(self, say, out) -> None:
        """From now on Ctrl-C stops the run as described above (call it once a checkpoint exists; before, Ctrl-C
        raises KeyboardInterrupt as usual). ``say``: prints a line at once (from the watcher thread); ``out``: the
        run folder of the resume line. Main thread only; undone when ``stop_on_signals`` ends."""
        if self._watcher is not None or self is NEVER or threading.current_thread() is not threading.main_thread():
            return
        self._watcher = _InterruptWatcher(self, say, out)
        _BEFORE.setdefault(signal.SIGINT, signal.getsignal(signal.SIGINT))  # a forked child gets it back
        signal.signal(signal.SIGINT, _in_watcher)

    def interrupted(self, say, out) -> None:
        """One Ctrl-C, seen by the watcher thread: the first asks for the stop at the next step boundary, a second
        ends the process now."""
        if self._watcher.count == 1:
            if self.signum is None:
                self.signum, self._first_at = signal.SIGINT, time.monotonic()
            say(STOPPING)
            return
        where = self.checkpoint_at or "its start"
        say(f"stopped at once by a second Ctrl-C: checkpoint at {where}; resume with --resume {out}")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream: nothing more to say
                pass
        os._exit(EXIT_INTERRUPTED)

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at >= REPEAT_S:  # a second stop: the default action (terminate) now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _in_watcher(signum, frame):
    """The Python-level SIGINT handler while the watcher counts Ctrl-C: nothing (no KeyboardInterrupt)."""


class _InterruptWatcher:
    """A thread that reads the signals the C-level handler writes to a pipe (``signal.set_wakeup_fd``), at once
    whatever the main thread is doing, and hands each SIGINT to ``request.interrupted``."""

    def __init__(self, request: StopRequest, say, out):
        self.count = 0
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # set_wakeup_fd needs it
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.request, self.say, self.out = request, say, out
        self.thread = threading.Thread(target=self._watch, name="fastpnr-ctrl-c", daemon=True)
        self.thread.start()
        _WATCHING.append(self)

    def _watch(self) -> None:
        while True:
            for signum in os.read(self.read_fd, 64):
                if signum == 0:  # stop(): the run is over
                    return
                if signum == signal.SIGINT:
                    self.count += 1
                    self.request.interrupted(self.say, self.out)

    def stop(self) -> None:
        signal.set_wakeup_fd(self.previous_fd)
        os.write(self.write_fd, b"\0")
        self.thread.join()
        self.close()

    def close(self) -> None:
        _WATCHING.remove(self)
        os.close(self.read_fd)
        os.close(self.write_fd)


_WATCHING: list = []  # the active watcher (a forked child closes its pipe)
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
    for watcher in list(_WATCHING):  # the child's signals are not the run's Ctrl-C
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        watcher.close()
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
    sigint = signal.getsignal(signal.SIGINT)
    try:
        yield request
    finally:
        request._stop_watching()
        _BEFORE.clear()
        _BEFORE.update(outer)
        for s, handler in (*previous.items(), (signal.SIGINT, sigint)):
            if handler is not None:
                signal.signal(s, handler)
