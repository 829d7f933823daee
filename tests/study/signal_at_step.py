"""`python -m fastpnr train ...` that sends itself SIGTERM during its step number $SIGNAL_AT_STEP (counted from 1
over the whole run), as a scheduler does before it stops a job: the run must write its checkpoint after that step
and exit with preempt.EXIT_CHECKPOINTED. The study and Slurm tests launch cells with it."""
import os
import signal
import sys

from fastpnr.train import trainer

_run_step = trainer.Trainer.run_step
_calls = [0]


def _run_step_then_signal(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ["SIGNAL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once; the loop reads it after this step
    return _run_step(self, *args, **kwargs)


trainer.Trainer.run_step = _run_step_then_signal

if __name__ == "__main__":
    from fastpnr.cli import main

    main(sys.argv[1:])
