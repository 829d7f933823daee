"""`fastpnr train --config FILE`: a run's config.json (or YAML) trains the same configuration again; keys and
values are checked as the command line's are, and a bad file is one line naming the file and the key or line."""
from __future__ import annotations

import json
import sys

import pytest

from fastpnr.config import PRESETS, build_config
from fastpnr.train.continual import ContinualRun
from fastpnr.errors import ConfigError, FastPNRError
from scripts import train as train_script
from tests.conftest import tiny_overrides


def quiet(*_a, **_k):
    pass


def _write(path, text: str):
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory):
    """A finished tiny run (fp32, width 16) and its configuration; one thread, so that a rerun sums in the same
    order whatever the machine's load (the suite picks 1 or 2 threads per test by load)."""
    out = tmp_path_factory.mktemp("run")
    cfg = build_config("smoke", tiny_overrides(data_root, **{"optim.lr": 0.2, "regularizer.distill_hidden": 32,
                                                              "train.threads": 1}))
    metrics = ContinualRun(cfg, out, log=quiet).fit()
    return out, cfg, metrics


def test_a_runs_config_json_resolves_to_the_same_configuration(tiny_run):
    out, cfg, _ = tiny_run
    again = build_config(None, {}, config_file=str(out / "config.json"))
    assert again == cfg
    assert json.loads(json.dumps(again.to_dict())) == json.loads((out / "config.json").read_text())  # tuples: lists
    # laid over a preset, a complete file leaves nothing of the preset
    assert build_config("cifar100-5t", {}, config_file=str(out / "config.json")) == cfg


def test_yaml_file_equals_the_json_file(tiny_run, tmp_path):
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    out, cfg, _ = tiny_run
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads((out / "config.json").read_text())))
    assert build_config(None, {}, config_file=str(path)) == cfg


@pytest.mark.slow
def test_a_runs_config_json_trains_the_same_run_again(tiny_run, tmp_path):
    """Through the command's own path: the second run writes the same config.json and, on CPU, the same numbers."""
    out, cfg, metrics = tiny_run
    train_script.main(config=str(out / "config.json"), out=str(tmp_path / "again"))
    first, second = (json.loads((d / "config.json").read_text()) for d in (out, tmp_path / "again"))
    first.pop("out"), second.pop("out")
    assert second == first
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["accuracy_matrix"] == metrics["accuracy_matrix"]


def test_options_override_the_file_and_the_file_overlays_the_preset(tmp_path):
    path = _write(tmp_path / "c.json", json.dumps({"optim": {"lr": 0.25, "epochs": 3}, "method": {"name": "byol"}}))
    cfg = build_config("smoke", {"optim.epochs": 2}, config_file=path)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.method.name) == (0.25, 2, "byol")
    smoke = PRESETS["smoke"]
    assert cfg.data.num_tasks == smoke["data"]["num_tasks"]          # from the preset
    assert cfg.optim.weight_decay == smoke["per_method"]["byol"]["optim"]["weight_decay"]  # the preset's byol block
    bare = build_config(None, {}, config_file=path)                 # no preset: the dataclass defaults
    assert bare.data.num_tasks == 5 and bare.optim.epochs == 3


@pytest.mark.parametrize("content,expected", [
    ('{"data": {"num_tasks": 2, "bogus": 1}}', "key data.bogus is not a field of section data; allowed: "),
    ('{"optimizer": {"lr": 1}}', "key 'optimizer' is not known; allowed at the top: data, model, optim"),
    ('{"method": {"name": "byol", "temperature": 0.1}}', "key method.temperature is not a field of method byol"),
    ('{"optim": 0.1}', "optim holds 0.1; allowed: a mapping of optim's fields"),
    ('[1, 2]', "holds a list; allowed: a mapping of sections"),
    ('{"data": {"num_tasks": 2,\n  "scenario": }}', "line 2 does not parse as JSON"),
    ('{"data": {"num_tasks": "two"}}', "data.num_tasks='two' is invalid; allowed: a value of type int"),
    ('{"optim": {"lr": -1}}', "optim.lr=-1.0 is invalid; allowed: > 0"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key_or_line(tmp_path, content, expected):
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(ConfigError) as e:
        build_config(None, {}, config_file=path)
    msg = str(e.value)
    assert msg.startswith(f"--config {path}: ") and expected in msg and "\n" not in msg, msg


def test_yaml_parse_error_names_the_line(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    path = _write(tmp_path / "bad.yaml", "data:\n  num_tasks: 2\n  scenario: [class\noptim: {lr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 4 does not parse as YAML"):
        build_config(None, {}, config_file=path)


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    path = _write(tmp_path / "c.yml", "optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        build_config(None, {}, config_file=path)
    assert "pip install pyyaml" in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert build_config(None, {}, config_file=_write(tmp_path / "c.json", '{"optim": {"lr": 0.1}}')).optim.lr == 0.1


def test_an_error_in_an_option_is_not_blamed_on_the_file(tmp_path):
    path = _write(tmp_path / "c.json", '{"optim": {"lr": -1}}')
    with pytest.raises(ConfigError) as e:
        build_config(None, {"optim.lr": "x"}, config_file=path)
    assert str(e.value).startswith("optim.lr='x' is invalid")
    with pytest.raises(ConfigError, match=r"^--config .*: no such file$"):
        build_config(None, {}, config_file=str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match=r"allowed: a file ending in \.json, \.yaml, \.yml"):
        build_config(None, {}, config_file=_write(tmp_path / "c.txt", "{}"))


def test_config_with_resume_is_refused_in_one_line(tmp_path):
    path = _write(tmp_path / "c.json", "{}")
    with pytest.raises(FastPNRError, match="^--config cannot be combined with --resume"):
        train_script.main(resume=str(tmp_path), config=path)


def test_the_command_prints_one_line_and_exits_2_for_a_bad_file(tmp_path):
    import os
    import subprocess

    path = _write(tmp_path / "c.json", '{"data": {"num_tasks": 2},\n "train": {"bogus": true}}')
    out = subprocess.run([sys.executable, "-m", "fastpnr", "train", "--config", path, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 2 and out.stderr.strip().startswith(f"error: --config {path}: key train.bogus is not")
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
