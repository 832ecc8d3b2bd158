"""A Unix socket in front of the course server's TCP port, one per graded lab.

The sandbox has no network: this socket, bound into it, is its only way to the
database. It admits only connections to the lab's own database (gate.py), caps the
lab's concurrent connections, and closing it ends every connection the lab still
had, so no session of the lab outlives its sandbox.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Collection
from pathlib import Path

from .gate import admit


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DatabaseProxy:
    """Listens on `<folder>/.s.PGSQL.5432` and joins each client asking for `database` to host:port over TCP.

    `existing` names the server's databases, so that a refusal says what the server
    would: no privilege for one that exists, "does not exist" for any other.
    """

    def __init__(self, folder: Path, host: str, port: int, max_connections: int, *, database: str,
                 existing: Collection[str]) -> None:
        self.path = folder / ".s.PGSQL.5432"
        self._target = (host, port)
        self._database, self._existing = database, existing
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        os.chmod(self.path, 0o666)  # the sandbox's unprivileged uid must be able to connect
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._serve, name=f"db-proxy {folder.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if not self._slots.acquire(blocking=False):  # over the cap: refused, as a full server would
                client.close()
                continue
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._join, args=(client,), daemon=True).start()

    def _join(self, client: socket.socket) -> None:
        upstream = None
        try:  # the startup is read here, not in the accept loop: a slow client delays no other
            first = admit(client, self._database, self._existing)
            if first is not None:
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
                # Small protocol messages: without this, Nagle and delayed ACKs add ~40 ms a round trip.
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:
                    self._open.add(upstream)
                upstream.sendall(first)
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join()
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()
            self._slots.release()

    def close(self) -> None:
        """Stop listening and cut every connection the lab still holds."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.path.unlink(missing_ok=True)
