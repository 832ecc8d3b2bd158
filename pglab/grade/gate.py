"""The database gate of a graded lab: its connections may open its own database, no other.

PostgreSQL grants CONNECT on every database to PUBLIC, and the grader may not revoke it
on a server it shares (the course's database, `postgres`, other users'). Nor on the
lab's own database: the roles a lab's checks create must log in to it, and nothing
grants them a privilege when they are created. So the grader's proxy reads the first
message of every connection (https://www.postgresql.org/docs/current/protocol-message-formats.html)
and lets through only a startup for the lab's database, or a cancel request. Any other
database is refused as the server refuses a database without CONNECT
(SQLSTATE 42501, "permission denied for database"), or one that does not exist (3D000).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Collection

CANCEL_REQUEST, SSL_REQUEST, GSSENC_REQUEST = 80877102, 80877103, 80877104
MAX_STARTUP = 10_000  # the server's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH)
HANDSHAKE_TIMEOUT = 15.0  # seconds a client may take to send its startup message


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection during its startup")
        data += chunk
    return data


def database_of(body: bytes) -> bytes:
    """The database a startup message's parameters ask for: `database`, else the user's name, as the server does."""
    fields = body.split(b"\0")
    params: dict[bytes, bytes] = {}
    for key, value in zip(fields[::2], fields[1::2], strict=False):  # the list ends in empty fields
        if not key:
            break
        params[key] = value  # a repeated key: the last one wins, on the server too
    return params.get(b"database") or params.get(b"user", b"")


def error_response(sqlstate: str, message: str, detail: str) -> bytes:
    """A FATAL ErrorResponse message, as the server sends one before authentication."""
    fields = b"".join(code + text.encode("utf-8", "replace") + b"\0" for code, text in (
        (b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message), (b"D", detail)))
    return b"E" + struct.pack("!I", 4 + len(fields) + 1) + fields + b"\0"


def refusal(database: bytes, existing: Collection[str]) -> bytes:
    """The server's answer for a database the lab may not open: no privilege if it exists, else not found."""
    name = database[:63].decode("utf-8", "replace")
    if name in existing:
        return error_response("42501", f'permission denied for database "{name}"',
                              "A graded lab may connect only to its own database.")
    return error_response("3D000", f'database "{name}" does not exist', "")


def admit(client: socket.socket, database: str, existing: Collection[str]) -> bytes | None:
    """Read the client's startup; the bytes to forward to the server, or None (refused, answered, or gone).

    SSL and GSSAPI encryption requests get "N" (the socket is local): the startup
    message that follows must be readable here.
    """
    client.settimeout(HANDSHAKE_TIMEOUT)
    try:
        for _ in range(3):  # at most a GSSAPI request, an SSL request, then the startup
            head = _read_exactly(client, 8)
            length, code = struct.unpack("!II", head)
            if not 8 <= length <= MAX_STARTUP:
                return None
            body = _read_exactly(client, length - 8)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                client.sendall(b"N")
                continue
            if code == CANCEL_REQUEST:
                return head + body  # a backend's pid and secret key: the server checks them
            if code >> 16 != 3:  # not protocol 3.x
                return None
            asked = database_of(body)
            if asked == database.encode():
                client.settimeout(None)
                return head + body
            client.sendall(refusal(asked, existing))
            return None
    except OSError:  # a timeout, a reset, a client gone (ConnectionError is one)
        return None
    return None
