"""pytest plugin of the course: `--target`, lab fixtures and a JSON report.

- `--target labs|solutions|PATH` picks the lab modules under test (default:
  `PGLAB_TARGET`, else "solutions", so the README's test command is green on a
  fresh clone; `pglab check` passes `labs`).
- `--pglab-report FILE` writes one JSON row per test, read by `pglab check` and
  `pglab grade`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .servers.database import DatabaseUnavailableError, database_url, scrub_secrets
from .targets import TargetError, load_lab_module


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pglab")
    group.addoption("--target", default=None,
                    help="lab modules under test: labs, solutions or a folder (default: solutions)")
    group.addoption("--pglab-report", default=None, help="write per-test results as JSON to this file")


def pytest_configure(config: pytest.Config) -> None:
    target = config.getoption("--target") or os.environ.get("PGLAB_TARGET") or "solutions"
    os.environ["PGLAB_TARGET"] = target  # notebooks and subprocesses see the same target
    config.stash[_TARGET] = target
    if path := config.getoption("--pglab-report"):
        config.pluginmanager.register(JsonReport(Path(path)), "pglab-json-report")


_TARGET = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"pglab target: {config.stash[_TARGET]}"


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> str:
    """The tree under test: "labs", "solutions" or a submission path."""
    return pytestconfig.stash[_TARGET]


@pytest.fixture(scope="session")
def load_lab(target: str) -> Callable[[str], ModuleType]:
    """`load_lab("lab01_database_pool")` imports that module from the target tree."""

    def load(module: str) -> ModuleType:
        try:
            return load_lab_module(module, target)
        except TargetError as exc:
            pytest.fail(str(exc), pytrace=False)

    return load


@pytest.fixture
def lab(request: pytest.FixtureRequest, load_lab: Callable[[str], ModuleType]) -> ModuleType:
    """The lab under test: the module named by the test file's `MODULE`, from the target tree."""
    return load_lab(request.module.MODULE)


@pytest.fixture(scope="session")
def load_solution() -> Callable[[str], ModuleType]:
    """Reference implementation of another lab, for labs that build on it."""
    return lambda module: load_lab_module(module, "solutions")


@pytest.fixture(scope="session")
def dsn() -> str:
    """DSN of the course server (started if needed)."""
    try:
        return database_url()
    except DatabaseUnavailableError as exc:
        pytest.exit(f"no database for the checks: {exc}", returncode=3)


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    """A unique `application_name` for this test, to find its backends on the server."""
    return f"t-{request.node.name[:30]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def table_name() -> str:
    """A unique table name, so tests never collide and a second run starts clean."""
    return f"t_{uuid.uuid4().hex[:10]}"


class JsonReport:
    """Collects one row per test (setup, call and teardown folded together)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "name": report.nodeid.split("::")[-1],
            "status": "pass", "message": "", "output": "", "duration": 0.0,
        })
        row["duration"] += report.duration
        if report.skipped and row["status"] == "pass":
            row["status"] = "skip"
            row["message"] = _skip_reason(report)
        elif report.failed and row["status"] in ("pass", "skip"):
            row["status"] = "fail" if report.when == "call" else "error"
            row["message"] = _short_message(report)
            row["output"] = scrub_secrets(str(report.longrepr))[-4000:]

    def pytest_sessionfinish(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(list(self.rows.values()), indent=1))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _short_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1]
    if "Timeout" in message and "pytest-timeout" in str(report.longrepr):
        message = "the test did not finish in time (a hang: an await that never returns?)"
    elif message.startswith("NotImplementedError: "):
        message = "not implemented yet: " + message.removeprefix("NotImplementedError: ")
    elif message.startswith("Failed: "):
        message = message.removeprefix("Failed: ")
    return scrub_secrets(message)
