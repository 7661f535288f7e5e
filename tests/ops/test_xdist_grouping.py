"""`make test` runs on two processes (`--dist loadgroup`), and `tests/integration/conftest.py` groups the tests of a
module that shares a module- or class-scoped fixture (a broker, a three-broker cluster, a worker) on one of them,
so that it is set up once. It never did until 2026-12-08: the hook ran after xdist's, which reads the marks, and
pytest 9.2 breaks the grouping anyway (pytest-xdist#1386; pinned below it in pyproject.toml). Every such fixture was
set up on both processes (two three-broker clusters at once, say). This runs the same hook on a tiny project and
looks where the tests ran."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests.integration.conftest import pytest_collection_modifyitems  # noqa: F401
"""

SHARED = """
import os
import pytest

@pytest.fixture(scope="module")
def cluster():
    return os.environ["PYTEST_XDIST_WORKER"]

@pytest.fixture
def fresh_cluster(cluster):
    return cluster

@pytest.mark.parametrize("i", range(6))
def test_shared(fresh_cluster, i):
    with open(os.environ["RAN_LOG"], "a") as log:
        log.write(f"shared {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""

ALONE = """
import os
import pytest

@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    with open(os.environ["RAN_LOG"], "a") as log:
        log.write(f"alone {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_a_module_sharing_a_module_scoped_fixture_runs_on_one_process_and_the_others_spread(tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_shared.py").write_text(SHARED)
    (project / "test_alone.py").write_text(ALONE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q",
         "-o", "asyncio_default_fixture_loop_scope=function", str(project)],
        capture_output=True, text=True, timeout=120, cwd=project,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RAN_LOG": str(log)},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for line in log.read_text().splitlines():
        module, worker = line.split()
        workers[module].add(worker)
    assert len(workers["shared"]) == 1, f"the shared fixture's module ran on {sorted(workers['shared'])}"
    assert workers["alone"], log.read_text()
