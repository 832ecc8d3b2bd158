"""`pglab grade` on single submissions: limits, hidden checks, bad arguments, full marks, bin/run.sh."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_grade_helpers import RECIPES, ROOT, build_submission, grade, lab_text

from pglab.grade import sandbox


@pytest.fixture(scope="module")
def correct(tmp_path_factory: pytest.TempPathFactory):
    return build_submission(tmp_path_factory.mktemp("learner") / "all_correct", RECIPES["19_all_correct"])


def test_hidden_checks_count_and_are_reported_by_name_and_status_only(correct, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "test_lab00_first_contact_hidden.py").write_text(
        "def test_hidden_check_passes(load_lab):\n"
        "    assert load_lab('lab00_first_contact').connect_query_close\n\n"
        "def test_hidden_check_fails():\n"
        "    assert False, 'an instructor-only secret: the hidden expected value is 42'\n"
    )
    out = tmp_path / "out"
    proc = grade("--submission", str(correct), "--lab", "0", "--extra-tests", str(extra), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    statuses = {t["name"]: t["status"] for t in report["tests"]}
    assert statuses.pop("test_hidden_check_passes") == "pass"
    assert statuses.pop("test_hidden_check_fails") == "fail"
    assert set(statuses.values()) == {"pass"}
    assert report["status"] == "fail" and "all" not in report["message"], report["message"]
    texts = proc.stdout + proc.stderr + (out / "results.json").read_text() + (out / "junit.xml").read_text()
    assert "instructor-only secret" not in texts and "hidden expected value" not in texts


def test_without_a_sandbox_the_grader_still_grades_and_says_so_everywhere(correct, tmp_path):
    out = tmp_path / "out"
    proc = grade("--submission", str(correct), "--lab", "00", "--out", str(out), PGLAB_GRADE_NO_SANDBOX="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert (report["isolation"], report["score"]) == ("none", 5.0), report["message"]
    assert report["message"].startswith("NOT ISOLATED"), report["message"]
    assert "NOT ISOLATED" in proc.stdout and "NOT ISOLATED" in proc.stderr


def test_a_lab_that_escapes_the_per_check_timeout_is_killed_and_reported(tmp_path):
    # Blocking SIGALRM defeats pytest-timeout: only the grader's own time limit is left.
    labs = tmp_path / "stuck" / "labs"
    labs.mkdir(parents=True)
    (labs / "lab00_first_contact.py").write_text(
        "import signal\n\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\nwhile True:\n    pass\n"
    )
    out = tmp_path / "out"
    proc = grade("--submission", str(labs.parent), "--lab", "00", "--timeout", "8", "--test-timeout", "1",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["status"] == "error" and "timed out after 8 s" in report["message"], report["message"]
    assert {t["status"] for t in report["tests"]} == {"error"}, "every check of the lab is reported"


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux only")
def test_the_memory_limit_turns_a_memory_hog_into_a_failed_check(tmp_path):
    labs = tmp_path / "hog" / "labs"
    labs.mkdir(parents=True)
    solution = lab_text("lab00_first_contact", "solved")
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
    (["--submission", "{learner}", "--lab", "99"], "there is no lab '99'"),
    (["--submission", "{learner}/labs"], "has no labs/ folder"),
    (["--submission", "{learner}/missing"], "is not a folder"),
    ([], "give exactly one of --submission"),
    (["--submission", "{learner}", "--timeout", "0"], "must be positive"),
    (["--submission", "{learner}", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_arguments_fail_with_one_clear_line(correct, args, says):
    proc = grade(*(arg.format(learner=correct) for arg in args))
    assert proc.returncode == 2, f"expected exit code 2, got {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr


def test_bin_run_sh_writes_an_exercism_results_json(correct, tmp_path):
    out = tmp_path / "run-out"
    proc = subprocess.run([str(ROOT / "bin" / "run.sh"), "lab00", f"{correct}/", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert (report["version"], report["status"], report["score"]) == (3, "pass", 5.0), report["message"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_complete_correct_submission_gets_full_marks_on_every_lab(tmp_path):
    # Each lab runs in the grader's sandbox (own database, non-superuser role, no network but
    # the database): a check that needs more than that would cost honest learners points.
    recipe = {path.stem: {"base": "solved"} for path in sorted((ROOT / "solutions").glob("lab*.py"))}
    submission = build_submission(tmp_path / "complete", recipe)
    out = tmp_path / "out"
    proc = grade("--submission", str(submission), "--jobs", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["isolation"] == sandbox.kind()
    lost = [f"lab {t['lab']} {t['name']}: {t['message'][:300]}" for t in report["tests"]
            if t["status"] not in ("pass", "skip")]
    assert not lost, "the reference solutions lose points under the grader:\n" + "\n".join(lost)
    assert report["score"] == report["max_score"] == sum(lab["max_points"] for lab in report["labs"])
    assert all(lab["integrity"] == "ok" for lab in report["labs"])
