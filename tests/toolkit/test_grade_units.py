"""The grader's parts that need no server: cleaning texts, the source scan, reconciling records."""

from __future__ import annotations

import base64
import json
import os
import time

from pglab.grade.hygiene import learner_name, read_lab
from pglab.grade.report import clean, clean_tail, hide_secret
from pglab.grade.scoring import Canaries, parse_channel, reconcile, scan

PASSWORD = "Zq7-secret_Pw9x"


def test_a_password_is_masked_plain_reversed_spaced_encoded():
    hide_secret(PASSWORD)
    for form in (PASSWORD, PASSWORD[::-1], " ".join(PASSWORD), "-".join(PASSWORD), PASSWORD.encode().hex(),
                 base64.b64encode(PASSWORD.encode()).decode(), base64.b64encode(b"ab" + PASSWORD.encode()).decode()):
        text = clean(f"before {form} after")
        assert PASSWORD not in text and form not in text, (form, text)


def test_escapes_and_xml_illegal_characters_are_removed_and_sizes_capped():
    text = clean("\x1b[2J\x1b[31mred\x1b]0;title\x07 \x00\x01\x0b\ud800 ok" + "m" * 100_000)
    assert "\x1b" not in text and "\x00" not in text and "\ud800" not in text and text.startswith("red")
    assert len(text) == 65_535
    assert len(clean_tail("x" * 10_000)) == 500 and clean_tail("short") == "short"


def test_the_scan_flags_what_a_lab_never_needs_and_ignores_comments():
    assert scan("# run `pglab check 01`, see pytest docs\nimport asyncpg\nname = 'pglab'\n") == ""
    for source in ("import _pytest.runner", "from unittest import SkipTest", "import pglab.targets",
                   "x = __import__('os')", "open('/proc/self/fd/3')", "sys.settrace(None)"):
        assert scan(source), source


def test_a_check_passes_only_when_every_phase_reported_passed(tmp_path):
    (tmp_path / "tests" / "labs").mkdir(parents=True)
    canaries = Canaries.plant(tmp_path / "tests" / "labs")
    token = "T0KEN"
    collected = [{"nodeid": f"f.py::{n}", "declared_skip": n == "bouncer"}
                 for n in ("ok", "failed", "missing", "skipped", "bouncer", "no_teardown")]

    def phase(nodeid: str, when: str, outcome: str, message: str = "") -> str:
        return token + json.dumps({"kind": "phase", "nodeid": nodeid, "when": when, "outcome": outcome,
                                   "message": message})

    lines = [phase("f.py::ok", w, "passed") for w in ("setup", "call", "teardown")]
    lines += [phase("f.py::failed", "setup", "passed"), phase("f.py::failed", "call", "failed", "boom")]
    lines += [phase("f.py::skipped", "setup", "skipped", "Skipped: why not")]
    lines += [phase("f.py::bouncer", "setup", "skipped", "PgBouncer checks skipped: none here")]
    lines += [phase("f.py::no_teardown", w, "passed") for w in ("setup", "call")]
    lines += [phase(n, w, o) for n, o in canaries.expected.items() for w in ("setup", "call", "teardown")
              if not (w != "call" and o == "failed")]
    records, foreign = parse_channel("\n".join([*lines, "f.py::missing PASSED"]).encode(), token)
    verdict = reconcile(collected, records, foreign, canaries, "")
    statuses = {r["name"]: r["status"] for r in verdict.rows}
    assert statuses == {"ok": "pass", "failed": "fail", "missing": "error", "skipped": "skip", "bouncer": "skip",
                        "no_teardown": "error"}
    assert [r.get("declared", False) for r in verdict.rows][3:5] == [False, True]
    assert "did not come from the grader's plugin" in verdict.suspect  # the fake PASSED line


def test_a_canary_with_the_wrong_outcome_makes_the_run_suspect(tmp_path):
    (tmp_path / "tests" / "labs").mkdir(parents=True)
    canaries = Canaries.plant(tmp_path / "tests" / "labs")
    records = [{"kind": "phase", "nodeid": n, "when": "call", "outcome": "passed"} for n in canaries.expected]
    verdict = reconcile([], records, 0, canaries, "")
    assert "canary" in verdict.suspect


def test_links_out_of_the_submission_are_refused_and_odd_names_made_safe(tmp_path):
    (tmp_path / "other.py").write_text("secret = 1\n")
    labs = tmp_path / "me" / "labs"
    labs.mkdir(parents=True)
    (labs / "lab00_first_contact.py").symlink_to(tmp_path / "other.py")
    content, why = read_lab(tmp_path / "me", "lab00_first_contact")
    assert content is None and "outside the submission" in why
    assert learner_name(tmp_path / os.fsdecode(b"caf\xe9\x1b[0m")) == "caf_0m"


def test_the_database_proxy_caps_a_labs_connections_and_cuts_them_when_closed(tmp_path):
    import socket
    import struct
    import threading

    from pglab.grade.proxy import DatabaseProxy

    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(server.accept()[0]) for _ in range(2)], daemon=True).start()
    proxy = DatabaseProxy(tmp_path, "127.0.0.1", server.getsockname()[1], max_connections=2, database="lab",
                          existing=())
    clients = []
    for _ in range(3):
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(10)
        client.connect(str(proxy.path))
        clients.append(client)
    assert clients[2].recv(1) == b"", "a connection over the cap must be closed at once"
    params = b"user\0lab\0database\0lab\0\0"
    startup = struct.pack("!II", 8 + len(params), 3 << 16) + params
    clients[0].sendall(startup)
    accepted_at = time.monotonic()
    while not accepted and time.monotonic() - accepted_at < 10:
        time.sleep(0.01)
    assert accepted, "a startup for the lab's own database must be forwarded to the server"
    accepted[0].settimeout(10)
    assert accepted[0].recv(len(startup), socket.MSG_WAITALL) == startup, "the startup must reach the server as sent"
    proxy.close()
    assert clients[0].recv(16) == b"", "closing the proxy must cut the lab's connections"
    server.close()
