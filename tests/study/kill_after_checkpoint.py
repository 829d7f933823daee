"""`python -m fastpnr train ...` that SIGKILLs itself right after its first checkpoint (mid-task with several epochs,
else after task 0): a cell killed, with or without its study, in the middle of its run. The study tests launch cells
with it."""
import os
import signal
import sys

from fastpnr.train import continual

_save = continual.ContinualRun._save


def _save_then_die(self, next_task, next_epoch, *args, **kwargs):
    _save(self, next_task, next_epoch, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


continual.ContinualRun._save = _save_then_die

if __name__ == "__main__":
    from fastpnr.cli import main

    main(sys.argv[1:])
