"""The sandbox of one graded lab: bubblewrap, or nothing (with a loud notice).

With bubblewrap the lab runs as an unprivileged uid (`nobody`, or the grader's own
uid when it is not root) in its own user, PID, IPC, UTS and network namespaces,
killed as a whole when it ends. It sees the system's read-only `/usr`, the Python
and virtual environment it runs on (read-only), a copy of the course made for this
lab alone (`/course`: the toolkit, this lab's checks and no `solutions/` but the
reference labs its checks build on, no `.pglab/`), its own submission file
(read-only), a private size-limited `/tmp`, and one Unix socket to the database.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

BWRAP = "bwrap"
SANDBOX_USER = "nobody"
COURSE = "/course"  # where the course copy appears inside
SUBMISSION = "/submission"
SOCKET_DIR = "/run/pglab"
_NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/localtime", "/etc/ld.so.cache")


def _as_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def kind() -> str:
    """"bubblewrap" when a sandbox can be made on this machine, else "none"."""
    tools = [BWRAP, *(("unshare", "setpriv", "mount") if _as_root() else ())]
    if os.environ.get("PGLAB_GRADE_NO_SANDBOX") or not all(map(shutil.which, tools)):
        return "none"
    try:
        pwd.getpwnam(SANDBOX_USER)
        probe = subprocess.run([*_drop_root([]), BWRAP, *_NAMESPACES, "--ro-bind", "/", "/", "true"],
                               capture_output=True, timeout=30)
    except (OSError, KeyError, subprocess.SubprocessError):
        return "none"
    return "bubblewrap" if probe.returncode == 0 else "none"


def _drop_root(mounts: list[tuple[Path, Path]]) -> list[str]:
    """As root: bind `mounts` in a private mount namespace, then become `nobody` to start bubblewrap.

    `nobody` cannot traverse to a Python under /root; the bind gives it a path it can.
    """
    if not _as_root():
        return []
    user = pwd.getpwnam(SANDBOX_USER)
    script = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'
    pairs = [str(part) for pair in mounts for part in pair]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *pairs, "--",
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


def _python_dirs() -> list[Path]:
    """The virtual environment and the Python installation it runs on."""
    dirs = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix)}
    return sorted(d for d in dirs if not any(str(d).startswith(s + "/") for s in _SYSTEM))


def command(work: Path, tmp_mib: int, env: dict[str, str], argv: list[str]) -> list[str]:
    """The command line running `argv` in a sandbox made of `work`/{course,submission,sock}."""
    mounts = [(path, work / "mnt" / str(n)) for n, path in enumerate(_python_dirs())]
    for _, stage in mounts:
        stage.mkdir(parents=True, mode=0o755)
    args = [*_drop_root(mounts), BWRAP, *_NAMESPACES, "--die-with-parent", "--new-session", "--disable-userns",
            "--hostname", "pglab-grade", "--proc", "/proc", "--dev", "/dev",
            # The private /tmp first: binds made after it stay visible, so a course or a
            # virtual environment that lives under /tmp (a CI checkout) is still there.
            "--size", str(tmp_mib << 20), "--tmpfs", "/tmp"]
    for path in _SYSTEM:
        if os.path.lexists(path):
            args += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    for path in _ETC:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path, stage in mounts:
        args += ["--ro-bind", str(stage if _as_root() else path), str(path)]
    args += ["--ro-bind", str(work / "course"), COURSE, "--tmpfs", f"{COURSE}/.pglab",
             "--ro-bind", str(work / "submission"), SUBMISSION, "--ro-bind", str(work / "sock"), SOCKET_DIR,
             "--chdir", COURSE, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *argv]
