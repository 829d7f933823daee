"""``python -m fastpnr <command> ...``: the ``fastpnr`` console script without installing (e.g. on a GPU machine that
gets the source tree and ``PYTHONPATH`` only)."""
from .cli import main

main()
