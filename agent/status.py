"""The status socket (CONTRACTS.md): JSON lines over a Unix socket anyone may read.

One request per line, at most 64 KiB; replies are one JSON object per line. Reading ops
(`status`, `watch`, `lookup`, `query`) are open to all; the mutating ones (`renew`,
`reload`, `purge-cache`) only to root and members of `status_group`, checked with
SO_PEERCRED. Bad input gets a clear error (`bad-request`, `unknown-op`, `forbidden`,
`too-large`) and never harms the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)
MAX_LINE = 64 * 1024
READ_OPS = ("status", "watch", "lookup", "query")
MUTATING_OPS = ("renew", "reload", "purge-cache")
Handler = Callable[[dict], Awaitable[dict]]


def error(code: str, message: str) -> dict:
    return {"v": 1, "error": {"code": code, "message": message}}


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def may_mutate(uid: int, gid: int, status_group: str | None) -> bool:
    if uid == 0:
        return True
    if not status_group:
        return False
    try:
        group = grp.getgrnam(status_group)
    except KeyError:
        return False
    if gid == group.gr_gid:
        return True
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return user in group.gr_mem


class StatusServer:
    def __init__(self, path: Path, snapshot: Callable[[], dict], handlers: dict[str, Handler],
                 status_group: str | None = None,
                 on_error: Callable[[BaseException], None] | None = None):
        self.path = path
        self.on_error = on_error
        self.snapshot = snapshot
        self.handlers = handlers
        self.status_group = status_group
        self.counters: dict[str, int] = {}
        self._watchers: set[asyncio.Queue[dict]] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if await _alive(self.path):
                raise OSError(f"{self.path}: another agent is answering there")
            self.path.unlink()  # stale, left by a crash
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=MAX_LINE + 1)
        os.chmod(self.path, 0o666)  # anyone may read; mutating ops are checked per peer

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for queue in list(self._watchers):
                queue.put_nowait({})  # wake the watchers so they end
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def changed(self) -> None:
        """Something a snapshot shows has changed: every watcher gets a new line."""
        if not self._watchers:
            return
        try:
            snap = self.snapshot()
        except Exception as exc:
            self._internal(exc)
            return
        for queue in self._watchers:
            if queue.qsize() < 16:  # a watcher that does not read is not waited for
                queue.put_nowait(snap)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _internal(self, exc: BaseException) -> dict:
        """A fault of the daemon behind a request: answered, counted, reported once."""
        self._count("internal")
        log.error("status socket: %s: %s", type(exc).__name__, exc, exc_info=exc)
        if self.on_error is not None:
            self.on_error(exc)
        return error("internal", f"{type(exc).__name__}: {exc}"[:300])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, uid, gid = peer_credentials(writer.get_extra_info("socket"))
        except OSError:
            uid = gid = -1
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    self._count("too-large")
                    await _send(writer, error("too-large", f"a request is at most {MAX_LINE} "
                                                           "bytes"))
                    return
                except asyncio.IncompleteReadError:
                    return
                try:
                    reply = await self._request(line, uid, gid, writer)
                except (ConnectionError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # never the daemon's end: the client is told
                    reply = self._internal(exc)
                if reply is None:  # a watch ended
                    return
                await _send(writer, reply)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _request(self, line: bytes, uid: int, gid: int,
                       writer: asyncio.StreamWriter) -> dict | None:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self._count("bad-request")
            return error("bad-request", "not a JSON object")
        if not isinstance(request, dict) or request.get("v") != 1 or \
                not isinstance(request.get("op"), str):
            self._count("bad-request")
            return error("bad-request", 'expected {"v": 1, "op": "..."}')
        op = request["op"]
        if op in MUTATING_OPS and not may_mutate(uid, gid, self.status_group):
            self._count("forbidden")
            return error("forbidden", f'"{op}" is for root and the status group only')
        if op == "status":
            return self.snapshot()
        if op == "watch":
            await self._watch(writer)
            return None
        handler = self.handlers.get(op)
        if handler is None:
            self._count("unknown-op")
            return error("unknown-op", f"unknown op {op!r}")
        try:
            return await handler(request)
        except (KeyError, TypeError, ValueError) as exc:
            self._count("bad-request")
            return error("bad-request", f"{op}: {exc}")

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[dict] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            await _send(writer, self.snapshot())
            while True:
                snap = await queue.get()
                if not snap:
                    return
                await _send(writer, snap)
        finally:
            self._watchers.discard(queue)


async def _send(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


async def _alive(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


# -- the client side (the CLI) ------------------------------------------------------------

def request(path: Path, obj: dict, timeout: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(obj).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def watch(path: Path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(b'{"v":1,"op":"watch"}\n')
        for line in s.makefile("rb"):
            yield json.loads(line)
