"""Resource limits of a graded lab: time, memory, file size, processes, output kept."""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # not on Windows: the time limit remains
    resource = None  # type: ignore[assignment]
from collections.abc import Callable
from dataclasses import dataclass

MESSAGE_LIMIT = 65_535  # characters of a `message`, as Exercism's test runners cap it
OUTPUT_LIMIT = 500  # characters of a test's `output`, as in Exercism's v3 format
LOG_TAIL = 64 * 1024  # bytes of a lab's console output the grader keeps (the rest is discarded unread)
CHANNEL_LIMIT = 4 << 20  # bytes of result records the grader accepts from one lab
SUBMISSION_FILE_LIMIT = 1 << 20  # a lab module larger than 1 MiB is refused
CONNECTIONS = 120  # the lab role's CONNECTION LIMIT (PgBouncer checks need headroom: it retries a refusal slowly)
PROXY_CONNECTIONS = CONNECTIONS + 20  # the socket's cap, for the lab's throw-away roles too


@dataclass(frozen=True)
class Limits:
    """What one lab may use; every field is enforced by the grader, not asked of the lab."""

    timeout: float = 300.0  # wall clock for the whole lab, seconds
    test_timeout: float | None = None  # per check (pytest-timeout); None keeps the course's setting
    memory_mib: int = 2048  # address space
    file_mib: int = 64  # largest file the lab may write
    tmp_mib: int = 256  # its private /tmp
    processes: int = 256  # processes of the sandbox's uid

    def validate(self) -> None:
        """Raise ValueError naming the first limit that is not positive."""
        for name in ("timeout", "memory_mib", "file_mib", "tmp_mib", "processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.split('_')[0]} must be positive")
        if self.test_timeout is not None and self.test_timeout <= 0:
            raise ValueError("--test-timeout must be positive")


def preexec(limits: Limits, *, sandboxed: bool, sandboxes: int = 1) -> Callable[[], None] | None:
    """A `preexec_fn` setting the rlimits in the lab's process before it starts (POSIX only)."""
    if os.name != "posix" or resource is None:
        return None

    def apply() -> None:
        wanted = [(resource.RLIMIT_AS, limits.memory_mib << 20), (resource.RLIMIT_FSIZE, limits.file_mib << 20),
                  (resource.RLIMIT_CORE, 0)]
        if sandboxed:  # counted per uid (threads too), shared by the sandboxes running at once
            wanted.append((resource.RLIMIT_NPROC, limits.processes * sandboxes))
        for which, value in wanted:
            try:
                resource.setrlimit(which, (value, value))
            except (ValueError, OSError):  # not enforceable here (macOS): the time limit remains
                pass

    return apply
