"""pytest plugin of the course: `--target`, lab fixtures, deadlines and a JSON report.

- `--target labs|solutions|PATH` picks the lab modules under test (default:
  `PGLAB_TARGET`, else "solutions", so the README's test command is green on a
  fresh clone; `pglab check` passes `labs`).
- Every `async def` check has a deadline (`DEFAULT_DEADLINE` seconds, or
  `@pytest.mark.deadline(30)`); on expiry it fails naming the learner's pending await.
- `dsn` probes the server once; if it is unusable the session stops with exit code
  `ENVIRONMENT_BROKEN` (never a pass, never the learner's fault).
- `--pglab-report FILE` writes one JSON row per test, read by `pglab check` and
  `pglab grade`; its message is what the learner reads: the learner's file, line and
  function for an error raised in their code, without pytest's internals.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .checks import ENVIRONMENT_BROKEN, ENVIRONMENT_FILE, probe_database
from .servers.database import scrub_secrets
from .targets import TargetError, load_lab_module
from .testing import describe_pending, display_path, is_under, learner_folder, pending_awaits

DEFAULT_DEADLINE = 10.0  # seconds for one async check; the slowest reference run takes about 2


class LabImportFailed(pytest.fail.Exception):
    """The lab module could not be imported (syntax error, failing import): reported once."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pglab")
    group.addoption("--target", default=None,
                    help="lab modules under test: labs, solutions or a folder (default: solutions)")
    group.addoption("--pglab-report", default=None, help="write per-test results as JSON to this file")


def pytest_configure(config: pytest.Config) -> None:
    target = config.getoption("--target") or os.environ.get("PGLAB_TARGET") or "solutions"
    os.environ["PGLAB_TARGET"] = target  # notebooks and subprocesses see the same target
    config.stash[_TARGET] = target
    if not any(line.startswith("deadline") for line in config.getini("markers")):  # e.g. a course copy's own ini
        config.addinivalue_line("markers", f"deadline(seconds): an async check's deadline ({DEFAULT_DEADLINE:g} s)")
    if (path := config.getoption("--pglab-report")) and not hasattr(config, "workerinput"):
        # Under pytest-xdist only the controller writes the report: it receives every worker's results.
        config.stash[_REPORT] = Path(path)
        config.pluginmanager.register(JsonReport(Path(path)), "pglab-json-report")


_TARGET = pytest.StashKey[str]()
_REPORT = pytest.StashKey[Path]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"pglab target: {config.stash[_TARGET]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every `async def` check its deadline (pytest-asyncio runs `item.obj`)."""
    for item in items:
        func = getattr(item, "obj", None)
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(func):
            marker = item.get_closest_marker("deadline")
            item.obj = with_deadline(func, float(marker.args[0]) if marker else DEFAULT_DEADLINE)


def with_deadline(func: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    """`func` run as a task that fails after `seconds`, naming the await it was stuck in."""

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.ensure_future(func(*args, **kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=seconds)
        except BaseException:  # this wrapper was cancelled: the check goes with it
            task.cancel()
            raise
        if not done:
            where = pending_awaits(task)
            task.cancel()
            await asyncio.wait({task}, timeout=5)  # let its clean-up (finally, pool.close) run
            pytest.fail(f"this check did not finish within {seconds:g} s (an await that never returns?)"
                        + (describe_pending(where) or "\n  none of your code was waiting: the check itself hung"),
                        pytrace=False)
        return task.result()

    return run


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
            raise LabImportFailed(str(exc), pytrace=False) from None

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
def dsn(pytestconfig: pytest.Config) -> str:
    """DSN of the course server (started if needed), probed once with `SELECT 1`."""
    url, problem = probe_database()
    if url is not None:
        return url
    problem = scrub_secrets(problem or "")
    if report := pytestconfig.stash.get(_REPORT, None):
        report.parent.mkdir(parents=True, exist_ok=True)
        (report.parent / ENVIRONMENT_FILE).write_text(problem)
    pytest.exit(f"the environment is broken, not your code: {problem}", returncode=ENVIRONMENT_BROKEN)


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    """A unique `application_name` for this test, to find its backends on the server."""
    return f"t-{request.node.name[:30]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def table_name() -> str:
    """A unique table name, so tests never collide and a second run starts clean."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the learner's message (`pglab_message`, `pglab_kind`) to each failed report."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and not call.excinfo.errisinstance((pytest.skip.Exception, KeyboardInterrupt)):
        report.pglab_message = scrub_secrets(learner_message(call.excinfo.value))
        report.pglab_kind = "import" if call.excinfo.errisinstance(LabImportFailed) else ""


def learner_message(error: BaseException) -> str:
    """One paragraph for the learner: what failed, and where in their code."""
    todo = next((e for e in _chain(error) if isinstance(e, NotImplementedError) and str(e).startswith("TODO")), None)
    if todo is not None:  # the skeleton says so, whatever the check expected instead
        return f"not implemented yet: {todo}" + _where(todo, " ({})")
    if isinstance(error, pytest.fail.Exception):
        if (error.msg or "").startswith("Timeout (>"):  # pytest-timeout, the backstop behind the deadlines
            return f"{error.msg.splitlines()[0]}: a hang (an await or a loop that never ends?)"
        return error.msg or ""
    if isinstance(error, AssertionError):
        return _where(error, "{}: ") + _without_rewrite_noise(str(error))
    return _where(error, "{}: ") + f"{type(error).__name__}: {error}".rstrip(": ")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _where(error: BaseException, template: str) -> str:
    """The innermost frame of `error`'s traceback in the learner's folder, as `file:line in function`."""
    folder = learner_folder()
    tb, found = error.__traceback__, None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if is_under(filename, folder):
            found = f"{display_path(filename)}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return template.format(found) if found else ""


_REWRITE_DETAIL = re.compile(r"^\s*\+")  # pytest's `+  where True = <function ... at 0x...>` lines


def _without_rewrite_noise(text: str) -> str:
    """The check's own message, without pytest's assertion-rewrite explanation."""
    lines = text.splitlines()
    if lines and not lines[0].startswith("assert "):  # a message was given: the rewrite follows it
        cut = next((i for i, line in enumerate(lines) if line.startswith("assert ")), len(lines))
        lines = lines[:cut]
    return "\n".join(line for line in lines if not _REWRITE_DETAIL.match(line)).strip() or "assertion failed"


class JsonReport:
    """Collects one row per test (setup, call and teardown folded together)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "name": report.nodeid.split("::")[-1],
            "status": "pass", "message": "", "output": "", "duration": 0.0, "kind": "",
        })
        row["duration"] += report.duration
        if report.skipped and row["status"] == "pass":
            row["status"] = "skip"
            row["message"] = _skip_reason(report)
        elif report.failed and row["status"] in ("pass", "skip"):
            row["status"] = "fail" if report.when == "call" else "error"
            row["message"] = getattr(report, "pglab_message", None) or _short_message(report)
            row["kind"] = getattr(report, "pglab_kind", "")
            row["output"] = scrub_secrets(str(report.longrepr))[-4000:]

    def pytest_sessionfinish(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(list(self.rows.values()), indent=1))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _short_message(report: pytest.TestReport) -> str:
    """Fallback for failures the plugin did not see raised (e.g. pytest-timeout's backstop)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1]
    if "Timeout" in message and "pytest-timeout" in str(report.longrepr):
        message = "the test did not finish in time (a hang: an await that never returns?)"
    elif message.startswith("Failed: "):
        message = message.removeprefix("Failed: ")
    return scrub_secrets(message)
