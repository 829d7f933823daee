"""`--help` text generated from the code, so it cannot go stale.

- Configuration fields (`fastpnr train --help`): name, type and default from the dataclass; the meaning from the
  trailing ``# comment`` on the field's line in the source (inherited from a base class when a subclass redefines
  the field without one); what is allowed from the ``require(...)`` calls of ``__post_init__`` (the same lists and
  bounds the validation uses).
- Fire commands (`fastpnr linear --help`, ...): the module's and ``main``'s docstrings and one line per parameter
  (type, default, allowed values from ``require(...)`` in ``main`` or the script's ``CHOICES``). Printed on
  stdout, without fire's "INFO:" line and pager.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing

from .errors import ConfigError

_SKIP_TOKENS = (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.COMMENT)


# ------------------------------------------------------------------------------------------ source parsing
@functools.cache
def _own_comments(klass) -> dict[str, str]:
    """{field: trailing comment} for the fields annotated in ``klass``'s own body (not its bases)."""
    try:
        src = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    own = set(klass.__dict__.get("__annotations__", {}))
    comments, line = {}, []
    body_col = None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NL and all(t.type in _SKIP_TOKENS for t in line):
            line = []  # a comment-only or blank line belongs to no statement
            continue
        line.append(tok)
        if tok.type not in (tokenize.NEWLINE, tokenize.ENDMARKER):
            continue
        code = [t for t in line if t.type not in _SKIP_TOKENS]
        if len(code) > 2 and code[0].type == tokenize.NAME and code[1].string == ":":
            body_col = code[0].start[1] if body_col is None else body_col
            note = next((t.string.lstrip("#").strip() for t in line if t.type == tokenize.COMMENT), "")
            if code[0].start[1] == body_col and code[0].string in own and note:
                comments[code[0].string] = note
        line = []
    return comments


def field_comments(cls) -> dict[str, str]:
    """{field: meaning} of a config dataclass: its trailing comments, a subclass's own winning over its bases'."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_comments(klass))
    return out


def _resolve(node, namespace: dict):
    """The value an ``allowed`` argument of ``require`` names: a literal, a constant, ``sorted(NAME)``; else None."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("sorted", "tuple", "list") \
            and len(node.args) == 1:
        inner = _resolve(node.args[0], namespace)
        return None if inner is None else (sorted(inner) if node.func.id == "sorted" else list(inner))
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _local_imports(tree, package: str) -> dict:
    """Names imported inside a function (``from .models import BACKBONES``), imported now."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            try:
                module = importlib.import_module("." * node.level + (node.module or ""), package)
            except ImportError:
                continue
            names.update({a.asname or a.name: getattr(module, a.name, None) for a in node.names})
    return names


def _format_allowed(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = list(value)
    return ", ".join(str(v) for v in value)


def _calls_in_order(tree):
    """Every node of ``tree`` in source order (``ast.walk`` is breadth-first)."""
    return sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset))


_OWN_PACKAGES = ("fastpnr", "scripts", "loaders", "kernels")


def require_allowed(func, prefix: str = "", depth: int = 2) -> dict[str, str]:
    """{name: allowed} from ``require(cond, "<prefix><name>", value, allowed)`` calls in ``func``'s source and, down
    to ``depth`` calls deep, in the project's functions it calls (``check_tau(self)``, ``linear_eval(mode=...)``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return {}
    module = sys.modules.get(func.__module__)
    namespace = {**vars(module), **_local_imports(tree, module.__package__ or "")} if module else {}
    out: dict[str, list[str]] = {}
    for node in _calls_in_order(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = namespace.get(getattr(node.func, "id", None))
        if getattr(node.func, "id", None) != "require" and inspect.isfunction(callee) and depth > 0 \
                and callee.__module__.split(".")[0] in _OWN_PACKAGES:
            for name, allowed in require_allowed(callee, prefix, depth - 1).items():
                out.setdefault(name, []).append(allowed)
            continue
        if getattr(node.func, "id", None) != "require" or len(node.args) < 4:
            continue
        field = node.args[1]
        if not (isinstance(field, ast.Constant) and isinstance(field.value, str) and field.value.startswith(prefix)):
            continue
        allowed = _format_allowed(_resolve(node.args[3], namespace))
        if allowed is not None:
            out.setdefault(field.value[len(prefix):], []).append(allowed)
    return {k: v[0] for k, v in out.items()}  # the first check states the values; later ones are special cases


def config_allowed(cls, section: str) -> dict[str, str]:
    """{field: allowed} from the ``require`` calls of ``__post_init__`` along the MRO (subclass first)."""
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        post = klass.__dict__.get("__post_init__")
        if post is not None:
            out = {**require_allowed(post, f"{section}."), **out}
    return out


# ------------------------------------------------------------------------------------------ configuration
def _type_name(typ) -> str:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return f"{_type_name(inner[0])}|none"
    if typ is bool:
        return "true|false"
    if typ is tuple:
        return "A,B"
    return getattr(typ, "__name__", str(typ)).upper()


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "()"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclasses.dataclass(frozen=True)
class FieldHelp:
    option: str          # --section.field
    type: str            # INT, FLOAT|none, true|false, ...
    default: str
    allowed: str | None  # choices or bounds, as the validation states them
    meaning: str         # the trailing comment of the field's line


def config_help(cls, section: str, extra_allowed: dict | None = None, skip: tuple = ()) -> list[FieldHelp]:
    """One ``FieldHelp`` per init field of dataclass ``cls`` (``--section.field``)."""
    hints, notes = typing.get_type_hints(cls), field_comments(cls)
    allowed = {**config_allowed(cls, section), **(extra_allowed or {})}
    return [FieldHelp(f"--{section}.{f.name}", _type_name(hints[f.name]), _default_text(f), allowed.get(f.name),
                      notes.get(f.name, ""))
            for f in dataclasses.fields(cls) if f.init and f.name not in skip]


def format_fields(rows: list[FieldHelp], indent: str = "  ") -> str:
    width = max((len(r.option) + len(r.type) for r in rows), default=0) + 1
    lines = []
    for r in rows:
        head = f"{r.option} {r.type}".ljust(width)
        tail = f"  default {r.default}" + (f"; allowed: {r.allowed}" if r.allowed else "")
        lines.append(f"{indent}{head}{tail}\n{indent}    {r.meaning}")
    return "\n".join(lines)


def registries() -> dict[str, dict]:
    """The name registries a configuration field chooses from (method, regularizer, dataset, loader kind)."""
    from loaders import LOADERS

    from .data import DATASETS
    from .methods import METHODS
    from .regularizers import REGULARIZERS

    return {"method": METHODS, "regularizer": REGULARIZERS, "dataset": DATASETS, "loader": LOADERS}


def section_blocks() -> dict[str, str]:
    """{block name: its help}: one per section, one per method (``method simclr``) and per regularizer."""
    from .config import SECTIONS

    reg = registries()
    extra = {"data": {"dataset": ", ".join(sorted(reg["dataset"])), "loader": ", ".join(sorted(reg["loader"]))}}
    blocks = {name: format_fields(config_help(cls, name, extra.get(name))) for name, cls in SECTIONS.items()}
    for kind in ("method", "regularizer"):
        for name, (_, cfg_cls) in reg[kind].items():
            rows = config_help(cfg_cls, kind, skip=("name",))
            blocks[f"{kind} {name}"] = format_fields(rows) if rows else "  (no options)"
    return blocks


def config_reference(topic: str | None = None) -> str:
    """Every configuration field, or those of one section / method / regularizer (``topic``)."""
    blocks = section_blocks()
    if topic is not None:
        picked = {k: v for k, v in blocks.items() if topic in (k, k.split(" ")[-1], k.split(" ")[0])}
        if not picked:
            sections = sorted({k.split(" ")[0] for k in blocks} | {k.split(" ")[1] for k in blocks if " " in k})
            raise ConfigError(f"help topic {topic!r} is not known; allowed: {', '.join(sections)}")
        blocks = picked
    out = []
    for name, text in blocks.items():
        kind, _, which = name.partition(" ")
        title = f"{kind} (--{kind} {which}; its fields as --{kind}.FIELD):" if which else f"{name}:"
        out.append(f"{title}\n{text}")
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------ fire commands
def command_help(main, name: str) -> str:
    """Help of a fire command: usage, the module's and ``main``'s docstrings, one line per parameter."""
    module = sys.modules.get(main.__module__)
    choices = {**require_allowed(main), **{k: _format_allowed(v) for k, v in getattr(module, "CHOICES", {}).items()}}
    params = list(inspect.signature(main).parameters.values())
    hints = typing.get_type_hints(main) if main.__annotations__ else {}
    usage = [name]
    rows = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            usage.append(f"{p.name.upper()} ...")
            continue
        if p.kind is p.VAR_KEYWORD:
            usage.append("[--section.field VALUE ...]")
            continue
        metavar = _param_type(p, hints)
        if p.default is p.empty:
            usage.append(f"--{p.name} {metavar}")
        default = "required" if p.default is p.empty else _default_text(dataclasses.field(default=p.default))
        rows.append(FieldHelp(f"--{p.name}", metavar, default, choices.get(p.name), ""))
    width = max((len(r.option) + len(r.type) for r in rows), default=0) + 1
    options = "\n".join(f"  {(r.option + ' ' + r.type).ljust(width)}  default {r.default}"
                        + (f"; allowed: {r.allowed}" if r.allowed else "") for r in rows)
    docs = [textwrap.dedent(d).strip() for d in (getattr(module, "__doc__", None), main.__doc__) if d]
    return "\n\n".join([f"usage: {' '.join(usage)} [options]", *docs, "options:\n" + options,
                        "Options take '-' or '_' (--data-dir = --data_dir); true|false options also as --flag / --noflag."])


def _param_type(p: inspect.Parameter, hints: dict) -> str:
    if p.name in hints:
        return _type_name(hints[p.name])
    if p.default is not p.empty and p.default is not None:
        return _type_name(type(p.default))
    return "VALUE"


def wants_help(argv) -> bool:
    return any(a in ("-h", "--help") for a in argv)
