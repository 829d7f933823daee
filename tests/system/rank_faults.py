"""Fault injection for tests/system/test_distributed.py: a rank that SIGKILLs itself at a given training step.

Run as a module (``torchrun -m tests.system.rank_faults ARGS``) it is ``fastpnr train ARGS`` whose rank 1 dies at step 3 in
torchrun's first attempt (the elastic-restart test), after writing the file named by $DIE_MARKER.
"""
import os
import signal
import sys
import time
from pathlib import Path


def die_at_step(die_at: int, marker) -> None:
    """This process kills itself (SIGKILL) when the trainer reaches step ``die_at``, after writing the time into
    ``marker``."""
    from fastpnr.train import trainer

    run_step = trainer.Trainer.run_step

    def maybe_die(self, views, labels, probe, step, total):
        if step == die_at:
            Path(marker).write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return run_step(self, views, labels, probe, step, total)

    trainer.Trainer.run_step = maybe_die


if __name__ == "__main__":
    from fastpnr.cli import main

    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("RANK") == "1":
        die_at_step(3, os.environ["DIE_MARKER"])
    main(["train", *sys.argv[1:]])
