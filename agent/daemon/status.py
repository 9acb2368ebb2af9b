"""The status socket (dicom-agent(8), STATUS SOCKET): JSON lines over a Unix socket anyone may read.

One request per line, at most 64 KiB; replies are one JSON object per line. Reading ops
(`status`, `watch`, `lookup`, `query`) are open to all; the mutating ones (`renew`,
`reload`, `purge-cache`, `accept-time-step`) only to root and members of `status_group`,
checked with SO_PEERCRED (the user and group look-ups run off the event loop). Bad input
gets a clear error (`bad-request`, `unknown-op`, `forbidden`, `too-large`) and never
harms the daemon.

A local user cannot exhaust it: at most MAX_CLIENTS connections at once (fewer when the
process's file limit is low) and MAX_PER_UID per user other than root — a client over a
cap is told `busy` and closed; a request line must arrive within REQUEST_DEADLINE (a
`watch` then stays, counted in the caps); JSON deeper than MAX_DEPTH, numbers longer than
MAX_DIGITS, NaN and infinities are `bad-request`; `v` must be the integer 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)
MAX_LINE = 64 * 1024
MAX_CLIENTS = 256  # connections at once (see client_cap: a quarter of the file limit)
MAX_PER_UID = 16  # connections at once per user other than root
BACKLOG = 128  # the listen queue
ACCEPT_PAUSE = 0.5  # s without accepting after accept() failed (EMFILE, ENFILE, ENOBUFS)
REQUEST_DEADLINE = 10.0  # s for a request line to arrive
MAX_DEPTH = 8  # nesting of arrays and objects in a request
MAX_DIGITS = 20  # characters of a number in a request
READ_OPS = ("status", "watch", "lookup", "query")
MUTATING_OPS = ("renew", "reload", "purge-cache", "accept-time-step")
ERROR_CODES = ("bad-request", "unknown-op", "forbidden", "too-large", "busy", "internal")
Handler = Callable[[dict], Awaitable[dict]]


def error(code: str, message: str) -> dict:
    return {"v": 1, "error": {"code": code, "message": message}}


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def client_cap() -> int:
    """MAX_CLIENTS, or a quarter of the open-file limit if that is lower: the daemon's
    own files and sockets must never meet EMFILE because of the socket's clients."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return MAX_CLIENTS
    return max(4, min(MAX_CLIENTS, soft // 4)) if soft > 0 else MAX_CLIENTS


def _depth(line: bytes) -> int:
    """The deepest nesting of arrays and objects, strings skipped (before json.loads, so a
    deep request cannot reach its recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _number(text: str) -> int | float:
    if len(text) > MAX_DIGITS:
        raise ValueError(f"a number of {len(text)} characters")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON this socket takes")


def parse_request(line: bytes) -> dict:
    """A request object, or ValueError saying why not."""
    if _depth(line) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    try:
        request = json.loads(line, parse_int=_number, parse_float=_number,
                             parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    v = request.get("v")
    if type(v) is not int or v != 1 or not isinstance(request.get("op"), str):
        raise ValueError('expected {"v": 1, "op": "..."}')
    return request


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
        self.cap = client_cap()
        self._connected: dict[int, int] = {}  # uid -> connections now
        self._watchers: set[asyncio.Queue[dict]] = set()
        self._listener: socket.socket | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if await _alive(self.path):
                raise OSError(f"{self.path}: another agent is answering there")
            self.path.unlink()  # stale, left by a crash
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(BACKLOG)
        listener.setblocking(False)
        os.chmod(self.path, 0o666)  # anyone may read; mutating ops are checked per peer
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        """Accept what is waiting, one connection at a time: a client over a cap is told
        `busy` and closed here and now, so a flood never holds descriptors (asyncio's own
        server accepts a whole backlog before any handler runs)."""
        loop = asyncio.get_running_loop()
        for _ in range(BACKLOG):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait, never die
                self._count("accept-error")
                log.warning("status socket: accept: %s; pausing %.1f s", exc, ACCEPT_PAUSE)
                loop.remove_reader(self._listener.fileno())
                loop.call_later(ACCEPT_PAUSE, self._resume)
                return
            try:
                _, uid, gid = peer_credentials(conn)
            except OSError:
                uid = gid = -1
            mine = self._connected.get(uid, 0)
            if sum(self._connected.values()) >= self.cap or (uid != 0 and mine >= MAX_PER_UID):
                self._count("busy")
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(json.dumps(error("busy", "too many clients; try again"))
                              .encode() + b"\n")
                conn.close()
                continue
            self._connected[uid] = mine + 1
            task = loop.create_task(self._client(conn, uid, gid))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    def _resume(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            for queue in list(self._watchers):
                queue.put_nowait({})  # wake the watchers so they end
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(self._clients, timeout=2.0)
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

    async def _client(self, conn: socket.socket, uid: int, gid: int) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE + 1)
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_DEADLINE)
                except asyncio.LimitOverrunError:
                    self._count("too-large")
                    await _send(writer, error("too-large", f"a request is at most {MAX_LINE} "
                                                           "bytes"))
                    return
                except TimeoutError:
                    self._count("timeout")
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
            left = self._connected.get(uid, 1) - 1
            if left:
                self._connected[uid] = left
            else:
                self._connected.pop(uid, None)
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _request(self, line: bytes, uid: int, gid: int,
                       writer: asyncio.StreamWriter) -> dict | None:
        try:
            request = parse_request(line)
        except ValueError as exc:
            self._count("bad-request")
            return error("bad-request", str(exc)[:200])
        op = request["op"]
        if op in MUTATING_OPS and not await asyncio.to_thread(
                may_mutate, uid, gid, self.status_group):
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
            return error("unknown-op", f"unknown op {op[:40]!r}")
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
