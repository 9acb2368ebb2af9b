"""The client of dicom-agent's status socket, for the device's DICOM applications and the
agent's own command line (one implementation).

Standard library only: it imports nothing else from the agent, so a vendor application
outside the agent's virtual environment can use it — `make client-wheel` builds it as the
`dicom-agent-client` distribution (module `dicom_agent_client`).

    from dicom_agent_client import AgentClient   # or agent.client, inside the agent

    agent = AgentClient()                         # /run/dicom-agent/status.sock
    agent.wait_ready(timeout=120)                 # at or past "ready" (raises TimeoutError)
    peer = agent.lookup("ARCHIVE_SCP")            # None when the directory has no such AE
    host, port = peer.host, peer.port             # the first installed connection
    peer.addresses                                # IPv4, resolved by the agent (F.1.1)

After an association failure, look the peer up again with `refresh=True` (PS3.15 H.1.6:
stale information shows first as failed associations). `AsyncAgentClient` has the same
methods as coroutines (`watch` is an async iterator).

Errors: AgentNotRunning (no socket, or nobody listening), ProtocolError (an answer that
is not the protocol), AgentRefused (the agent answered with an error: its `code` —
bad-request, forbidden, busy, too-large, unknown-op, internal — and `message`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

DEFAULT_SOCKET = Path("/run/dicom-agent/status.sock")
# Boot states in boot order (dicom-agent(8), BOOT STATES); `stopping` is not on the way to anything.
BOOT_ORDER = ("starting", "waiting-for-link", "acquiring-address", "syncing-time",
              "locating-directory", "registering", "announcing", "ready")
MAX_LINE = 16 * 1024 * 1024  # a snapshot or a query answer, at most


class AgentError(Exception):
    """Something between this application and the agent went wrong."""


class AgentNotRunning(AgentError):
    """No agent answers on the socket (not started, stopped, or another path)."""


class ProtocolError(AgentError):
    """The answer was not the status protocol (truncated, not JSON, not version 1)."""


class AgentRefused(AgentError):
    """The agent answered with an error object."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class Connection:
    """One network connection of a peer AE (PS3.15 Table H.1-3)."""
    hostname: str
    port: int | None
    addresses: tuple[str, ...] = ()
    tls_cipher_suites: tuple[str, ...] = ()
    installed: bool = True

    @property
    def tls(self) -> bool:
        return bool(self.tls_cipher_suites)


@dataclass(frozen=True)
class Peer:
    """A looked-up AE: what a DICOM application needs to open an association."""
    aet: str
    device: str | None
    installed: bool
    source: str  # directory, cache, dnssd
    stale: bool
    connections: tuple[Connection, ...]
    application_cluster: tuple[str, ...] = ()
    primary_device_type: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def connection(self) -> Connection | None:
        """The first installed connection that accepts associations (has a port)."""
        return next((c for c in self.connections if c.installed and c.port is not None),
                    None)

    @property
    def host(self) -> str | None:
        c = self.connection
        return c.hostname if c else None

    @property
    def port(self) -> int | None:
        c = self.connection
        return c.port if c else None

    @property
    def addresses(self) -> tuple[str, ...]:
        c = self.connection
        return c.addresses if c else ()

    @classmethod
    def from_answer(cls, a: dict) -> Peer:
        try:
            return cls(aet=str(a["aet"]), device=a.get("device"),
                       installed=bool(a.get("installed", True)), source=str(a["source"]),
                       stale=bool(a.get("stale", False)),
                       connections=tuple(Connection(
                           hostname=str(c["hostname"]), port=c.get("port"),
                           addresses=tuple(c.get("addresses") or ()),
                           tls_cipher_suites=tuple(c.get("tls_cipher_suites") or ()),
                           installed=bool(c.get("installed", True)))
                           for c in a.get("connections") or ()),
                       application_cluster=tuple(a.get("application_cluster") or ()),
                       primary_device_type=tuple(a.get("primary_device_type") or ()),
                       raw=a)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"not a lookup answer: {exc}") from None


def reached(state: str | None, wanted: str) -> bool:
    """Whether boot state `state` is at or past `wanted` in boot order."""
    return state in BOOT_ORDER and BOOT_ORDER.index(state) >= BOOT_ORDER.index(wanted)


def _decode(line: bytes) -> dict:
    if not line.endswith(b"\n"):
        raise ProtocolError("the agent closed the connection mid-answer")
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(answer, dict) or answer.get("v") != 1:
        raise ProtocolError("not a version 1 answer")
    err = answer.get("error")
    if isinstance(err, dict):
        raise AgentRefused(str(err.get("code", "?")), str(err.get("message", "")))
    return answer


def _request_line(op: str, **fields: object) -> bytes:
    return json.dumps({"v": 1, "op": op, **fields}).encode() + b"\n"


def _check_state(state: str) -> None:
    if state not in BOOT_ORDER:
        raise ValueError(f"state must be one of {', '.join(BOOT_ORDER)}")


class AgentClient:
    """Blocking client: one connection per request (`watch` keeps its own)."""

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, timeout: float = 10.0):
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            raise AgentNotRunning(f"no agent at {self.socket_path}: {exc.strerror}") from None
        except OSError:
            s.close()
            raise
        return s

    def request(self, op: str, **fields: object) -> dict:
        """One request, its answer (an error answer raises AgentRefused)."""
        with self._connect(self.timeout) as s:
            s.sendall(_request_line(op, **fields))
            with s.makefile("rb") as f:
                try:
                    line = f.readline(MAX_LINE)
                except TimeoutError:
                    raise ProtocolError(f"no answer in {self.timeout} s") from None
        return _decode(line)

    def status(self) -> dict:
        return self.request("status")

    def watch(self) -> Iterator[dict]:
        """The snapshot now, then one per change, for as long as the agent runs."""
        with self._connect(None) as s:
            s.sendall(_request_line("watch"))
            with s.makefile("rb") as f:
                while line := f.readline(MAX_LINE):
                    yield _decode(line)

    def lookup(self, aet: str, refresh: bool = False) -> Peer | None:
        answer = self.request("lookup", aet=aet, refresh=refresh)
        return Peer.from_answer(answer) if answer.get("found") else None

    def query(self, cluster: str | None = None, device_type: str | None = None) -> list[Peer]:
        answer = self.request("query", cluster=cluster, device_type=device_type)
        return [Peer.from_answer(a) for a in answer.get("results") or ()]

    def wait_ready(self, timeout: float, state: str = "ready") -> dict:
        """Block until the boot state is at or past `state`: its snapshot. TimeoutError
        (naming the state reached and the degraded conditions) when it does not come;
        an agent not yet started is waited for, within `timeout`."""
        _check_state(state)
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                with self._connect(max(deadline - time.monotonic(), 0.05)) as s:
                    s.sendall(_request_line("watch"))
                    with s.makefile("rb") as f:
                        while line := f.readline(MAX_LINE):
                            last = _decode(line)
                            if reached(last.get("state"), state):
                                return last
            except (AgentNotRunning, TimeoutError, ConnectionError):
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
        raise TimeoutError(f"{last.get('state', 'unreachable')} after {timeout:g} s "
                           f"(wanted {state})" + _degraded(last))


def _degraded(snap: dict) -> str:
    return f" (degraded: {', '.join(snap['degraded'])})" if snap.get("degraded") else ""


class AsyncAgentClient:
    """The same, for asyncio applications."""

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, timeout: float = 10.0):
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # asyncio where it is used: the blocking client (`dicom-agent wait`, most
        # applications) does not pay its ~40 ms of imports; an asyncio one has it already.
        import asyncio

        try:
            return await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(f"no agent at {self.socket_path}: {exc.strerror}") from None

    async def request(self, op: str, **fields: object) -> dict:
        import asyncio  # see _open

        reader, writer = await self._open()
        try:
            writer.write(_request_line(op, **fields))
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), self.timeout)
            except TimeoutError:
                raise ProtocolError(f"no answer in {self.timeout} s") from None
        finally:
            writer.close()
        return _decode(line)

    async def status(self) -> dict:
        return await self.request("status")

    async def watch(self) -> AsyncIterator[dict]:
        reader, writer = await self._open()
        try:
            writer.write(_request_line("watch"))
            await writer.drain()
            while line := await reader.readline():
                yield _decode(line)
        finally:
            writer.close()

    async def lookup(self, aet: str, refresh: bool = False) -> Peer | None:
        answer = await self.request("lookup", aet=aet, refresh=refresh)
        return Peer.from_answer(answer) if answer.get("found") else None

    async def query(self, cluster: str | None = None,
                    device_type: str | None = None) -> list[Peer]:
        answer = await self.request("query", cluster=cluster, device_type=device_type)
        return [Peer.from_answer(a) for a in answer.get("results") or ()]

    async def wait_ready(self, timeout: float, state: str = "ready") -> dict:
        import asyncio  # see _open

        _check_state(state)
        last: dict = {}

        async def until() -> dict:
            nonlocal last
            while True:
                try:
                    async for snap in self.watch():
                        last = snap
                        if reached(snap.get("state"), state):
                            return snap
                except (AgentNotRunning, ConnectionError):
                    pass
                await asyncio.sleep(0.2)

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{last.get('state', 'unreachable')} after {timeout:g} s "
                               f"(wanted {state})" + _degraded(last)) from None
