"""A torchrun worker for tests/test_distributed.py's elastic-restart test: ``fastpnr train ARGS``, except that in
torchrun's first attempt rank 1 kills itself (SIGKILL) at step 3, after writing the file named by $DIE_MARKER."""
import os
import signal
import sys
from pathlib import Path

from fastpnr import trainer
from fastpnr.cli import main

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("RANK") == "1":
    run_step = trainer.Trainer.run_step

    def die_at_step_3(self, views, labels, probe, step, total):
        if step == 3:
            Path(os.environ["DIE_MARKER"]).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return run_step(self, views, labels, probe, step, total)

    trainer.Trainer.run_step = die_at_step_3

main(["train", *sys.argv[1:]])
