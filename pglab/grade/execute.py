"""One sandboxed pytest run of a lab: pipes in, pipes out, limits, and nothing left running.

The lab's console output is read from a pipe keeping only its tail; the result
channel is a second pipe, bounded; a one-time token goes in through a third. With
bubblewrap the database is reached through a per-lab proxy socket; the run is
killed as a whole at the time limit.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import sandbox
from .collector import CHANNEL_ENV
from .limits import CHANNEL_LIMIT, LOG_TAIL, PROXY_CONNECTIONS, Limits, preexec
from .proxy import DatabaseProxy
from .report import clean
from .scoring import parse_channel
from .workspace import base_env, pytest_args


class _Tail:
    """Reads a pipe to its end in a thread, keeping only the last `limit` bytes."""

    def __init__(self, fd: int, limit: int, keep_all: bool = False) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.limit, self.keep_all, self.overflow = limit, keep_all, False
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                if self.keep_all and self.size + len(chunk) > self.limit:
                    self.overflow = True  # more records than any lab sends: stop accepting, keep draining
                    continue
                self.chunks.append(chunk)
                self.size += len(chunk)
                while not self.keep_all and self.size - len(self.chunks[0]) >= self.limit:
                    self.size -= len(self.chunks.popleft())

    def text(self, timeout: float = 10) -> bytes:
        self._thread.join(timeout)
        return b"".join(self.chunks)[-self.limit:] if not self.keep_all else b"".join(self.chunks)


def run_lab(work: Path, files: list[str], dsn: str, limits: Limits, jobs: int,
            databases: Collection[str]) -> tuple[list[dict[str, Any]], int, str, bool]:
    """pytest on the lab in its sandbox; (records, foreign lines, problem, channel overflow).

    `dsn` logs in to the lab's own database, the only one its proxy lets it open;
    `databases` names the server's others, refused as the server would refuse them.
    """
    kind = sandbox.kind()
    parts = urlsplit(dsn)
    token = secrets.token_hex(16)
    token_read, token_write = os.pipe()
    out_read, out_write = os.pipe()
    log_read, log_write = os.pipe()
    os.write(token_write, token.encode())
    os.close(token_write)
    inherit = [token_read, out_write]
    for fd in inherit:
        os.set_inheritable(fd, True)
    proxy = None
    if kind == "bubblewrap":
        course_dir, target = sandbox.COURSE, sandbox.SUBMISSION
        proxy = DatabaseProxy(work / "sock", parts.hostname or "127.0.0.1", parts.port or 5432, PROXY_CONNECTIONS,
                              database=unquote(parts.path.lstrip("/")), existing=databases)
        inner_dsn = dsn.replace(f"@{parts.hostname}:", "@127.0.0.1:", 1)
    else:
        course_dir, target, inner_dsn = str(work / "course"), str(work / "submission"), dsn
    args = [*pytest_args(course_dir, files), "--target", target]
    if limits.test_timeout:  # a hanging check then fails alone, and the lab goes on
        args += ["-o", f"timeout={limits.test_timeout:g}"]
    env = {**base_env(course_dir), "HOME": "/tmp" if kind == "bubblewrap" else str(work),
           "TMPDIR": "/tmp" if kind == "bubblewrap" else tempfile.gettempdir(),
           "DATABASE_URL": inner_dsn, "PGLAB_TARGET": target, CHANNEL_ENV: f"{token_read},{out_write}"}
    if kind == "bubblewrap":
        inbox = [sys.executable, "-m", "pglab.grade.inbox", f"{sandbox.SOCKET_DIR}/{proxy.path.name}",
                 str(parts.port or 5432), "--", *args]
        command = sandbox.command(work, limits.tmp_mib, env, inbox)
        kwargs: dict[str, Any] = {"env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "cwd": "/"}
    else:
        command = [sys.executable, "-m", "pytest", *args]
        kwargs = {"env": env, "cwd": course_dir}
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_write, stderr=log_write,
                                start_new_session=True, pass_fds=inherit,
                                preexec_fn=preexec(limits, sandboxed=kind == "bubblewrap", sandboxes=jobs), **kwargs)
    finally:
        for fd in (token_read, out_write, log_write):
            os.close(fd)
    log = _Tail(log_read, LOG_TAIL)  # started after the fork: no thread holds a lock the child needs
    channel = _Tail(out_read, CHANNEL_LIMIT, keep_all=True)
    problem = ""
    try:
        code = proc.wait(timeout=limits.timeout)
        if code not in (0, 1):
            problem = f"the test run stopped abnormally (exit code {code})"
    except subprocess.TimeoutExpired:
        problem = f"timed out after {limits.timeout:g} s"
    finally:
        _kill(proc)
        if proxy is not None:
            proxy.close()  # every connection the lab still held ends here
    records, foreign = parse_channel(channel.text(), token)
    if not records and not problem:
        problem = "the test run reported nothing"
    if problem and not records:
        problem += f": {clean(log.text().decode('utf-8', 'replace')[-300:], 300)}"
    return records, foreign, problem, channel.overflow


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the lab's whole session; a sandbox's PID namespace dies with its first process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


