"""Stand-in for `python -m fastpnr train` in the study tests: writes a run folder with a known accuracy matrix.

The matrix of (regularizer, seed) is [[b + 20, b - 30], [b, b + 10]], b = 50 (finetune) or 60 (others) + 10 (seed - 5):
A_T = b + 5, average incremental accuracy = b + 12.5, forgetting = 20. A method named in $FAKE_FAIL_METHOD fails
with a one-line `error:` as the real CLI does. No torch import: these tests cost milliseconds per cell.
"""
import json
import os
import sys
import time
from pathlib import Path


def option(args, name):
    return args[args.index(name) + 1] if name in args else None


def rendezvous(name: str, timeout_s: float = 60.0) -> None:
    """With $FAKE_RENDEZVOUS_DIR and $FAKE_RENDEZVOUS_N: announce this cell there, then wait until N cells have
    (or timeout_s), so that cells run side by side whenever the runner starts them side by side, however loaded the
    machine (a plain sleep raced the other cell's interpreter start)."""
    where, n = os.environ.get("FAKE_RENDEZVOUS_DIR"), int(os.environ.get("FAKE_RENDEZVOUS_N", "0"))
    if not where or n < 2:
        return
    Path(where).mkdir(parents=True, exist_ok=True)
    (Path(where) / name).write_text("started")
    deadline = time.time() + timeout_s
    while len(list(Path(where).iterdir())) < n and time.time() < deadline:
        time.sleep(0.01)


def main(args):
    folder = Path(option(args, "--resume") or option(args, "--out"))
    cfg = json.loads((folder / "config.json").read_text()) if "--resume" in args else {
        "data": {"dataset": "cifar10", "scenario": "class", "num_tasks": 2},
        "method": {"name": option(args, "--method")}, "regularizer": {"name": option(args, "--regularizer")},
        "train": {"seed": int(option(args, "--seed"))}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    start = time.time()
    rendezvous(folder.name)
    time.sleep(0.3)
    (folder / "fake.json").write_text(json.dumps({"start": start, "end": time.time(), "args": args,
                                                  "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                                  "omp": os.environ.get("OMP_NUM_THREADS")}))
    if cfg["method"]["name"] == os.environ.get("FAKE_FAIL_METHOD"):
        print("Traceback (most recent call last):\nerror: boom in " + cfg["method"]["name"], file=sys.stderr)
        sys.exit(2)
    b = (50 if cfg["regularizer"]["name"] == "finetune" else 60) + 10 * (cfg["train"]["seed"] - 5)
    matrix = [[b + 20, b - 30], [b, b + 10]]
    (folder / "metrics.json").write_text(json.dumps({
        "protocol": "linear", "num_tasks": 2, "accuracy_matrix": matrix, "matrices": {"linear": matrix},
        "test_accuracy_by_protocol": {"linear": [b, b + 5]}, "images_per_second": [100.0, 300.0], "task_time_s": [1, 1]}))


if __name__ == "__main__":
    main(sys.argv[2:])  # argv[1] is "train"
