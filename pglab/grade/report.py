"""The grade report: per-lab results and their renderings (results.json, JUnit, a table).

`results.json` follows the Exercism test-runner v3 shape (`version`, `status`,
`message` of at most 65,535 characters, `tests[]` with `name`, `status`, `message`,
`output` of at most 500), extended with `labs`, `score`, `max_score`, `isolation`
and, per lab, `integrity`. Every text that leaves the grader passes through `clean`:
no password in any disguise, no control character, no terminal escape, bounded size.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..course import Lab
from ..servers.database import known_passwords
from .limits import MESSAGE_LIMIT, OUTPUT_LIMIT

_secrets: set[str] = set()  # passwords of the grader's roles, scrubbed from every report
_patterns: list[re.Pattern[str]] = []
_known: list[bool] = []  # the server's passwords are added once, on first use
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")  # not in XML 1.0
_SEPARATOR = r"[\s\W_]{0,3}"  # what a learner may put between the letters of a smuggled password

console = Console(soft_wrap=True)


def _disguises(password: str) -> list[re.Pattern[str]]:
    """The password plain, reversed, spaced out, percent-encoded, base64'd or hex'd."""
    forms = [password, password[::-1]]
    spaced = [_SEPARATOR.join(map(re.escape, form)) for form in forms]
    encoded = [quote(password, safe=""), password.encode().hex()]
    data = password.encode()
    for skip in range(3):  # base64 of the password at any alignment contains one of these cores
        whole = data[skip: skip + 3 * ((len(data) - skip) // 3)]
        core = base64.b64encode(whole).decode()
        encoded += [core, core.replace("+", "-").replace("/", "_")]
    return [re.compile("|".join([*spaced, *(re.escape(e) for e in encoded if len(e) >= 8)]), re.IGNORECASE)]


def hide_secret(password: str) -> None:
    """Scrub this password, in any disguise, from every report from now on."""
    if password and password not in _secrets:
        _secrets.add(password)
        _patterns.extend(_disguises(password))


def clean(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` safe for every report: secrets masked, escapes and XML-illegal characters removed, capped."""
    if not _known:
        _known.append(True)
        for password in known_passwords():
            hide_secret(password)
    text = _ANSI.sub("", text)
    for pattern in _patterns:
        text = pattern.sub("***", text)
    text = _ILLEGAL.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Like `clean`, keeping the end: the assertion is at the bottom of a traceback."""
    text = clean(text, len(text) + 1)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


@dataclass
class LabResult:
    """One lab of one submission: a row per check, and what they are worth."""

    lab: Lab
    tests: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""  # why the run was incomplete (time limit, crash, clean-up)
    suspect: str = ""  # why the grader does not trust this run: points withheld
    extra: bool = False  # instructor's extra checks ran too
    duration: float = 0.0

    def count(self, status: str) -> int:
        return sum(t["status"] == status for t in self.tests)

    @property
    def graded(self) -> int:
        return sum(t["status"] != "skip" or not t.get("declared") for t in self.tests)

    @property
    def points(self) -> float:
        if self.suspect or not self.graded:
            return 0.0
        return round(self.lab.points * self.count("pass") / self.graded, 2)

    @property
    def status(self) -> str:
        if self.problem or self.suspect or not self.graded:
            return "error"
        if self.count("pass") == self.graded:
            return "pass"
        # Nothing could even run (module missing, syntax or import error): an error, as in Exercism.
        return "error" if self.count("error") == self.graded else "fail"

    @property
    def message(self) -> str:
        if self.suspect:
            return f"integrity: suspect, points withheld: {self.suspect}"
        if self.status == "pass":
            return "all public and extra checks passed" if self.extra else "all public checks passed"
        passed = f"{self.count('pass')} of {self.graded} checks passed"
        if self.problem:
            return f"{self.problem}; {passed}"
        if self.status == "error":
            return next(t["message"] for t in self.tests if t["status"] == "error")
        reasons = {t["message"] for t in self.tests if t["status"] != "pass"}
        return f"{reasons.pop()}; {passed}" if len(reasons) == 1 and not self.count("pass") else passed


def test_row(name: str, status: str, message: str = "", output: str = "", declared: bool = False) -> dict[str, Any]:
    """One check's row; `declared` marks a skip the course itself declares (not graded)."""
    if message.startswith("Timeout (>") or "pytest-timeout" in message:
        message = "the check did not finish in time (a hang: an await that never returns?)"
    message = re.sub(r"^(?:[\w.]+\.)?LabImportFailed: ", "", message)  # the course plugin's wrapper
    if message.startswith("NotImplementedError: "):
        message = "not implemented yet: " + message.removeprefix("NotImplementedError: ")
    row = {"name": clean(name, 200), "status": status, "message": clean(message), "output": clean_tail(output)}
    if declared:
        row["declared"] = True
    return row


def results_json(learner: str, results: list[LabResult], isolation: str) -> dict[str, Any]:
    """The Exercism v3 report, extended with `labs`, `score`, `max_score` and `isolation`."""
    statuses = {r.status for r in results}
    status = "error" if "error" in statuses else "fail" if "fail" in statuses else "pass"
    score, max_score = total(results)
    if status == "pass":
        extra = any(r.extra for r in results)
        message = f"all public{' and extra' if extra else ''} checks passed: {score:g}/{max_score} points"
    else:
        problems = [f"lab {r.lab.id}: {r.message}" for r in results if r.status != "pass"]
        message = f"{score:g}/{max_score} points; " + "; ".join(problems)
    if isolation == "none":
        message = f"{NOT_ISOLATED} {message}"
    return {
        "version": 3, "status": status, "message": clean(message),
        "tests": [{k: v for k, v in t.items() if k != "declared"} | {"lab": r.lab.id}
                  for r in results for t in r.tests],
        "learner": clean(learner, 200), "score": score, "max_score": max_score, "isolation": isolation,
        "labs": [{"id": r.lab.id, "module": r.lab.module, "title": r.lab.title, "status": r.status,
                  "message": clean(r.message), "points": r.points, "max_points": r.lab.points,
                  "passed": r.count("pass"), "graded": r.graded, "skipped": r.count("skip"),
                  "integrity": "suspect" if r.suspect else "ok", "duration": round(r.duration, 2)}
                 for r in results],
    }


NOT_ISOLATED = "NOT ISOLATED: no sandbox on this machine; the submission ran with the grader's rights."


def junit_xml(learner: str, results: list[LabResult]) -> str:
    """JUnit XML: one testsuite per lab, one testcase per check."""
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites", name=clean(learner, 200))
    for r in results:
        suite = ET.SubElement(root, "testsuite", name=r.lab.module, tests=str(len(r.tests)),
                              failures=str(r.count("fail")), errors=str(r.count("error")),
                              skipped=str(r.count("skip")), time=f"{r.duration:.2f}")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="points", value=f"{r.points:g}")
        ET.SubElement(props, "property", name="max_points", value=str(r.lab.points))
        ET.SubElement(props, "property", name="integrity", value="suspect" if r.suspect else "ok")
        for t in r.tests:
            case = ET.SubElement(suite, "testcase", classname=r.lab.module, name=t["name"])
            tag = {"fail": "failure", "error": "error", "skip": "skipped"}.get(t["status"])
            if tag:
                ET.SubElement(case, tag, message=t["message"]).text = t["output"] or None
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def total(results: list[LabResult]) -> tuple[float, int]:
    return round(sum(r.points for r in results), 2), sum(r.lab.points for r in results)


def write_reports(out: Path, learner: str, results: list[LabResult], isolation: str) -> dict[str, Any]:
    """results.json and junit.xml in `out`; returns the results.json content."""
    out.mkdir(parents=True, exist_ok=True)
    report = results_json(learner, results, isolation)
    (out / "results.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (out / "junit.xml").write_text(junit_xml(learner, results))
    return report


def print_table(learner: str, results: list[LabResult], isolation: str) -> None:
    table = Table(title=escape(f"{clean(learner, 200)}: grade"))
    for column in ("lab", "title", "checks passed", "points", "status"):
        table.add_column(column)
    colour = {"pass": "green", "fail": "yellow", "error": "red"}
    for r in results:
        table.add_row(r.lab.id, r.lab.title, f"{r.count('pass')}/{r.graded}", f"{r.points:g}/{r.lab.points}",
                      f"[{colour[r.status]}]{escape(clean(r.message, 300))}[/]")
    console.print(table)
    report = results_json(learner, results, isolation)
    console.print(f"[bold]{report['status']}[/]: {escape(report['message'])}", highlight=False)
