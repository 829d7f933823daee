"""`python -m fastpnr train ...` that, once per run folder and rank, pauses after its step number $PAUSE_AT_STEP
(counted from 1 in each process) until a stop signal comes: writes <run folder>/paused.<rank>, then waits (600 s at
most) for SIGTERM or SIGUSR2. Every rank pauses after the same step, as ranks in lockstep are. The Slurm tests
requeue the cell's job (`scontrol requeue`) while it is surely inside a task."""
import os
import sys
import time
from pathlib import Path

from fastpnr.system import preempt
from fastpnr.train import trainer

_run_step, _handle = trainer.Trainer.run_step, preempt.StopRequest._handle
_calls, _signalled = [0], [False]


def _handle_and_note(self, signum, frame):
    _signalled[0] = True
    _handle(self, signum, frame)


def _run_step_then_pause(self, *args, **kwargs):
    out = _run_step(self, *args, **kwargs)
    _calls[0] += 1
    marker = Path(_option("--out") or _option("--resume")) / f"paused.{os.environ.get('RANK', '0')}"
    if _calls[0] == int(os.environ["PAUSE_AT_STEP"]) and not marker.exists():
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not _signalled[0] and time.monotonic() < deadline:
            time.sleep(0.1)
    return out


def _option(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


preempt.StopRequest._handle = _handle_and_note
trainer.Trainer.run_step = _run_step_then_pause

if __name__ == "__main__":
    from fastpnr.cli import main

    main(sys.argv[1:])
