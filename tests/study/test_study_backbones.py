"""fastpnr study with a backbone axis (--backbones resnet18,vit_tiny): cell names, each cell's --model.backbone,
report rows per method and backbone, one-line errors."""
from __future__ import annotations

import json

import pytest

from fastpnr.cli import main as fastpnr
from fastpnr.study import runner as study
from tests.study.test_study import _cli, _report, fake_train  # noqa: F401 - the fixture


def test_grid_names_and_overrides_carry_the_backbone():
    cells = study.make_grid(["smoke"], None, ["mocov3"], ["finetune", "pnr"], [5], backbones=["resnet18", "vit_tiny"])
    assert [c.name for c in cells] == ["resnet18-mocov3-finetune-s5", "resnet18-mocov3-pnr-s5",
                                       "vit_tiny-mocov3-finetune-s5", "vit_tiny-mocov3-pnr-s5"]
    assert cells[2].overrides({"model.patch_size": 4})["model.backbone"] == "vit_tiny"
    one = study.make_grid(["smoke"], None, ["simclr"], ["pnr"], [5], backbones=["vit_tiny"])
    assert one[0].name == "simclr-pnr-s5" and one[0].backbone == "vit_tiny"  # one backbone: no prefix
    plain = study.make_grid(["smoke"], None, ["simclr"], ["pnr"], [5])
    assert plain[0].backbone is None and "backbone" not in plain[0].to_dict()  # old study.json files unchanged


def test_a_study_mixes_backbones_and_reports_each_method_per_backbone(fake_train, tmp_path):  # noqa: F811
    out = tmp_path / "s"
    fastpnr(_cli("--methods", "mocov3", "--regularizers", "finetune,pnr", "--backbones", "resnet18,vit_tiny",
                 "--model.patch_size", 4, "--out", out))
    report = _report(out)
    assert {c["name"]: c["status"] for c in report["cells"]} == {
        f"{b}-mocov3-{r}-s5": "done" for b in ("resnet18", "vit_tiny") for r in ("finetune", "pnr")}
    args = json.loads((out / "vit_tiny-mocov3-pnr-s5" / "fake.json").read_text())["args"]
    assert args[args.index("--model.backbone") + 1] == "vit_tiny" and "--model.patch_size" in args
    rows = {(r["method"], r["regularizer"]): r for r in report["table"]}
    assert set(rows) == {(f"mocov3 ({b})", r) for b in ("resnet18", "vit_tiny") for r in ("finetune", "pnr")}
    assert rows[("mocov3 (vit_tiny)", "pnr")]["diff_to_finetune"] is not None  # against the same backbone's


@pytest.mark.parametrize("args,needle", [
    (["--backbones", "vit_huge"], "backbones='vit_huge' is invalid; allowed: resnet18, resnet50, vit_base"),
    (["--model.backbone", "vit_tiny"], "option --model.backbone is set by the study grid; allowed: --backbones"),
])
def test_bad_backbones_are_one_line(fake_train, tmp_path, capsys, args, needle):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        fastpnr(_cli("--out", tmp_path / "s", *args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1
