"""The package tree is the architecture: lower layers never import higher ones, and only the CLI imports the CLI.

Every import in every module counts, including imports inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agn_cli"

# Lowest first. A module may import its own layer and any layer below it.
LAYERS = [
    {"errors"},
    {"models"},
    {"runtime"},
    {"viz", "synth"},
    {"ct", "us"},
    {"metrics"},
    {"train"},
    {"apps"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str | None:
    """'agn_cli.ct.volume' -> 'ct'; the package root itself (version) belongs to no layer."""
    parts = module.split(".")
    if parts[0] != "agn_cli" or len(parts) < 2:
        return None
    return "cli" if parts[1] == "__main__" else parts[1]  # `python -m agn_cli` is the CLI


def _imports(path: Path) -> list[tuple[int, str]]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from agn_cli import ct` imports the layer named by the alias.
            if target == "agn_cli":
                found += [(node.lineno, f"agn_cli.{alias.name}") for alias in node.names if alias.name in RANK]
    return [(line, name) for line, name in found if name.startswith("agn_cli")]


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_module_belongs_to_a_layer():
    names = {_layer("agn_cli." + p.relative_to(PACKAGE).parts[0].removesuffix(".py")) for p in _modules()}
    assert names - {"__init__"} <= set(RANK), f"modules outside the layer map: {sorted(names - set(RANK))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = _layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    if own is None:
        return
    bad = []
    for line, target in _imports(path):
        other = _layer(target)
        if other is None or other == own:
            continue
        if RANK[other] > RANK[own] or (other == "cli" and own != "cli"):
            bad.append(f"line {line}: {target} ({other} is above {own})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """Guard against a checker that passes everything: a fake ct module importing the CLI must be caught."""
    fake = tmp_path / "agn_cli" / "ct"
    fake.mkdir(parents=True)
    module = fake / "bad.py"
    module.write_text("def f():\n    from agn_cli.cli.console import err\n    from agn_cli.apps import bench\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "agn_cli")
    with pytest.raises(AssertionError, match="line 2: agn_cli.cli.console"):
        test_no_module_imports_a_higher_layer(module)
