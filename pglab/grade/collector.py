"""The grader's own pytest plugin: the trusted result channel out of a graded lab.

Loaded with `-p pglab.grade.collector` before any lab code is imported. It reads a
one-time token from an inherited pipe and closes it, then writes one JSON record per
test phase to another inherited pipe, each line prefixed with the token, so the lab's
code, which runs later in the same process, can neither read the token from the
environment nor add believable lines. It also notes whether pytest's reporting
machinery was replaced while the checks ran. In collect mode (no lab code at all)
it lists the checks and the course's declared skips for the grader.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

CHANNEL_ENV = "PGLAB_GRADE_CHANNEL"  # "TOKEN_FD,OUT_FD", removed once read
COLLECT_ENV = "PGLAB_GRADE_COLLECT"  # file to list the collected checks in (trusted collection only)
DECLARED_SKIP_MARKERS = ("pgbouncer",)  # a skip the course itself declares: not graded
FIELD_LIMIT = 8000


def _watched() -> dict[str, object]:
    """The functions a forger would patch to turn a failure into a pass."""
    import _pytest.reports
    import _pytest.runner

    return {
        "runner.call_and_report": _pytest.runner.call_and_report,
        "runner.runtestprotocol": _pytest.runner.runtestprotocol,
        "runner.check_interactive_exception": _pytest.runner.check_interactive_exception,
        "TestReport.from_item_and_call": _pytest.reports.TestReport.__dict__["from_item_and_call"],
        "TestReport.__init__": _pytest.reports.TestReport.__init__,
        "Function.runtest": pytest.Function.runtest,
        "Channel.pytest_runtest_logreport": Channel.__dict__["pytest_runtest_logreport"],
        "os.write": os.write,
    }


class Channel:
    """Writes token-prefixed records to the grader; one instance per graded run."""

    def __init__(self, token: str, fd: int) -> None:
        self._token = token
        self._fd = fd
        self._write = os.write  # bound now: a later patch of os.write is detected, not obeyed
        self._originals = _watched()

    def send(self, record: dict[str, Any]) -> None:
        line = (self._token + json.dumps(record) + "\n").encode()
        try:
            self._write(self._fd, line)
        except OSError:  # the grader stopped reading (limit reached): nothing more is credited anyway
            pass

    def tampered(self) -> list[str]:
        current = _watched()
        return [name for name, original in self._originals.items() if current[name] is not original]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record: dict[str, Any] = {"kind": "phase", "nodeid": report.nodeid, "when": report.when,
                                  "outcome": report.outcome}
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            text = str(report.longrepr)
            record["message"] = (crash.message if crash is not None else text.strip().splitlines()[-1:] or [""])
            record["message"] = str(record["message"])[:FIELD_LIMIT]
            record["output"] = text[-FIELD_LIMIT:]
        elif report.skipped:
            longrepr = report.longrepr
            record["message"] = (str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr))[:FIELD_LIMIT]
        record["tampered"] = self.tampered()
        self.send(record)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.send({"kind": "finish", "exitstatus": int(exitstatus), "tampered": self.tampered()})


def _collected(session: pytest.Session) -> list[dict[str, Any]]:
    return [{"nodeid": item.nodeid,
             "declared_skip": any(item.get_closest_marker(m) for m in DECLARED_SKIP_MARKERS)}
            for item in session.items]


class CollectOnly:
    """Lists the checks of the course's files for the grader (run without any lab code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        with open(self.path, "w") as f:
            json.dump(_collected(session), f)


def pytest_configure(config: pytest.Config) -> None:
    if spec := os.environ.pop(CHANNEL_ENV, None):
        token_fd, out_fd = (int(part) for part in spec.split(","))
        with os.fdopen(token_fd, "rb") as source:  # read once and closed: gone before lab code runs
            token = source.read(256).decode()
        config.pluginmanager.register(Channel(token, out_fd), "pglab-grade-channel")
    elif path := os.environ.pop(COLLECT_ENV, None):
        config.pluginmanager.register(CollectOnly(path), "pglab-grade-collect")
