"""`pglab grade` against golden submissions.

tests/toolkit/submissions/goldens.toml holds one recipe per learner: a base for each
lab (the solved lab or the untouched skeleton) plus the edits that plant one defect.
The `goldens` fixture builds their labs/ folders from the live sources, and
`submissions/<name>/expected.json` holds the stable part of each report: overall
status, score, and per lab the status, the points and the status of every check
(never durations, messages or outputs). The batch grades the learners in name
order, so `09_all_correct` comes after the hanging, leaking and destructive ones
and proves they harmed nobody.

After a deliberate change to the checks of lab 00 or 01, refresh the expected
reports with `PGLAB_UPDATE_GOLDENS=1 pytest tests/toolkit/test_grade.py`, then
review the diff.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import asyncpg
import pytest

from pglab.course import tomllib
from pglab.labgen import solved
from pglab.servers.database import known_passwords

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "tests" / "toolkit" / "submissions"
RECIPES = tomllib.loads((EXPECTED / "goldens.toml").read_text())
NAMES = sorted(RECIPES)
# A DSN that still carries a password (masked ones show ***).
DSN_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^\s/:@]+:(?!\*\*\*@)[^\s/@]+@")


def grade(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command, as an instructor would."""
    command = [sys.executable, "-m", "pglab", "grade", *args]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=850)
        except BaseException:  # SIGTERM, unlike a kill, lets the grader drop its databases
            proc.terminate()
            proc.communicate(timeout=60)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def stable(report: dict) -> dict:
    """What must not change from run to run: statuses and points."""
    labs = {}
    for lab in report["labs"]:
        checks = {t["name"]: t["status"] for t in report["tests"] if t["lab"] == lab["id"]}
        labs[lab["id"]] = {"status": lab["status"], "points": lab["points"], "checks": checks}
    return {"status": report["status"], "score": report["score"], "max_score": report["max_score"],
            "labs": labs}


def build_submission(folder: Path, recipe: dict) -> Path:
    """A learner's repository (labs/ only) from a recipe of goldens.toml."""
    (folder / "labs").mkdir(parents=True)
    for module, spec in recipe.items():
        if spec["base"] == "solved":
            text = solved((ROOT / "solutions" / f"{module}.py").read_text())
        else:
            text = (ROOT / "labs" / f"{module}.py").read_text()
        for old, new in spec.get("edits", []):
            assert old in text, f"{folder.name}: edit no longer applies to {module}: {old!r}"
            text = text.replace(old, new)
        (folder / "labs" / f"{module}.py").write_text(text)
    return folder


@pytest.fixture(scope="module")
def goldens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every golden learner, built under one folder (a batch for `--submissions`)."""
    root = tmp_path_factory.mktemp("goldens")
    for name, recipe in RECIPES.items():
        build_submission(root / name, recipe)
    return root


@pytest.fixture(scope="module")
def batch(goldens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("grade")
    # A short limit per check keeps the hanging goldens cheap; the limit per lab is only a backstop.
    proc = grade("--submissions", str(goldens), "--lab", "00", "--lab", "01", "--timeout", "120",
                 "--test-timeout", "10", "--out", str(out))
    assert proc.returncode == 0, f"the grader failed:\n{proc.stderr[-3000:]}"
    return out, proc


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first test also runs the batch (9 learners x 2 labs)
@pytest.mark.parametrize("name", NAMES)
def test_golden_submission_gets_its_expected_report(batch, name):
    out, _ = batch
    report = json.loads((out / name / "results.json").read_text())
    assert report["version"] == 3 and report["status"] in ("pass", "fail", "error")
    assert all(len(t["output"]) <= 500 for t in report["tests"]), "output must be truncated to 500 characters"
    expected_file = EXPECTED / name / "expected.json"
    if os.environ.get("PGLAB_UPDATE_GOLDENS"):
        expected_file.write_text(json.dumps(stable(report), indent=1) + "\n")
    expected = json.loads(expected_file.read_text())
    assert stable(report) == expected, f"{name}: the report differs:\n{report['message']}"
    suites = ET.parse(out / name / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["lab00_first_contact", "lab01_database_pool"]
    assert sum(len(s.findall("testcase")) for s in suites) == len(report["tests"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_batch_writes_a_summary_and_leaks_no_secret_nor_database(batch):
    out, proc = batch
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["learner"] for row in rows] == NAMES
    for row in rows:
        expected = json.loads((EXPECTED / row["learner"] / "expected.json").read_text())
        assert float(row["total"]) == expected["score"], row
        assert float(row["lab00"]) + float(row["lab01"]) == pytest.approx(expected["score"])
    texts = [proc.stdout, proc.stderr, *(p.read_text() for p in out.rglob("*") if p.is_file())]
    for text in texts:
        assert not DSN_WITH_PASSWORD.search(text), "a DSN with its password leaked into the grader's output"
        assert not any(password in text for password in known_passwords()), "a password leaked"
        assert "all tests passed" not in text.lower(), "say 'all public checks passed': hidden ones may exist"
    assert "all public checks passed" in (out / "09_all_correct" / "results.json").read_text()
    leftovers = asyncio.run(_leftover_grade_databases())
    assert not leftovers, f"the grader must drop every database and role it made: {leftovers}"


async def _leftover_grade_databases() -> list[str]:
    from pglab.servers.database import database_url

    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch("SELECT datname AS name FROM pg_database WHERE datname LIKE 'grade\\_%'"
                                " UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'grade\\_%'")
        return [row["name"] for row in rows]
    finally:
        await conn.close()


def test_extra_tests_count_and_the_wording_stays_honest(goldens, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "test_lab00_first_contact_hidden.py").write_text(
        "def test_hidden_check_passes(load_lab):\n"
        "    assert load_lab('lab00_first_contact').connect_query_close\n\n"
        "def test_hidden_check_fails():\n"
        "    assert False, 'an instructor-only check'\n"
    )
    out = tmp_path / "out"
    proc = grade("--submission", str(goldens / "09_all_correct"), "--lab", "0", "--extra-tests", str(extra),
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    statuses = {t["name"]: t["status"] for t in report["tests"]}
    assert statuses.pop("test_hidden_check_passes") == "pass"
    assert statuses.pop("test_hidden_check_fails") == "fail"
    assert set(statuses.values()) == {"pass"} and len(statuses) == 5
    assert (report["status"], report["score"], report["max_score"]) == ("fail", 4.29, 5)
    assert "all" not in report["message"], report["message"]
    assert (out / "junit.xml").is_file()
    assert "6/7" in proc.stdout, "the console table shows the checks passed"


def test_a_lab_that_escapes_the_per_check_timeout_is_killed_and_reported(tmp_path):
    # Blocking SIGALRM defeats pytest-timeout: only the grader's own time limit is left.
    labs = tmp_path / "stuck" / "labs"
    labs.mkdir(parents=True)
    (labs / "lab00_first_contact.py").write_text(
        "import signal\n\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\nwhile True:\n    pass\n"
    )
    out = tmp_path / "out"
    proc = grade("--submission", str(labs.parent), "--lab", "00", "--timeout", "5", "--test-timeout", "1",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["status"] == "error" and "timed out after 5 s" in report["message"], report["message"]
    assert [t["status"] for t in report["tests"]] == ["error"] * 5, "every check of the lab is reported"
    assert all("timed out after 5 s" in t["message"] for t in report["tests"])


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux only")
def test_the_memory_limit_turns_a_memory_hog_into_a_failed_check(tmp_path):
    labs = tmp_path / "hog" / "labs"
    labs.mkdir(parents=True)
    solution = (ROOT / "solutions" / "lab00_first_contact.py").read_text()
    hog = "async def time_operation(operation, n):\n    return [float(len(bytearray(1 << 30)))] * n\n"
    (labs / "lab00_first_contact.py").write_text(solution.split("async def time_operation")[0] + hog)
    out = tmp_path / "out"
    proc = grade("--submission", str(labs.parent), "--lab", "00", "--memory", "512", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    statuses = {t["name"]: (t["status"], t["message"]) for t in report["tests"]}
    assert statuses.pop("test_time_operation_measures_each_call_in_sequence") == ("fail", "MemoryError")
    assert {status for status, _ in statuses.values()} == {"pass"}, statuses


@pytest.mark.parametrize(("args", "says"), [
    (["--submission", "{goldens}/09_all_correct", "--lab", "99"], "there is no lab '99'"),
    (["--submission", "{goldens}"], "has no labs/ folder"),
    (["--submission", "{goldens}/missing"], "is not a folder"),
    ([], "give exactly one of --submission"),
    (["--submissions", "{goldens}", "--timeout", "0"], "must be positive"),
])
def test_bad_arguments_fail_with_one_clear_line(goldens, args, says):
    proc = grade(*(arg.format(goldens=goldens) for arg in args))
    assert proc.returncode == 2, f"expected exit code 2, got {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_complete_correct_submission_gets_full_marks_on_every_lab(tmp_path):
    # Each lab runs in the grader's sandbox (own database, non-superuser role): a check
    # that needs more than that sandbox gives would cost honest learners points.
    recipe = {path.stem: {"base": "solved"} for path in sorted((ROOT / "solutions").glob("lab*.py"))}
    submission = build_submission(tmp_path / "complete", recipe)
    out = tmp_path / "out"
    proc = grade("--submission", str(submission), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    lost = [f"lab {t['lab']} {t['name']}: {t['message']}" for t in report["tests"]
            if t["status"] not in ("pass", "skip")]  # skip: no PgBouncer here, reported as such
    assert not lost, "the reference solutions lose points under the grader:\n" + "\n".join(lost)
    assert report["score"] == report["max_score"] == sum(lab["max_points"] for lab in report["labs"])
