"""The tree shows the architecture (docs/ARCHITECTURE.md): rooms (subpackages) whose imports point down only."""
from __future__ import annotations

import ast
from pathlib import Path

import fastpnr

PACKAGE = Path(fastpnr.__file__).resolve().parent
# Bottom to top: a module may import its own room and the rooms before it, never one after it.
ROOMS = ("errors", "losses", "models", "system", "methods", "regularizers", "data", "config", "eval", "run", "train",
         "study", "helptext", "cli", "__main__", "__init__")
# The modules at the package's root: the front door and the options every room shares (config.py and its torch-free
# method and strategy dataclasses, which `fastpnr train` checks before torch loads).
FRONT_DOOR = {"__init__", "__main__", "cli", "helptext", "config", "method_configs", "regularizer_configs", "errors"}
OPTIONS = {"method_configs": "errors", "regularizer_configs": "errors"}  # torch-free leaves: errors' rank


def _module(path: Path, package: Path) -> tuple[str, bool]:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return (".".join(parts[:-1]), True) if parts[-1] == "__init__" else (".".join(parts), False)


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else OPTIONS.get(parts[1], parts[1])


def _imports(path: Path, package: Path):
    """(imported module, imported name or None, line) of every fastpnr import in ``path``, relative ones resolved."""
    module, is_pkg = _module(path, package)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, None, node.lineno) for a in node.names if a.name.startswith("fastpnr"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if base.startswith("fastpnr"):
                for a in node.names:
                    sub = package.parent / Path(*f"{base}.{a.name}".split("."))
                    is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                    yield (f"{base}.{a.name}", None, node.lineno) if is_module else (base, a.name, node.lineno)


def upward_imports(package: Path) -> list[str]:
    """Every import of a room above the importer's, as 'file:line (room) imports module (room)'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        here = _room(_module(path, package)[0])
        for target, _name, line in _imports(path, package):
            there = _room(target)
            if there != here and ROOMS.index(there) > ROOMS.index(here):
                found.append(f"{path.relative_to(package.parent)}:{line} ({here}) imports {target} ({there})")
    return found


def private_imports(package: Path) -> list[str]:
    """Every `from <another room> import _name`."""
    found = []
    for path in sorted(package.rglob("*.py")):
        here = _room(_module(path, package)[0])
        for target, name, line in _imports(path, package):
            if name and name.startswith("_") and not name.startswith("__") and _room(target) != here:
                found.append(f"{path.relative_to(package.parent)}:{line} imports {target}.{name}")
    return found


def test_the_package_root_holds_only_the_front_door_and_every_room_is_listed():
    loose = {p.stem for p in PACKAGE.glob("*.py")} - FRONT_DOOR
    assert not loose, f"modules outside a room: {sorted(loose)}"
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS (and docs/ARCHITECTURE.md): {sorted(rooms - set(ROOMS))}"


def test_imports_point_down_only():
    found = upward_imports(PACKAGE)
    assert not found, "imports that point up:\n" + "\n".join(found)


def test_no_module_imports_a_private_name_of_another_room():
    found = private_imports(PACKAGE)
    assert not found, "\n".join(found)


def test_the_checks_see_an_upward_and_a_private_import(tmp_path):
    package = tmp_path / "fastpnr"
    for room in ("system", "train"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "train" / "trainer.py").write_text("def _step():\n    pass\n")
    (package / "system" / "bad.py").write_text("from ..train import trainer\nfrom fastpnr.train.trainer import _step\n")
    assert upward_imports(package) == ["fastpnr/system/bad.py:1 (system) imports fastpnr.train.trainer (train)",
                                       "fastpnr/system/bad.py:2 (system) imports fastpnr.train.trainer (train)"]
    assert private_imports(package) == ["fastpnr/system/bad.py:2 imports fastpnr.train.trainer._step"]
