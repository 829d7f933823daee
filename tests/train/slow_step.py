"""`python -m fastpnr train ...` whose step number $SLOW_STEP (counted from 1 in this process) takes $SLOW_STEP_S
seconds more, inside one C call, as a step of a large model on a busy CPU spends minutes in torch's C++ (where Python
runs no signal handler): it writes <run folder>/slow_step.started before the wait and slow_step.done after it. The
Ctrl-C tests signal the run while it is inside that step."""
import ctypes
import os
import sys
import time
from pathlib import Path

from fastpnr.train import trainer

_run_step = trainer.Trainer.run_step
_calls = [0]


def _slow_run_step(self, *args, **kwargs):
    out = _run_step(self, *args, **kwargs)
    _calls[0] += 1
    if _calls[0] == int(os.environ["SLOW_STEP"]):
        folder = Path(sys.argv[sys.argv.index("--out") + 1])
        (folder / "slow_step.started").write_text(str(os.getpid()))
        _wait_in_c(float(os.environ["SLOW_STEP_S"]))
        (folder / "slow_step.done").write_text("")
    return out


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _wait_in_c(seconds: float) -> None:
    """Wait in one C call that signals do not interrupt: locking a mutex this thread holds, until a timeout."""
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    deadline = _Timespec(int(time.clock_gettime(time.CLOCK_REALTIME) + seconds), 0)
    libc.pthread_mutex_timedlock(mutex, ctypes.byref(deadline))  # ETIMEDOUT at the deadline


trainer.Trainer.run_step = _slow_run_step

if __name__ == "__main__":
    from fastpnr.cli import main

    main(sys.argv[1:])
