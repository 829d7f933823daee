"""fastpnr linear / knn on a saved model: the run's own figure (matches_run), the official protocol, label fractions;
the run's metrics.json: mean/std over probe fits, A_T and the average incremental accuracy."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastpnr.eval import evaluation as ev
from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from fastpnr.errors import ConfigError
from fastpnr.eval.offline_eval import _eval_overrides, knn_eval, linear_eval
from fastpnr.data.task_data import TaskData
from tests.conftest import tiny_overrides
from tests.data.utils import two_class_folder_overrides


def quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def official_run(data_root, tmp_path_factory):
    """A tiny 2-task run whose matrix is filled by the official protocol (gpu loader), two feature-probe fits."""
    out = tmp_path_factory.mktemp("official-run")
    cfg = build_config("smoke", tiny_overrides(data_root, **{"eval.protocol": "official", "eval.linear_seeds": 2,
                                                         "train.precision": "fp32"}))  # bf16 convs are slow on CPU
    ContinualRun(cfg, out, log=quiet).fit()
    return out


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_run_records_mean_and_std_over_fits_and_both_average_accuracies(official_run):
    m = _metrics(official_run)
    assert m["protocol"] == "official" and m["accuracy_matrix"] == m["matrices"]["official"]
    assert m["probe_fits"] == {"linear": 2, "knn": 1, "online": 1, "official": 1}
    per_fit = np.array(m["matrices_by_fit"]["linear"])  # (fit, after task, task)
    assert per_fit.shape == (2, 2, 2)
    assert np.allclose(m["matrices"]["linear"], per_fit.mean(0))
    assert np.allclose(m["matrices_std"]["linear"], per_fit.std(0, ddof=1))
    a = m["accuracy_matrix"]
    assert m["final_average_accuracy"] == pytest.approx(np.mean(a[1]))
    assert m["average_accuracy"] == m["final_average_accuracy"]  # the old key, kept for old readers
    assert m["average_incremental_accuracy"] == pytest.approx((a[0][0] + np.mean(a[1])) / 2)


def test_offline_linear_and_knn_reproduce_the_run_exactly(official_run, data_root):
    m = _metrics(official_run)
    for task in (0, 1):
        lin = linear_eval(str(official_run / f"task{task}.pt"), progress=False)
        assert lin["per_task_accuracy"] == m["matrices"]["linear"][task]
        assert lin["test_accuracy"] == m["test_accuracy_by_protocol"]["linear"][task]
        assert lin["matches_run"] is True and lin["run_test_accuracy"] == lin["test_accuracy"]
        assert lin["seeds"] == [ev.eval_seed(5, task, 0), ev.eval_seed(5, task, 1)] and lin["fits"] == 2
        assert lin["per_task_accuracy_std"] == pytest.approx(m["matrices_std"]["linear"][task])
    knn = knn_eval(str(official_run / "task1.pt"))
    assert knn["per_task_accuracy"] == m["matrices"]["knn"][1] and knn["matches_run"] is True
    off = linear_eval(str(official_run / "task1.pt"), mode="official", progress=False)
    assert off["protocol"] == "official" and off["lr"] == ev.OFFICIAL_LINEAR_LR["simclr"]
    assert off["per_task_accuracy"] == m["matrices"]["official"][1] and off["matches_run"] is True
    changed = linear_eval(str(official_run / "task1.pt"), epochs=1, progress=False)
    assert changed["options_differing_from_run"] == {"linear_epochs": [2, 1]}
    assert changed["run_test_accuracy"] == m["test_accuracy_by_protocol"]["linear"][1]


def test_offline_label_fraction_is_stratified_per_class(official_run, data_root):
    run = TaskData(build_config("smoke", tiny_overrides(data_root)), log=quiet)
    counts = np.bincount(run.train_set.labels[run.eval_train])
    expected = sum(max(1, int(round(c * 0.1))) for c in counts if c)
    r = linear_eval(str(official_run / "task1.pt"), label_fraction=0.1, seeds=1, progress=False)
    assert r["train_images"] == expected < len(run.eval_train) and r["label_fraction"] == 0.1
    assert r["options_differing_from_run"] == {"label_fraction": [1.0, 0.1], "linear_seeds": [2, 1]}


@pytest.mark.parametrize("kind", ["gpu", "dali"])
def test_official_loader_gets_decoded_images_or_the_jpeg_bytes(tmp_path, monkeypatch, kind):
    """DALI decodes the JPEGs itself: the official probe must hand it the encoded train set, not the decoded one."""
    import loaders

    seen = {}

    def fake_make_loader(k, source, **kw):
        seen.update(kind=k, source=source, **kw)
        return _NoBatches()

    monkeypatch.setattr(loaders, "make_loader", fake_make_loader)
    run = TaskData(build_config("smoke", two_class_folder_overrides(tmp_path, **{"data.loader": kind})), log=quiet)
    run.official_loader(run.eval_train, seed=3)
    assert seen["kind"] == kind and seen["batch_size"] == min(256, len(run.eval_train)) and seen["seed"] == 3
    first = int(run.eval_train[0])
    if kind == "dali":
        assert seen["source"].encoded(first)[:2] == b"\xff\xd8"  # JPEG bytes
    else:
        assert seen["source"] is run.train_set and seen["source"].images is not None
    view = seen["view_configs"][0]
    assert view.crop_scale == (0.08, 1.0) and view.interpolation == "bicubic" and view.flip_prob == 0.5
    assert not view.jitters and view.grayscale_prob == view.blur_prob == view.solarize_prob == 0


class _NoBatches:
    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0


def test_official_protocol_in_the_loop_on_the_dali_loader_cpu(tmp_path):
    pytest.importorskip("nvidia.dali")
    ov = two_class_folder_overrides(tmp_path, **{"data.loader": "dali", "eval.protocol": "official", "data.num_workers": 1,
                                             "data.image_size": None, "data.crop_size": 16, "train.precision": "fp32"})
    metrics = ContinualRun(build_config("smoke", ov), tmp_path / "run", log=quiet).fit()
    assert len(metrics["matrices"]["official"]) == 2 and metrics["accuracy_matrix"] == metrics["matrices"]["official"]
    off = linear_eval(str(tmp_path / "run" / "task1.pt"), mode="official", progress=False)
    assert off["matches_run"] is True


def test_options_a_mode_does_not_take_and_new_config_fields_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"momentum=0.9 is invalid; allowed: unset with --mode features"):
        _eval_overrides("features", {"momentum": 0.9})
    assert _eval_overrides("official", {"epochs": 5, "lr": None, "label_fraction": 0.01}) == \
        {"official_epochs": 5, "label_fraction": 0.01}
    for field, bad in (("eval.linear_seeds", 0), ("eval.label_fraction", 0.0), ("eval.official_lr", -1.0),
                       ("eval.protocol", "offline")):
        with pytest.raises(ConfigError, match=f"{field}="):
            build_config("smoke", {field: bad})
    for preset in ("imagenet100-5t", "imagenet100-data-5t", "domainnet-6t"):
        assert build_config(preset).eval.protocol == "official"
    assert build_config("smoke").eval.linear_seeds == 1 and build_config("cifar100-5t").eval.linear_seeds == 3
