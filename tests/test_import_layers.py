"""The import-layers contract in pyproject.toml (docs/architecture.md §3), checked with import-linter: the package
keeps it, and the same contract breaks on a package that has one import going up a layer."""

import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter is in the test extra")
from importlinter.cli import lint_imports  # noqa: E402


def contract() -> dict:
    [layers] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    return layers


def test_package_keeps_the_layers_contract(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_every_top_level_module_is_in_a_layer():
    named = {part.strip().strip("()").split(".")[1] for layer in contract()["layers"]
             for part in layer.replace(":", "|").split("|")}
    src = ROOT / "src" / "echo"
    present = {p.stem for p in src.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert present - named == set(), "add these modules to a layer in pyproject.toml [tool.importlinter]"


def _mirror(tmp_path: Path, name: str, upward: bool) -> Path:
    """A package ``name`` with one module per layer of the real contract, each importing the layer below it; with
    ``upward`` the lowest layer also imports the highest. Returns the contract file that checks it."""
    layers = [[p.strip().strip("()").split(".", 1)[1] for p in layer.replace(":", "|").split("|")]
              for layer in contract()["layers"]]
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for i, layer in enumerate(layers):
        below = layers[i + 1][0] if i + 1 < len(layers) else None
        for module in layer:
            lines = [f"from . import {below}"] if below else []
            if upward and i == len(layers) - 1:
                lines.append(f"from . import {layers[0][0]}")
            (pkg / f"{module}.py").write_text("\n".join(lines) + "\n")
    spec = ", ".join(repr(layer.replace("echo.", f"{name}.")) for layer in contract()["layers"])
    config = tmp_path / "contract.toml"
    config.write_text(textwrap.dedent(f"""\
        [tool.importlinter]
        root_package = "{name}"
        [[tool.importlinter.contracts]]
        name = "mirror"
        type = "layers"
        layers = [{spec}]
        """))
    return config


@pytest.mark.parametrize("upward", [False, True], ids=["downward-only", "planted-cycle"])
def test_contract_breaks_on_an_upward_import(tmp_path, monkeypatch, upward):
    name = f"layers_mirror_{int(upward)}"
    config = _mirror(tmp_path, name, upward)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == (1 if upward else 0)
    finally:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]
