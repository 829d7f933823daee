"""End-to-end continual runs on real CIFAR-10 (CPU): all method x strategy pairs, metrics files, resume, accuracy."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastpnr.config import build_config, config_warnings
from fastpnr.train.continual import ContinualRun, resume_run
from fastpnr.errors import ConfigError
from tests.conftest import tiny_overrides
from tests.data.utils import two_class_folder_overrides

BASE_METHODS = ["simclr", "mocov2plus", "byol", "simsiam", "barlow", "vicreg"]


def _method_extra(method: str, reg: str) -> dict:
    extra = {}
    if method == "mocov2plus":
        extra["method.queue_size"] = 64
    if method in ("byol", "simsiam") or "gsg" in method:
        extra["method.pred_hidden"] = 32
    if reg in ("cassle", "pnr"):
        extra["regularizer.distill_hidden"] = 32
    if reg in ("er", "lump"):
        extra["regularizer.buffer_size"] = 16  # a tiny task 0 streams 2 steps x 16 images per epoch
    return extra


def quiet(*_a, **_k):
    pass


@pytest.mark.parametrize("reg", ["finetune", "cassle", "pnr", "pfr"])
@pytest.mark.parametrize("method", BASE_METHODS)
def test_every_method_and_strategy_runs_two_tasks(data_root, tmp_path, method, reg):
    cfg = build_config("smoke", tiny_overrides(data_root, method=method, regularizer=reg, **_method_extra(method, reg)))
    run = ContinualRun(cfg, tmp_path, log=quiet)
    metrics = run.fit()
    matrix = metrics["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(r) == 2 for r in matrix)
    assert all(math.isfinite(a) and 0 <= a <= 100 for r in matrix for a in r)
    assert run.regularizer.active == (reg != "finetune")
    if reg != "finetune":
        # The frozen model is the task-0 model: it differs from the current model after task 1's steps.
        frozen = dict(run.regularizer.frozen.backbone.named_parameters())
        diff = sum((p - frozen[n]).abs().sum().item() for n, p in run.method.backbone.named_parameters())
        assert diff > 0
        assert all(not p.requires_grad for p in run.regularizer.frozen.parameters())


@pytest.mark.parametrize("method,reg,replay", [("simclr", "er", None), ("byol", "lump", None), ("barlow", "cassle", "er"),
                                               ("simclr", "pnr", "er"), ("vicreg", "pfr", "lump")])
def test_replay_alone_and_with_a_frozen_model_strategy_runs_two_tasks(data_root, tmp_path, method, reg, replay):
    """ER and LUMP, and replay added to CaSSLe, PNR and PFR: the buffer streams every trained image of both tasks
    (2 tasks x 2 steps x 16) and holds indices of their training images only."""
    extra = {**_method_extra(method, reg), "regularizer.buffer_size": 16}
    if replay:
        extra["regularizer.replay"] = replay
    run = ContinualRun(build_config("smoke", tiny_overrides(data_root, method=method, regularizer=reg, **extra)), tmp_path,
                       log=quiet)
    metrics = run.fit()
    assert len(metrics["accuracy_matrix"]) == 2
    buf = run.regularizer.replay_buffer
    assert buf.seen_host == int(buf.seen) == 2 * 2 * 16 and buf.filled() == 16
    trained = set(np.concatenate(run.data.task_train).tolist())
    assert set(buf.slots.tolist()) <= trained
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["regularizer"]
    assert torch.equal(ckpt["replay_buffer.slots"], buf.slots)


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_pocon_runs_two_tasks_with_an_expert_per_task(data_root, tmp_path, method):
    cfg = build_config("smoke", tiny_overrides(data_root, method=method, regularizer="pocon", **_method_extra(method, "pocon")))
    run = ContinualRun(cfg, tmp_path, log=quiet)
    assert len(run.fit()["accuracy_matrix"]) == 2
    reg = run.regularizer
    assert reg._has_old_host and bool(reg.has_old)
    # task 1: the expert started from the task-0 main backbone (= old_backbone) and trained on; the main network
    # trained from it in the main phase: all three differ
    params = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()])  # noqa: E731
    main, expert, old = params(run.method.backbone), params(reg.expert.backbone), params(reg.old_backbone)
    assert not torch.equal(main, old) and not torch.equal(expert, old) and not torch.equal(main, expert)
    assert all(not p.requires_grad for p in [*reg.old_backbone.parameters(), *reg.expert_frozen.parameters()])


@pytest.mark.slow
def test_pocon_phases_checkpoint_and_resume_at_boundaries_and_inside(data_root, tmp_path):
    """POCON with optim.epochs 2: task 0 = 2 expert + 2 main epochs, task 1 = 2 + 1. The expert phase leaves the main
    network untouched; kills at a phase boundary (after epoch 2, after epoch 6 = task 1's boundary) and inside the
    main phase (after epoch 3) resume to the uninterrupted run's matrices and weights."""
    ov = tiny_overrides(data_root, method="barlow", regularizer="pocon", **{"optim.epochs": 2})
    lines = []
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=lines.append).fit()
    epochs = [s.split(" | ")[0] for s in lines if s.startswith("task ") and " epoch " in s]
    phases = ["expert", "expert", "main", "main", "expert", "expert", "main"]  # the progress lines name the phase
    labels = [f"task 0 (1/2) epoch {e}/4" for e in range(1, 5)] + [f"task 1 (2/2) epoch {e}/3" for e in range(1, 4)]
    assert epochs == [f"{label} ({phase})" for label, phase in zip(labels, phases)]
    assert full["train_steps_by_task"] == [2 * 4, 2 * 3]  # train.steps_per_epoch 2: the phases' epochs count
    for stop in (2, 3, 6):
        out = tmp_path / f"stop{stop}"
        ContinualRun(build_config("smoke", ov), out, log=quiet).fit(stop_after_epochs=stop)
        ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
        assert (ckpt["next_task"], ckpt["next_epoch"]) == {2: (0, 2), 3: (0, 3), 6: (1, 2)}[stop]
        if stop == 2:  # after task 0's expert phase the main network is still its initialization (ContinualRun._build)
            from fastpnr.system.runtime import seed_everything
            from fastpnr.methods import build_method

            cfg = build_config("smoke", ov)
            seed_everything(cfg.train.seed)
            init = build_method(cfg.method, cfg.model, num_classes=10).state_dict()
            assert all(torch.equal(ckpt["method"][k], v) for k, v in init.items())
        assert_resumed_equals_full(out, tmp_path / "full", full)


def test_run_folder_holds_metrics_csv_png_tensorboard_and_tasks(data_root, tmp_path):
    # the preset's bf16 autocast end to end (the other tiny runs use fp32, which is several times faster on CPU)
    cfg = build_config("smoke", tiny_overrides(data_root, regularizer="pnr", **{"regularizer.distill_hidden": 32,
                                                                               "eval.forward_transfer": True,
                                                                               "train.precision": "bf16",
                                                                               "model.width": 8}))
    ContinualRun(cfg, tmp_path, log=quiet).fit()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["accuracy_matrix"]) == 2 and len(m["accuracy_matrix"][1]) == 2
    assert m["train_steps_by_task"] == [2 * cfg.optim.epochs] * 2  # train.steps_per_epoch 2 (a study's ETA)
    assert set(m["matrices"]) == {"linear", "knn", "online"}
    assert "average_accuracy" in m and "forgetting" in m and m["num_corrupt"] == 0
    assert set(m["random_init_accuracy"]) == {"linear", "knn", "online"}
    b = m["random_init_accuracy"]["linear"]
    assert m["forward_transfer"] == pytest.approx(m["accuracy_matrix"][0][1] - b[1])
    rows = (tmp_path / "accuracy_matrix.csv").read_text().strip().splitlines()
    assert rows[0] == "after_task,task0,task1" and len(rows) == 3
    assert (tmp_path / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tb").iterdir())
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks["scenario"] == "class"
    for t in (0, 1):
        assert (tmp_path / f"task{t}.pt").exists()


def test_frozen_model_is_previous_task_model_and_stays_frozen(data_root, tmp_path):
    cfg = build_config("smoke", tiny_overrides(data_root, regularizer="pnr", **{"regularizer.distill_hidden": 32}))
    ContinualRun(cfg, tmp_path, log=quiet).fit()
    task0 = torch.load(tmp_path / "task0.pt", weights_only=False)["method"]
    final = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["regularizer"]
    for name, value in task0.items():
        if name.startswith(("backbone.", "projector.")) and "running" not in name and "num_batches" not in name:
            assert torch.equal(final[f"frozen.{name}"], value), name  # snapshot == end of task 0, unchanged since


def assert_resumed_equals_full(out, full_dir, full: dict) -> dict:
    """Resume the run in `out`; its matrices and final weights must equal the uninterrupted run's in `full_dir`."""
    resumed = resume_run(out, log=quiet)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"] and resumed["matrices"] == full["matrices"]
    a = torch.load(full_dir / "task1.pt", weights_only=False)["method"]
    b = torch.load(out / "task1.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return resumed


@pytest.mark.slow
@pytest.mark.parametrize("reg", ["pnr", "pfr", "er", "lump"])
def test_interrupted_and_resumed_run_equals_uninterrupted(data_root, tmp_path, reg):
    ov = tiny_overrides(data_root, regularizer=reg, **_method_extra("simclr", reg), **{"optim.epochs": 2,
                                                                                     "train.online_probe": "full"})
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=quiet).fit()
    for stop in (1, 3):  # mid-task (after epoch 1 of task 0) and mid-task 1
        out = tmp_path / f"stop{stop}"
        ContinualRun(build_config("smoke", ov), out, log=quiet).fit(stop_after_epochs=stop)
        assert not (out / "metrics.json").exists() or len(json.loads((out / "metrics.json").read_text())["accuracy_matrix"]) < 2
        assert_resumed_equals_full(out, tmp_path / "full", full)


@pytest.mark.slow
def test_kill_during_evaluation_resumes_into_the_evaluation(data_root, tmp_path):
    """The checkpoint written when a task's training ends (before its evaluation) resumes into that evaluation and
    ends like an uninterrupted run; without a bar, every epoch and evaluation phase prints a line."""
    ov = tiny_overrides(data_root, **{"optim.epochs": 1, "eval.forward_transfer": False})
    lines = []
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=lines.append).fit()
    epochs = [s for s in lines if s.startswith("task ") and " epoch " in s]
    assert [s.split(" | ")[0] for s in epochs] == ["task 0 (1/2) epoch 1/1", "task 1 (2/2) epoch 1/1"]
    assert all(" img/s | elapsed " in s and "train ETA" in s and "loss " in s for s in epochs)
    assert "evaluating task 0 (1/2): linear probe" in lines and "evaluating task 1 (2/2): kNN" in lines
    out = tmp_path / "stopped"
    ContinualRun(build_config("smoke", ov), out, log=quiet).fit(stop_before_eval=0)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["next_task"], ckpt["next_epoch"], ckpt["phase"]) == (0, 1, "evaluate")
    assert not (out / "task0.pt").exists() and ckpt["metrics"]["accuracy_matrix"] == []
    assert_resumed_equals_full(out, tmp_path / "full", full)


@pytest.mark.slow
def test_a_kill_during_the_random_init_evaluation_resumes_into_it(data_root, tmp_path, monkeypatch):
    """checkpoint.pt is written when the run starts, before the evaluation of the untrained model (forward
    transfer's reference, minutes on a large test set): a kill there resumes into that evaluation, exactly."""
    ov = tiny_overrides(data_root, **{"eval.forward_transfer": True, "train.online_probe": "full"})
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=quiet).fit()
    assert full["random_init_accuracy"]

    class Killed(BaseException):
        pass

    def killed(self):
        ckpt = torch.load(self.out / "checkpoint.pt", weights_only=False)
        assert (ckpt["next_task"], ckpt["next_epoch"], ckpt["phase"]) == (0, 0, "random_init")
        raise Killed()
    with monkeypatch.context() as m:
        m.setattr(ContinualRun, "_evaluate_random_init", killed)
        with pytest.raises(Killed):
            ContinualRun(build_config("smoke", ov), tmp_path / "stopped", log=quiet).fit()
    resumed = assert_resumed_equals_full(tmp_path / "stopped", tmp_path / "full", full)
    assert resumed["random_init_accuracy"] == full["random_init_accuracy"]


@pytest.mark.slow
def test_max_tasks_stops_after_the_first_tasks_and_resume_finishes(data_root, tmp_path):
    ov = tiny_overrides(data_root, regularizer="pnr", **{"regularizer.distill_hidden": 32, "train.max_tasks": 1})
    part = ContinualRun(build_config("smoke", ov), tmp_path, log=quiet).fit()
    assert len(part["accuracy_matrix"]) == 1
    assert (tmp_path / "task0.pt").exists() and not (tmp_path / "task1.pt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["num_tasks"] == 2
    assert resume_run(tmp_path, log=quiet)["accuracy_matrix"] == part["accuracy_matrix"]  # still capped at 1 task
    resumed = resume_run(tmp_path, {"train.max_tasks": 2}, log=quiet)  # (exact resume itself: the test above)
    assert len(resumed["accuracy_matrix"]) == 2 and resumed["accuracy_matrix"][0] == part["accuracy_matrix"][0]
    assert (tmp_path / "task1.pt").exists()


def test_max_tasks_below_one_is_a_one_line_error():
    with pytest.raises(ConfigError, match="train.max_tasks=0 is invalid"):
        build_config("smoke", {"train.max_tasks": 0})


@pytest.mark.slow
def test_two_task_run_linear_probe_clearly_above_chance(data_root, tmp_path):
    ov = tiny_overrides(data_root, **{"data.image_size": 32, "eval.train_fraction": 0.05, "data.test_fraction": 0.1,
                                      "eval.linear_epochs": 30, "optim.batch_size": 32})
    metrics = ContinualRun(build_config("smoke", ov), tmp_path, log=quiet).fit()
    assert metrics["test_accuracy"][-1] > 20.0  # chance is 10% on CIFAR-10


def test_moco_pnr_second_queue_fills_with_frozen_embeddings():
    from fastpnr.config import ModelConfig, OptimConfig, TrainConfig
    from fastpnr.methods import build_method
    from fastpnr.train.optim import build_optimizer
    from fastpnr.regularizers import build_regularizer
    from fastpnr.train.trainer import Trainer
    from fastpnr.methods import MoCoV2PlusConfig
    from fastpnr.regularizers import PNRConfig

    torch.manual_seed(0)
    method = build_method(MoCoV2PlusConfig(name="mocov2plus", proj_hidden=32, proj_out=16, queue_size=24),
                          ModelConfig(), num_classes=10)
    reg = build_regularizer(PNRConfig(distill_hidden=16), method)
    reg.begin_task(method, 1)
    optim = build_optimizer(method.param_groups(OptimConfig()) + reg.param_groups(OptimConfig()), OptimConfig())
    trainer = Trainer(method, reg, optim, TrainConfig(precision="fp32", online_probe="off"), torch.device("cpu"))
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        expected = [torch.nn.functional.normalize(reg.frozen(v), dim=-1) for v in views]  # frozen_bn=eval: deterministic
    before = reg.frozen_queue.clone()
    trainer.step(views, torch.zeros(8, dtype=torch.long), None, 0, 10)
    assert int(reg.frozen_queue_ptr) == 8
    for v in range(2):
        assert torch.allclose(reg.frozen_queue[v, :8], expected[v], atol=1e-5)  # slot v holds view v's frozen embedding
        assert torch.equal(reg.frozen_queue[v, 8:], before[v, 8:])             # the rest untouched
    # The current queue got the EMA keys, not the frozen embeddings.
    assert not torch.allclose(method.queue[0, :8], expected[0], atol=1e-3)


def test_corrupt_image_errors_or_is_skipped_and_counted(tmp_path):
    from fastpnr.errors import DataError

    ov = two_class_folder_overrides(tmp_path, (("train", 40), ("val", 12)), corrupt="train/ants/003.jpg")
    with pytest.raises(DataError, match=r"corrupt image .*ants/003.jpg"):
        ContinualRun(build_config("smoke", ov), tmp_path / "run1", log=quiet).fit()
    metrics = ContinualRun(build_config("smoke", {**ov, "data.skip_corrupt": True}), tmp_path / "run2", log=quiet).fit()
    assert metrics["num_corrupt"] == 1
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text())["num_corrupt"] == 1
    assert [m.rsplit("/", 2)[-2:] for m in metrics["corrupt_images"]] == [["ants", "003.jpg"]]  # named, not only counted


def test_data_incremental_and_domain_incremental_runs(data_root, tmp_path):
    data = ContinualRun(build_config("smoke", tiny_overrides(data_root, scenario="data")), tmp_path / "data", log=quiet).fit()
    assert len(data["accuracy_matrix"]) == 2
    ov = tiny_overrides(data_root, **{"data.image_size": 16, "data.train_fraction": 0.05, "data.test_fraction": 0.1,
                                      "eval.train_fraction": 0.05})
    dom = ContinualRun(build_config("pacs-domain", {**ov, "optim.epochs": 1}), tmp_path / "pacs", log=quiet).fit()
    assert len(dom["accuracy_matrix"]) == 4
    tasks = json.loads((tmp_path / "pacs" / "tasks.json").read_text())
    assert "photo" in json.dumps(tasks["tasks"])


@pytest.mark.slow
def test_domainnet_six_domain_run_and_per_domain_linear_eval(tmp_path):
    from fastpnr.eval.offline_eval import knn_eval, linear_eval
    from tests.data.utils import DOMAINNET_DOMAINS, domainnet_files, write_domainnet

    write_domainnet(tmp_path / "data", domainnet_files(per_class=(6, 2), size=(20, 20)))  # 18 train, 6 test per domain
    ov = tiny_overrides(tmp_path / "data", **{"data.loader": "gpu", "data.crop_size": None, "data.train_fraction": 1.0,
                                              "data.test_fraction": 1.0, "eval.train_fraction": 1.0, "optim.epochs": 1,
                                              "optim.batch_size": 8, "eval.forward_transfer": False,
                                              "regularizer.distill_hidden": 32, "data.cache_dir": str(tmp_path / "cache"),
                                              # bf16 on CPU: layer4.0.conv1's weight gradient came out non-finite at
                                              # 16 px with the ImageNet stem (a 2x2 -> 1x1 conv; 224 px gives 7x7)
                                              "train.precision": "fp32"})
    cfg = build_config("domainnet-6t", ov)
    metrics = ContinualRun(cfg, tmp_path / "run", log=quiet).fit()
    assert len(metrics["accuracy_matrix"]) == 6 and all(len(r) == 6 for r in metrics["accuracy_matrix"])
    tasks = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert tasks["scenario"] == "domain" and tasks["dataset"] == "domainnet"
    assert [t["domains"] for t in tasks["tasks"]] == [[d] for d in DOMAINNET_DOMAINS]
    assert [(t["num_train"], t["test_images"]) for t in tasks["tasks"]] == [(18, 6)] * 6
    lin = linear_eval(str(tmp_path / "run" / "task5.pt"), epochs=2, per_domain=True)
    for key in ("per_domain_accuracy", "per_domain_runs"):
        assert list(lin[key]) == list(DOMAINNET_DOMAINS) and all(0 <= a <= 100 for a in lin[key].values())
    assert list(lin["per_domain_accuracy"].values()) == lin["per_task_accuracy"]
    aug = linear_eval(str(tmp_path / "run" / "task5.pt"), mode="augmented", epochs=1, batch_size=8, per_domain=True)
    assert list(aug["per_domain_runs"]) == list(DOMAINNET_DOMAINS)
    assert list(knn_eval(str(tmp_path / "run" / "task5.pt"), k=3)["per_domain_accuracy"]) == list(DOMAINNET_DOMAINS)


def test_offline_linear_and_knn_of_a_saved_task_model(data_root, tmp_path):
    from fastpnr.eval.offline_eval import knn_eval, linear_eval

    ContinualRun(build_config("smoke", tiny_overrides(data_root)), tmp_path, log=quiet).fit()
    lin = linear_eval(str(tmp_path / "task1.pt"), epochs=2, out=str(tmp_path / "lin.json"))
    knn = knn_eval(str(tmp_path / "task1.pt"), k=5)
    for r in (lin, knn):
        assert r["task"] == 1 and len(r["per_task_accuracy"]) == 2 and 0 <= r["test_accuracy"] <= 100
    assert json.loads((tmp_path / "lin.json").read_text())["protocol"] == "linear"
    aug = linear_eval(str(tmp_path / "task1.pt"), mode="augmented", epochs=1, batch_size=16)  # the official's old name
    assert aug["protocol"] == "official"
    with pytest.raises(ConfigError, match="per_domain=True is invalid for data.scenario='class'"):
        linear_eval(str(tmp_path / "task1.pt"), epochs=1, per_domain=True)


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(data_root, tmp_path, monkeypatch):
    from fastpnr.methods.simclr import SimCLR
    from fastpnr.train.trainer import NonFiniteLossError

    ov = tiny_overrides(data_root, **{"optim.epochs": 2})
    run = ContinualRun(build_config("smoke", ov), tmp_path, log=quiet)
    real = SimCLR.ssl_loss
    calls = {"n": 0}

    def poisoned(self, out):
        calls["n"] += 1
        loss, logs = real(self, out)
        return (loss * float("nan"), logs) if calls["n"] > 2 else (loss, logs)  # epoch 0 is fine, epoch 1 is NaN

    monkeypatch.setattr(SimCLR, "ssl_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as e:
        run.fit()
    assert "non-finite loss at epoch 1" in str(e.value) and "\n" not in str(e.value)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert (ckpt["next_task"], ckpt["next_epoch"]) == (0, 1)  # the epoch-0 checkpoint survives


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ffcv", "dali"])
def test_continual_run_with_the_ffcv_and_dali_loaders(data_root, tmp_path, kind):
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[kind])
    ov = tiny_overrides(data_root, **{"data.loader": kind, "data.num_workers": 1, "data.cache_dir": str(tmp_path / "cache"),
                                      "data.image_size": None, "data.crop_size": 16})
    if kind == "ffcv":  # FFCV's own options reach the loader from the config
        ov.update({"data.ffcv_order": "quasi_random", "data.ffcv_os_cache": False, "data.ffcv_batches_ahead": 2,
                   "data.ffcv_crop": "decoder"})
    run = ContinualRun(build_config("smoke", ov), tmp_path / "run", log=quiet)
    metrics = run.fit()
    assert len(metrics["accuracy_matrix"]) == 2
    if kind == "ffcv":
        assert list((tmp_path / "cache" / "betons").glob("*.beton"))
        loader = run.data.loader(np.arange(64), 2, None, seed=0).loader  # unwrap the Prefetcher
        assert (loader.order, loader.crop) == ("quasi_random", "decoder")


def test_loss_is_the_ssl_loss_the_probe_apart_and_the_lr_in_tensorboard(data_root, tmp_path):
    """The epoch line's and TensorBoard's `loss` is the SSL + strategy loss (finetune: SimCLR's alone), the online
    probe's cross-entropy is `probe`; `train/lr` holds the scheduled rate of each epoch at its first step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastpnr.train.optim import warmup_cosine

    ov = tiny_overrides(data_root, regularizer="finetune", **{"optim.epochs": 2, "optim.warmup_epochs": 1,
                                                           "eval.forward_transfer": False, "train.online_probe": "full"})
    cfg = build_config("smoke", ov)
    metrics = ContinualRun(cfg, tmp_path, log=quiet).fit()
    epochs = metrics["train_epochs"]
    assert len(epochs) == 4 and all(e["loss"] == e["simclr"] and e["probe"] > 0 for e in epochs), epochs
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    loss, simclr = ([e.value for e in acc.Scalars(f"train/{t}")] for t in ("loss", "simclr"))
    assert loss == simclr and len(loss) == 8
    o = cfg.optim
    base = o.lr * o.batch_size / 256
    expected = [warmup_cosine(e, 2, base, 1, o.warmup_start_lr, o.min_lr) for e in (0, 1)] * 2
    assert expected[:2] == [o.warmup_start_lr, base]  # warm-up epoch, then the top of the cosine
    got = [(e.step, e.value) for e in acc.Scalars("train/lr")]
    assert [s for s, _ in got] == [1, 3, 5, 7]
    np.testing.assert_allclose([v for _, v in got], expected, rtol=2.0 ** -23)  # TensorBoard stores float32


def test_a_warm_up_as_long_as_the_task_is_one_line_before_the_data_is_read(tmp_path, monkeypatch):
    import fastpnr.data

    def read(*args, **kwargs):
        raise RuntimeError("data read")
    monkeypatch.setattr(fastpnr.data, "load_dataset", read)
    lines = []
    cfg = build_config("pacs-domain", {"optim.epochs": 1, "data.data_dir": str(tmp_path)})
    with pytest.raises(RuntimeError, match="data read"):
        ContinualRun(cfg, tmp_path / "run", log=lines.append).fit()
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == ["warning: optim.warmup_epochs=10 >= optim.epochs=1: every epoch of a task is in the linear "
                        "warm-up (the lr never reaches optim.lr nor decays); set --optim.warmup_epochs below 1 (e.g. 0)"]
    assert build_config("pacs-domain", {"optim.epochs": 11}) and not config_warnings(build_config("pacs-domain", {"optim.epochs": 11}))
