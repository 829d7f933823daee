"""train.compile: the online backbone compiled in place with torch.compile (CPU: the eager backend, which traces the
model with dynamo exactly as inductor would be fed, without inductor's minutes of C++ builds on this machine)."""
import copy

import pytest
import torch

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from fastpnr.errors import ConfigError
from fastpnr.methods import build_method
from fastpnr.train.trainer import compile_backbone
from tests.conftest import tiny_overrides


def quiet(*_):
    pass


@pytest.mark.slow
def test_compiled_run_matches_the_uncompiled_run(data_root, tmp_path):
    runs = {}
    for mode in ("off", "default"):
        ov = tiny_overrides(data_root, **{"train.compile": mode, "train.compile_backend": "eager",
                                          "train.precision": "fp32", "eval.forward_transfer": False})
        run = ContinualRun(build_config("smoke", ov), tmp_path / mode, log=quiet)
        runs[mode] = (run, run.fit())
    compiled, plain = runs["default"][0], runs["off"][0]
    assert compiled.method.backbone._compiled_call_impl is not None
    assert plain.method.backbone._compiled_call_impl is None
    # the same trajectory: dynamo's graph runs the same ops in the same order
    assert runs["default"][1]["accuracy_matrix"] == runs["off"][1]["accuracy_matrix"]
    for (name, a), (_, b) in zip(compiled.method.state_dict().items(), plain.method.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    # Module.compile works in place: checkpoints keep the plain parameter names
    ckpt = torch.load(tmp_path / "default" / "checkpoint.pt", weights_only=False)
    assert not any("_orig_mod" in k for k in ckpt["method"])


def test_frozen_copy_of_a_compiled_backbone_keeps_its_own_weights():
    cfg = build_config("smoke", {"train.compile": "default", "train.compile_backend": "eager",
                                 "method.proj_hidden": 32, "method.proj_out": 16})
    method = build_method(cfg.method, cfg.model, num_classes=10)
    assert compile_backbone(method, cfg.train)
    x = torch.randn(2, 3, 16, 16)
    frozen = method.frozen_copy()
    before = frozen(x).detach().clone()
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.5)
    torch.testing.assert_close(frozen(x), before)  # the copy does not call the online module's compiled forward
    assert not torch.allclose(method.projector(method.backbone(x)), before)
    assert copy.deepcopy(method.backbone)(x).shape == (2, method.feat_dim)


def test_compile_off_leaves_the_module_alone():
    cfg = build_config("smoke", {"method.proj_hidden": 32, "method.proj_out": 16})
    method = build_method(cfg.method, cfg.model, num_classes=10)
    assert not compile_backbone(method, cfg.train)
    assert method.backbone._compiled_call_impl is None


@pytest.mark.parametrize("overrides,needle", [
    ({"train.compile": "max-autotune"}, "train.compile='max-autotune' is invalid; allowed: off, default"),
    ({"train.compile": "max-autotune-no-cudagraphs", "train.compile_backend": "eager"},
     "allowed: default with train.compile_backend='eager'"),
])
def test_bad_compile_options_fail_with_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config("smoke", overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)
