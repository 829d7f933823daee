"""The anchors' momentum classifier (--momentum_classifier, MoCo and BYOL scripts): an online probe on the EMA
backbone's features, trained in the step with the online probe and evaluated after each task (``momentum_online``)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from tests.conftest import tiny_overrides
from tests.train.test_graph_step import _batches, _build


def test_momentum_classifier_defaults_follow_the_anchor_scripts():
    for name, expected in (("mocov2plus", True), ("byol", True), ("simclr", None), ("byol_gsg", None)):
        cfg = build_config("cifar100-5t", {"method": name})
        assert getattr(cfg.method, "momentum_classifier", None) == expected, name
    off = build_config("cifar100-5t", {"method": "byol", "method.momentum_classifier": False})
    assert off.method.momentum_classifier is False


@pytest.mark.parametrize("name, probe", [("byol", "full"), ("mocov2plus", "task")])
def test_momentum_probe_loss_is_cross_entropy_on_detached_ema_features(name, probe):
    trainer, optim_cfg = _build(name, "finetune", cuda_graph=True, probe=probe)  # CPU: GraphStep's eager path
    m = trainer.method
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["momentum_classifier"]["lr"] == optim_cfg.classifier_lr
    assert groups["momentum_classifier"]["weight_decay"] == 0.0
    views, labels, pb = _batches(1, probe)[0]
    ref = copy.deepcopy(m).train()
    with torch.no_grad():  # restatement: the EMA backbone in train mode on the probe images (task: view 0)
        x = views[0] if pb[0] is None else pb[0]
        expected = F.cross_entropy(ref.momentum_classifier(ref.momentum_backbone(x)), pb[1])
    ema_before = [p.detach().clone() for p in m.momentum_backbone.parameters()]
    head_before = [p.detach().clone() for p in m.momentum_classifier.parameters()]
    logs = trainer.run_step(views, labels, pb, 0, 10)
    torch.testing.assert_close(logs["momentum_probe"], expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logs["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(head_before, m.momentum_classifier.parameters()))
    # no gradient reaches the EMA backbone: after step 0 the anchors' EMA makes no update either
    assert all(torch.equal(a, b) for a, b in zip(ema_before, m.momentum_backbone.parameters()))


def test_momentum_classifier_off_or_probe_off_trains_no_momentum_probe():
    trainer, _ = _build("byol", "finetune", cuda_graph=False, probe="off")
    views, labels, pb = _batches(1, "off")[0]
    assert "momentum_probe" not in trainer.run_step(views, labels, pb, 0, 10)
    from fastpnr.config import ModelConfig
    from fastpnr.methods import build_method
    from fastpnr.methods import BYOLConfig

    m = build_method(BYOLConfig(name="byol", proj_hidden=8, proj_out=8, pred_hidden=8, momentum_classifier=False),
                     ModelConfig(), 10)
    assert m.momentum_classifier is None and "momentum_classifier" not in {g["name"] for g in m.param_groups(
        build_config("smoke").optim)}


@pytest.mark.parametrize("probe, expected", [("task", {"linear", "knn", "online", "momentum_online"}),
                                             ("off", {"linear", "knn"})])
def test_metrics_hold_momentum_online_where_the_probes_are_trained(data_root, tmp_path, probe, expected):
    ov = tiny_overrides(data_root, method="byol", regularizer="finetune", **{"method.pred_hidden": 32,
                                                                              "train.online_probe": probe})
    run = ContinualRun(build_config("smoke", ov), tmp_path, log=lambda *a, **k: None)
    run.fit()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m["matrices"]) == expected
    for name in expected:
        assert len(m["matrices"][name]) == 2 and all(0 <= a <= 100 for row in m["matrices"][name] for a in row)
