"""A ViT MoCo v3 run: 2 ranks (gloo, CPU) equal one process, and an interrupted run resumes bit for bit."""
from __future__ import annotations

import pytest

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from tests.methods.test_mocov3 import SMALL, VIT
from tests.system.test_distributed import _assert_two_ranks_equal_one_process, equivalence_overrides
from tests.train.test_continual import assert_resumed_equals_full, quiet

# 16 px images in patches of 4 (a 4 x 4 grid), 2 blocks: the ViT's every part at a test's cost
VIT_16 = {**SMALL, **VIT, "data.image_size": 16}


@pytest.mark.parametrize("reg", ["pnr", pytest.param("cassle", marks=pytest.mark.slow)])  # ~90 s each, loaded CPU
def test_two_ranks_equal_one_process_for_vit_mocov3(data_root, tmp_path, reg):
    """2 tasks x 2 steps in float64: the global batch's queries and keys on every rank, SyncBN heads, the same
    AdamW steps; the same losses, weights and accuracy matrix as one process."""
    ov = equivalence_overrides(data_root, regularizer=reg,
                               **{**VIT_16, "regularizer.distill_hidden": 16, "train.steps_per_epoch": 2})
    _assert_two_ranks_equal_one_process(ov, tmp_path, min_steps=4)


def test_interrupted_vit_mocov3_run_resumes_bit_for_bit(data_root, tmp_path):
    """Stopped after task 0's first epoch and mid-task 1: AdamW's moments and step counts, the EMA encoder and the
    frozen model come back, so the resumed run's weights and matrices are the uninterrupted run's."""
    from tests.conftest import tiny_overrides

    ov = tiny_overrides(data_root, regularizer="pnr", **{**VIT_16, "regularizer.distill_hidden": 16,
                                                          "optim.epochs": 2, "train.steps_per_epoch": 1})
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=quiet).fit()
    for stop in (1, 3):
        out = tmp_path / f"stop{stop}"
        ContinualRun(build_config("smoke", ov), out, log=quiet).fit(stop_after_epochs=stop)
        assert_resumed_equals_full(out, tmp_path / "full", full)
