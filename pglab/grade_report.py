"""The grade report: per-lab results and their renderings (results.json, JUnit, a table).

`results.json` follows the Exercism test-runner v3 shape (`version`, `status`,
`message`, `tests[]` with `name`, `status`, `message`, `output` of at most 500
characters), extended with `labs`, `score` and `max_score`. Every text that leaves
the grader passes through `scrub`: no password reaches a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .course import Lab
from .servers.database import scrub_secrets

OUTPUT_LIMIT = 500  # characters of `output` per test, as in Exercism's v3 format
_secrets: set[str] = set()  # passwords of the grader's throw-away roles

console = Console()


def hide_secret(password: str) -> None:
    """Scrub this password from every report from now on."""
    _secrets.add(password)


@dataclass
class LabResult:
    """One lab of one submission: a row per check, and what they are worth."""

    lab: Lab
    tests: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""  # why the run was incomplete (time limit, crash)
    extra: bool = False  # instructor's extra checks ran too
    duration: float = 0.0

    def count(self, status: str) -> int:
        return sum(t["status"] == status for t in self.tests)

    @property
    def graded(self) -> int:
        return len(self.tests) - self.count("skip")

    @property
    def points(self) -> float:
        return round(self.lab.points * self.count("pass") / self.graded, 2) if self.graded else 0.0

    @property
    def status(self) -> str:
        if self.problem or not self.graded:
            return "error"
        if self.count("pass") == self.graded:
            return "pass"
        # Nothing could even run (module missing, syntax or import error): an error, as in Exercism.
        return "error" if self.count("error") == self.graded else "fail"

    @property
    def message(self) -> str:
        if self.status == "pass":
            return "all public and extra checks passed" if self.extra else "all public checks passed"
        passed = f"{self.count('pass')} of {self.graded} checks passed"
        if self.problem:
            return f"{self.problem}; {passed}"
        if self.status == "error":
            return next(t["message"] for t in self.tests if t["status"] == "error")
        reasons = {t["message"] for t in self.tests if t["status"] != "pass"}
        return f"{reasons.pop()}; {passed}" if len(reasons) == 1 and not self.count("pass") else passed


def test_row(name: str, status: str, message: str = "", output: str = "") -> dict[str, Any]:
    if message.startswith("Timeout (>") and "pytest-timeout" in message:
        message = "the check did not finish in time (a hang: an await that never returns?)"
    output = scrub(output)
    if len(output) > OUTPUT_LIMIT:  # keep the end: the assertion is at the bottom of a traceback
        output = "…" + output[-(OUTPUT_LIMIT - 1):]
    return {"name": name, "status": status, "message": scrub(message), "output": output}


def results_json(learner: str, results: list[LabResult]) -> dict[str, Any]:
    """The Exercism v3 report, extended with `labs`, `score` and `max_score`."""
    statuses = {r.status for r in results}
    status = "error" if "error" in statuses else "fail" if "fail" in statuses else "pass"
    score, max_score = total(results)
    if status == "pass":
        extra = any(r.extra for r in results)
        message = f"all public{' and extra' if extra else ''} checks passed: {score:g}/{max_score} points"
    else:
        problems = [f"lab {r.lab.id}: {r.message}" for r in results if r.status != "pass"]
        message = f"{score:g}/{max_score} points; " + "; ".join(problems)
    return {
        "version": 3, "status": status, "message": scrub(message),
        "tests": [{**t, "message": scrub(t["message"]), "output": scrub(t["output"]), "lab": r.lab.id}
                  for r in results for t in r.tests],
        "learner": learner, "score": score, "max_score": max_score,
        "labs": [{"id": r.lab.id, "module": r.lab.module, "title": r.lab.title, "status": r.status,
                  "message": scrub(r.message), "points": r.points, "max_points": r.lab.points,
                  "passed": r.count("pass"), "graded": r.graded, "skipped": r.count("skip"),
                  "duration": round(r.duration, 2)} for r in results],
    }


def junit_xml(learner: str, results: list[LabResult]) -> str:
    """JUnit XML: one testsuite per lab, one testcase per check."""
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites", name=learner)
    for r in results:
        suite = ET.SubElement(root, "testsuite", name=r.lab.module, tests=str(len(r.tests)),
                              failures=str(r.count("fail")), errors=str(r.count("error")),
                              skipped=str(r.count("skip")), time=f"{r.duration:.2f}")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="points", value=f"{r.points:g}")
        ET.SubElement(props, "property", name="max_points", value=str(r.lab.points))
        for t in r.tests:
            case = ET.SubElement(suite, "testcase", classname=r.lab.module, name=t["name"])
            tag = {"fail": "failure", "error": "error", "skip": "skipped"}.get(t["status"])
            if tag:
                ET.SubElement(case, tag, message=scrub(t["message"])).text = scrub(t["output"]) or None
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def total(results: list[LabResult]) -> tuple[float, int]:
    return round(sum(r.points for r in results), 2), sum(r.lab.points for r in results)


def scrub(text: str) -> str:
    """Mask the course's passwords and those of the grader's throw-away roles."""
    text = scrub_secrets(text)
    for password in _secrets:
        text = text.replace(password, "***")
    return text


def write_reports(out: Path, learner: str, results: list[LabResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = json.dumps(results_json(learner, results), indent=1, ensure_ascii=False)
    (out / "results.json").write_text(report + "\n")
    (out / "junit.xml").write_text(junit_xml(learner, results))


def print_table(learner: str, results: list[LabResult]) -> None:
    table = Table(title=escape(f"{learner}: grade"))
    for column in ("lab", "title", "checks passed", "points", "status"):
        table.add_column(column)
    colour = {"pass": "green", "fail": "yellow", "error": "red"}
    for r in results:
        table.add_row(r.lab.id, r.lab.title, f"{r.count('pass')}/{r.graded}", f"{r.points:g}/{r.lab.points}",
                      f"[{colour[r.status]}]{escape(scrub(r.message))}[/]")
    console.print(table)
    report = results_json(learner, results)
    console.print(f"[bold]{report['status']}[/]: {escape(report['message'])}", highlight=False)
