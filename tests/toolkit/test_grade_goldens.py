"""`pglab grade` on golden submissions, honest and hostile, graded as one sandboxed batch.

tests/toolkit/submissions/goldens.toml holds one recipe per learner; `expected.json`
beside it the stable part of the report (statuses, points, integrity per lab, the
status of every check). Learners 10 to 18 attack the grader (README.md there lists
the classes); 19_all_correct comes last and proves that nobody harmed the next one.
After the batch the course tree, the virtual environment and the server must be as
before, and no password may appear, in any disguise, in any report or console line.

After a deliberate change to the checks of lab 00 or 01, refresh the expected
reports with `PGLAB_UPDATE_GOLDENS=1 pytest tests/toolkit/test_grade_goldens.py`,
then review the diff.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import re
import secrets
import site
from pathlib import Path
from xml.etree import ElementTree as ET

import asyncpg
import pytest
from test_grade_helpers import EXPECTED, NAMES, RECIPES, ROOT, build_submission, grade

from pglab.grade import sandbox
from pglab.paths import state_dir
from pglab.servers.database import database_url, known_passwords

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ODD_NAME = b"caf\xe9 \x1b[31mlearner"  # not UTF-8, with a terminal escape: graded as caf_learner
DSN_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^\s/:@]+:(?!\*\*\*@)[^\s/@]+@")
PLANTED = [ROOT / "tests" / "labs" / "test_lab00_first_contact.py", ROOT / "pglab" / "__init__.py"]


def stable(report: dict) -> dict:
    """What must not change from run to run: statuses, points, integrity."""
    labs = {}
    for lab in report["labs"]:
        checks = {t["name"]: t["status"] for t in report["tests"] if t["lab"] == lab["id"]}
        labs[lab["id"]] = {"status": lab["status"], "points": lab["points"], "integrity": lab["integrity"],
                           "checks": checks}
    return {"status": report["status"], "score": report["score"], "max_score": report["max_score"],
            "labs": labs}


async def _sql(query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url())
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def _site_files() -> set[Path]:
    return {p for folder in site.getsitepackages() for p in Path(folder).glob("*.pth")}


def _disguises(password: str) -> list[str]:
    forms = [password, password[::-1], " ".join(password), password.encode().hex()]
    for skip in range(3):
        whole = password.encode()[skip:skip + 3 * ((len(password) - skip) // 3)]
        forms.append(base64.b64encode(whole).decode())
    return forms


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    """Every golden graded in one batch, with the state of the tree, venv and server around it."""
    root = tmp_path_factory.mktemp("goldens")
    for name, recipe in RECIPES.items():
        build_submission(root / name, recipe)
    build_submission(Path(os.fsdecode(bytes(root) + b"/" + ODD_NAME)), RECIPES["19_all_correct"])
    sentinel = f"pglabsentinel_{secrets.token_hex(4)}"  # another course's database, a vandal's target
    asyncio.run(_sql(f"CREATE DATABASE {sentinel}"))
    before = _site_files()
    out = tmp_path_factory.mktemp("grade")
    try:
        proc = grade("--submissions", str(root), "--lab", "00", "--lab", "01", "--timeout", "120",
                     "--test-timeout", "10", "--jobs", "2", "--out", str(out))
        survived = asyncio.run(_sql("SELECT 1 FROM pg_database WHERE datname = $1", sentinel))
    finally:
        asyncio.run(_sql(f"DROP DATABASE IF EXISTS {sentinel}"))
    assert proc.returncode == 0, f"the grader failed:\n{proc.stderr[-3000:]}"
    return out, proc, {"sentinel": sentinel, "sentinel survived": bool(survived), "new .pth": _site_files() - before}


@pytest.mark.parametrize("name", NAMES)
def test_golden_submission_gets_its_expected_report(batch, name):
    out, _, _ = batch
    report = json.loads((out / name / "results.json").read_text())
    assert report["version"] == 3 and report["status"] in ("pass", "fail", "error")
    assert report["isolation"] == sandbox.kind()
    assert len(report["message"]) <= 65_535 and all(len(t["output"]) <= 500 for t in report["tests"])
    expected_file = EXPECTED / name / "expected.json"
    if os.environ.get("PGLAB_UPDATE_GOLDENS"):
        expected_file.parent.mkdir(exist_ok=True)
        expected_file.write_text(json.dumps(stable(report), indent=1) + "\n")
    expected = json.loads(expected_file.read_text())
    assert stable(report) == expected, f"{name}: the report differs:\n{report['message'][:2000]}"
    for lab in report["labs"]:
        if lab["integrity"] == "suspect":
            assert lab["points"] == 0 and "integrity: suspect" in lab["message"], lab
    suites = ET.parse(out / name / "junit.xml").getroot().findall("testsuite")  # well-formed, whatever the input
    assert [s.get("name") for s in suites] == ["lab00_first_contact", "lab01_database_pool"]
    assert sum(len(s.findall("testcase")) for s in suites) == len(report["tests"])


def test_a_folder_name_that_is_not_utf8_is_graded_under_a_safe_name(batch):
    out, proc, _ = batch
    report = json.loads((out / "caf_31mlearner" / "results.json").read_text())
    assert (report["status"], report["score"]) == ("pass", 15.0), report["message"]
    assert "\x1b" not in proc.stdout + proc.stderr, "a terminal escape reached the grader's console"


def test_the_batch_leaves_the_tree_the_venv_and_the_server_as_they_were(batch):
    out, proc, state = batch
    assert state["sentinel survived"], "a submission dropped another database of the server"
    assert not state["new .pth"], f"a submission planted files in the virtual environment: {state['new .pth']}"
    for path in PLANTED:
        assert "planted" not in path.read_text(), f"a submission edited the course: {path}"
    mine = f"grade\\_{proc.pid:x}\\_%"  # other graders may be at work on the same server
    leftovers = asyncio.run(_sql("SELECT datname AS n FROM pg_database WHERE datname LIKE $1"
                                 " UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE $1", mine))
    assert not leftovers, f"the grader must drop every database and role it made: {leftovers}"
    assert not list(out.rglob("big.bin")), "a submission's files ended up in the reports"
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 5 << 20, "reports must stay small"


def test_no_password_in_any_disguise_reaches_a_report_or_the_console(batch):
    out, proc, _ = batch
    passwords = [*known_passwords(), (state_dir() / "grade-admin").read_text().strip()]
    texts = [proc.stdout, proc.stderr, *(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())]
    for text in texts:
        assert not DSN_WITH_PASSWORD.search(text), "a DSN with its password leaked into the grader's output"
        for password in passwords:
            assert not any(form in text for form in _disguises(password)), "a password leaked"
    report = json.loads((out / "17_secrets" / "results.json").read_text())
    smuggled = [t["message"] for t in report["tests"] if "smuggled [" in t["message"]]
    assert smuggled, "17_secrets: the message with the smuggled password is expected in its report"
    for message in smuggled:
        for item in re.findall(r"'([^']*)'", message.split("smuggled [", 1)[1].split("]", 1)[0]):
            assert "***" in item, f"the role's password got out in disguise: {item!r}"


def test_a_lab_opens_no_other_database_with_its_own_or_its_throwaway_roles_credentials(batch):
    out, _, state = batch
    report = json.loads((out / "17a_other_databases" / "results.json").read_text())
    messages = [t["message"] for t in report["tests"] if t["message"].startswith("RuntimeError: opened: ")]
    assert messages, "17a_other_databases: the message listing its attempts is expected in its report"
    for message in messages:
        opened, refused = message.split("; refused: ", 1)
        assert opened == "RuntimeError: opened: []", f"a graded lab opened another database of the server: {opened}"
        for target in ("postgres", "template1", state["sentinel"]):
            for who in ("lab", "throwaway"):
                assert f"'{who}->{target}': 'InsufficientPrivilegeError: permission denied for database" in refused, (
                    f"the {who} role's attempt on {target} should be refused with 'permission denied for database': "
                    f"{refused[:1000]}"
                )


def test_a_batch_writes_a_summary_with_every_learner(batch):
    out, proc, _ = batch
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["learner"] for row in rows] == sorted([*NAMES, "caf_31mlearner"], key=str.encode)
    for row in rows:
        if row["learner"] in RECIPES:
            expected = json.loads((EXPECTED / row["learner"] / "expected.json").read_text())
            assert float(row["total"]) == expected["score"], row
    assert "all tests passed" not in proc.stdout.lower(), "say 'all public checks passed': hidden ones may exist"
