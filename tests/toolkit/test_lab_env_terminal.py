"""`make lab`'s JupyterLab terminal has the course's environment: `pglab` and `python` are the venv's.

Runs the Makefile's own `lab` recipe in a copy of the course (sharing this venv
and the course server), then asks the running server for a terminal over its
REST API and websocket, and runs `command -v pglab` in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pglab.servers.database import database_url

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def course_copy(tmp_path) -> Path:
    """The course's Makefile and files, with a `.venv/bin` pointing at this venv (already installed)."""
    copy = tmp_path / "course"
    for name in ("pglab", "labs", "solutions", "tutorials", "tests"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("Makefile", "course.toml", "pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, copy / name)
    (copy / ".venv").mkdir()
    (copy / ".venv" / "bin").symlink_to(VENV_BIN)
    (copy / ".venv" / ".installed").touch()  # newer than requirements.txt: make installs nothing
    return copy


def new_terminal(port: int, token: str) -> str:
    """Create a terminal through the REST API; its name."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/terminals", data=b"", method="POST",
                                     headers={"Authorization": f"token {token}"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())["name"]


async def terminal_says(port: int, token: str, name: str, command: str, marker: str, timeout: float = 30) -> str:
    """Type `command` in terminal `name` over its websocket; its output up to `marker`."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(f"ws://127.0.0.1:{port}/terminals/websocket/{name}?token={token}")
    try:
        await ws.write_message(json.dumps(["stdin", command + "\r"]))
        output = ""
        deadline = time.monotonic() + timeout
        while marker not in output:
            message = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert message is not None, f"the terminal closed; it printed:\n{output}"
            kind, *payload = json.loads(message)
            if kind == "stdout":
                output += payload[0]
        return output
    finally:
        ws.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_jupyterlab_terminal_of_make_lab_finds_the_course_pglab(course_copy):
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "DATABASE_URL": database_url(), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PGLAB_HOME", None)
    args = f"--no-browser --ServerApp.port={port} --IdentityProvider.token={token} --ServerApp.port_retries=0"
    proc = subprocess.Popen(["make", "lab", f"ARGS={args}"], cwd=course_copy, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, f"make lab exited:\n{proc.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)
        command = 'command -v pglab; command -v python; echo "venv=$VIRTUAL_ENV"; echo END-$((40+2))'
        output = asyncio.run(terminal_says(port, token, new_terminal(port, token), command, "END-42"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the JupyterLab it started, nothing else
        proc.wait(timeout=30)
    venv = course_copy / ".venv"
    assert f"{venv}/bin/pglab" in output, f"`pglab` is not the course's in the terminal:\n{output}"
    assert f"{venv}/bin/python" in output, f"`python` is not the course's in the terminal:\n{output}"
    assert f"venv={venv}" in output, output
