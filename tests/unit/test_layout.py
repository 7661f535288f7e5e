"""The layout's import rule (README, "Architecture"): imports go down, never up.

core/ imports nothing of the project but config; kafka/ adds core; serving/ adds kafka;
stages/ adds serving; commands/ import anything. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streams"
MAY_IMPORT = {
    "config": {"config"},
    "core": {"config", "core"},
    "kafka": {"config", "core", "kafka"},
    "serving": {"config", "core", "kafka", "serving"},
    "stages": {"config", "core", "kafka", "serving", "stages"},
    "commands": {"config", "core", "kafka", "serving", "stages", "commands"},
}


def layer_of(module: str) -> str:
    """`streams.core.kpis` -> `core`; `streams.config` -> `config`."""
    return module.split(".")[1].removesuffix(".py")


def imported_modules(source: str) -> list[str]:
    """Every `streams.*` module a source imports, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "streams":
                found += [f"streams.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
    return [name for name in found if name.startswith("streams.")]


def violations(sources: dict[str, str]) -> list[str]:
    """`path: imports module` for each import that goes up or sideways against MAY_IMPORT."""
    wrong = []
    for path, source in sources.items():
        layer = Path(path).parts[1].removesuffix(".py")
        for module in imported_modules(source):
            if layer_of(module) not in MAY_IMPORT[layer]:
                wrong.append(f"{path}: imports {module}")
    return wrong


def project_sources() -> dict[str, str]:
    root = PACKAGE.parent
    return {str(path.relative_to(root)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_lives_in_a_layer_folder_or_is_config() -> None:
    folders = {*MAY_IMPORT, "__init__"}
    assert [path for path in project_sources() if Path(path).parts[1].removesuffix(".py") not in folders] == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert violations(project_sources()) == []


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("streams/core/kpis.py", "from streams.stages.app import build"),
        ("streams/core/kpis.py", "def f():\n    from streams.kafka.topics import DLQ_TOPIC\n"),
        ("streams/core/kpis.py", "import streams.serving.store"),
        ("streams/kafka/topics.py", "from streams import stages"),
        ("streams/serving/store.py", "from streams.stages.topology import Wiring"),
        ("streams/stages/app.py", "from streams.commands.cli import main"),
        ("streams/config.py", "from streams.core.events import INPUT_TOPICS"),
    ],
)
def test_an_import_against_the_rule_is_reported(path: str, source: str) -> None:
    assert len(violations({path: source})) == 1


def test_imports_down_the_layers_are_allowed() -> None:
    allowed = {
        "streams/commands/top.py": "from streams.stages.app import build\nfrom streams.core import kpis",
        "streams/stages/app.py": "from streams.serving.store import Store\nfrom streams.kafka import topics",
        "streams/core/ltv.py": "from streams.core.kpis import ratio\nfrom streams.config import Settings",
    }
    assert violations(allowed) == []
