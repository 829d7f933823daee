"""`--help` of every command: clean (stdout, exit 0, no fire "INFO:" line), generated from the code, complete."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Optional

import pytest

from fastpnr import cli, helptext
from fastpnr.config import PRECISIONS, PROBES, SECTIONS
from fastpnr.errors import require
from fastpnr.methods import METHODS
from fastpnr.regularizers import REGULARIZERS


def _all_config_classes():
    """(section, dataclass) of every configuration: the sections, each method's and each regularizer's config."""
    return ([(name, cls) for name, cls in SECTIONS.items()] + [("method", c) for _, c in METHODS.values()]
            + [("regularizer", c) for _, c in REGULARIZERS.values()])


@pytest.mark.parametrize("section,cls", _all_config_classes(), ids=lambda v: getattr(v, "__name__", v))
def test_every_configuration_field_has_a_help_line(section, cls):
    """A field added without a trailing `# meaning` comment fails here, so `fastpnr train --help` cannot go stale."""
    notes = helptext.field_comments(cls)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and not notes.get(f.name)]
    assert not missing, f"{cls.__name__}: fields without a trailing '# meaning' comment: {missing}"


@dataclass(frozen=True)
class _Base:
    size: int = 3            # the size
    mode: str = "a"          # how
    # a comment line of its own, not a field's
    plain: bool = True

    def __post_init__(self):
        require(self.mode in ("a", "b"), "x.mode", self.mode, ("a", "b"))
        require(self.size >= 1, "x.size", self.size, ">= 1")


@dataclass(frozen=True)
class _Child(_Base):
    size: int = 5            # the child's size
    mode: str = "b"
    extra: Optional[float] = None  # more

    def helper(self):
        local: int = 1  # not a field
        return local


def test_field_comments_follow_the_source_and_the_bases():
    assert helptext.field_comments(_Base) == {"size": "the size", "mode": "how"}
    assert helptext.field_comments(_Child) == {"size": "the child's size", "mode": "how", "extra": "more"}
    rows = {r.option: r for r in helptext.config_help(_Child, "x")}
    assert (rows["--x.mode"].default, rows["--x.mode"].allowed, rows["--x.mode"].meaning) == ("b", "a, b", "how")
    assert (rows["--x.size"].type, rows["--x.size"].allowed) == ("INT", ">= 1")
    assert (rows["--x.extra"].type, rows["--x.extra"].default) == ("FLOAT|none", "none")
    assert (rows["--x.plain"].type, rows["--x.plain"].default, rows["--x.plain"].meaning) == ("true|false", "true", "")


def _help(capsys, *argv) -> str:
    cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "INFO:" not in out + err and not err, err
    return out


def test_train_help_lists_every_field_with_default_allowed_and_meaning(capsys):
    out = _help(capsys, "train", "--help")
    for section, cls in _all_config_classes():
        for f in dataclasses.fields(cls):
            if f.init and f.name != "name":
                assert f"--{section}.{f.name} " in out, (section, f.name)
    precision = next(line for line in out.splitlines() if line.strip().startswith("--train.precision "))
    assert "default auto" in precision and f"allowed: {', '.join(PRECISIONS)}" in precision
    probe = out.splitlines().index(next(line for line in out.splitlines() if "--train.online_probe STR" in line))
    assert f"allowed: {', '.join(PROBES)}" in out.splitlines()[probe]
    assert "the anchors' probe" in out.splitlines()[probe + 1]  # the field's comment in config.py
    for name in (*METHODS, *REGULARIZERS):
        assert f"--{'method' if name in METHODS else 'regularizer'} {name};" in out


def test_train_help_topic_shows_one_block_and_a_bad_topic_is_one_line(capsys):
    out = _help(capsys, "train", "--help", "byol")
    assert out.startswith("method (--method byol;") and "--method.pred_hidden" in out
    assert "--data." not in out and "--method simclr" not in out and "byol_gsg" not in out
    assert "--optim.lr " in _help(capsys, "train", "--help", "optim") and "--data." not in _help(capsys, "train", "-h", "optim")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: help topic 'bogus' is not known; allowed: ") and "\n" not in err


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "train"])
def test_every_command_help_is_clean_and_lists_its_options(command, capsys):
    main = cli._module(command).main
    out = _help(capsys, command, "--help")
    assert out.startswith(f"usage: fastpnr {command}")
    for p in inspect.signature(main).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert f"--{p.name} " in out, p.name
    assert _help(capsys, command, "-h") == out


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "train"])
def test_every_example_passes_the_required_options_as_its_usage_shows_them(command, capsys):
    """One way to give a required value (`fastpnr export --checkpoint X`), not a positional in the examples while
    the usage line asks for the option."""
    out = _help(capsys, command, "--help")
    required = [p.name for p in inspect.signature(cli._module(command).main).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    examples = [line for line in out.splitlines() if line.strip().startswith(f"fastpnr {command} ")]
    for line in examples:
        for name in required:
            assert f"--{name} " in line, (line, name)


def test_help_shows_choices_validated_below_main(capsys):
    """linear's --mode is checked in offline_eval.linear_eval, compare's --protocol in fastpnr.study.compare."""
    linear = _help(capsys, "linear", "--help")
    assert "allowed: features, official, augmented" in next(line for line in linear.splitlines() if line.startswith("  --mode "))
    assert "augmented: the former name of official" in linear
    compare = _help(capsys, "compare", "--help")
    assert "allowed: linear, knn, online, official" in next(line for line in compare.splitlines() if line.startswith("  --protocol "))
