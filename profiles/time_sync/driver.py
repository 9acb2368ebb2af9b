"""Sockets and clocks around the SNTP core, the broadcast listener, and the real clock.

`SntpDriver.round()` runs the core until one round is judged; `hear_broadcasts()`
listens for NTP mode-5 broadcasts (G.1.1.1 autodiscovery). `SystemClock` is the real
actuator (step: clock_settime; slew: adjtimex ADJ_OFFSET_SINGLESHOT) — used only when
the guards allow it, never in tests or the demo (they run in network namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from profiles.errors import ParseError
from profiles.time_sync import packet
from profiles.time_sync.sntp import NTP_PORT, POLL_MAX, RoundResult, SntpClient

log = logging.getLogger(__name__)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SntpDriver:
    def __init__(self, core: SntpClient):
        self.core = core
        self._inbox: asyncio.Queue[tuple[bytes, str, float, float]] = asyncio.Queue(256)

    async def round(self, servers: list[str], timeout: float = 30.0) -> RoundResult:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))

        def read() -> None:
            try:
                data, (source, port) = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError, OSError):
                return
            stamp = (data, source if port == NTP_PORT else "", boottime(), time.time())
            # A flood fills the queue: the rest is dropped, the round goes on.
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(stamp)

        loop.add_reader(sock.fileno(), read)
        try:
            self.core.set_servers(servers, boottime())
            deadline = boottime() + timeout
            while True:
                now = boottime()
                self.core.handle_timer(now, time.time())
                for d in self.core.datagrams_to_send():
                    try:
                        sock.sendto(d.payload, (d.destination, d.port))
                    except OSError as exc:
                        log.info("NTP to %s: %s", d.destination, exc)
                if (result := self.core.next_event()) is not None:
                    return result
                timer = self.core.get_timer()
                if now >= deadline or timer is None:
                    raise TimeoutError("the SNTP round did not finish")
                try:
                    data, source, at, wall = await asyncio.wait_for(
                        self._inbox.get(), max(min(timer, deadline) - now, 0.0))
                except TimeoutError:
                    continue
                self.core.receive_datagram(data, source, at, wall)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()


    async def run(self, updates: asyncio.Queue[list[str]],
                  on_result: Callable[[RoundResult], Awaitable[None]]) -> None:
        """Keep time for good: a round whenever the core's poll says so, and at once when
        `updates` brings a new server set (a new lease) — no restart needed."""
        servers = await updates.get()
        while True:
            if not servers:
                servers = await updates.get()
                continue
            rounds = asyncio.create_task(self.round(servers, timeout=POLL_MAX + 60))
            update = asyncio.create_task(updates.get())
            try:
                _, pending = await asyncio.wait({rounds, update},
                                                return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (rounds, update):
                    task.cancel()  # a no-op for the one that is done
            if pending:
                # Let the cancelled one end. asyncio.wait never raises its CancelledError,
                # so a cancellation of *this* task (the daemon stopping) is never
                # swallowed here, as a suppress(CancelledError) around it would.
                await asyncio.wait(pending)
            # Either may have finished before its cancellation took: lose neither a
            # judged round nor a new server set.
            if not rounds.cancelled():
                await on_result(rounds.result())
            if not update.cancelled():
                servers = update.result()


async def hear_broadcasts(window: float) -> list[str]:
    """Addresses of servers heard broadcasting (mode 5, synchronized) within `window`."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setblocking(False)
    heard: list[str] = []
    try:
        sock.bind(("0.0.0.0", NTP_PORT))
    except OSError as exc:
        log.warning("cannot listen for NTP broadcasts: %s", exc)
        sock.close()
        return heard

    def read() -> None:
        try:
            data, (source, _) = sock.recvfrom(2048)
            pkt = packet.parse(data)
        except (BlockingIOError, InterruptedError, OSError, ParseError):
            return
        if pkt.mode == packet.MODE_BROADCAST and 1 <= pkt.stratum <= 15 \
                and pkt.leap != packet.LEAP_UNSYNCHRONIZED and source not in heard:
            heard.append(source)

    loop.add_reader(sock.fileno(), read)
    try:
        await asyncio.sleep(window)
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return heard


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h), 64-bit layout.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


ADJ_OFFSET_SINGLESHOT = 0x0001 | 0x8000  # adjtime(3)-style slew, microseconds


class SystemClock:
    """The machine's clock. Needs CAP_SYS_TIME; the caller checks the guards first."""

    def step(self, offset: float) -> None:
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME)
                           + offset)
        log.warning("clock stepped by %+.6f s", offset)

    def slew(self, offset: float) -> None:
        tx = _Timex(modes=ADJ_OFFSET_SINGLESHOT, offset=int(offset * 1e6))
        if ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(tx)) < 0:
            raise OSError(ctypes.get_errno(), "adjtimex")
        log.info("clock slewing by %+.6f s", offset)
