"""Sockets and clocks around the SNTP core, the broadcast listener, and the real clock.

`SntpDriver.round()` runs the core until one round is judged; `Listener` hears NTP
mode-5 announcements, broadcast or to 224.0.1.1 (G.1.1.1 autodiscovery), for one window
or for good. `SystemClock` is the real
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
        `updates` brings a different server set (a new lease, a server heard or lost) —
        no restart needed. The same set again (a renewal) leaves the round alone: a
        round cut short and begun again would find its servers inside their minimum
        interval ("backing off") until the next poll."""
        servers = await updates.get()
        rounds: asyncio.Task | None = None
        update: asyncio.Task | None = None
        try:
            while True:
                if not servers:
                    servers = await updates.get()
                    continue
                if rounds is None:
                    rounds = asyncio.create_task(self.round(servers, timeout=POLL_MAX + 60))
                update = asyncio.create_task(updates.get())
                done, _ = await asyncio.wait({rounds, update},
                                             return_when=asyncio.FIRST_COMPLETED)
                new = None
                if update in done:
                    new = update.result()
                else:
                    update.cancel()
                    await asyncio.wait({update})  # never raises its CancelledError
                    if not update.cancelled():  # one came just before: keep it
                        new = update.result()
                update = None
                if rounds.done():
                    finished, rounds = rounds, None
                    await on_result(finished.result())
                if new is not None and set(new) != set(servers):
                    if rounds is not None:
                        rounds.cancel()
                        await asyncio.wait({rounds})
                        if not rounds.cancelled():  # judged before it could be cut
                            await on_result(rounds.result())
                        rounds = None
                    servers = new
        finally:
            for task in (rounds, update):
                if task is not None:
                    task.cancel()


NTP_MULTICAST = "224.0.1.1"  # IANA: NTP, the group of G.1.1.1's multicast servers
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h (Python < 3.12 lacks it)
IP_PKTINFO_LEN = 12  # struct in_pktinfo: ifindex, spec_dst, addr
LOST_AFTER = 3  # missed announcements (of the interval last seen) before a server is lost


class Listener:
    """PS3.15 G.1.1.1 autodiscovery: NTP servers announcing themselves (mode 5) by
    broadcast or to the NTP multicast group 224.0.1.1 — the group joined on `interface`.
    `heard` maps each synchronized server heard to how (`broadcast` or `multicast`, from
    the packet's destination address); a server not heard for LOST_AFTER of its own
    intervals (at least `window`) is lost."""

    def __init__(self, interface: str | None = None, window: float = 5.0):
        self.interface = interface
        self.window = window
        self.heard: dict[str, str] = {}
        self._last: dict[str, float] = {}
        self._interval: dict[str, float] = {}
        self.sock: socket.socket | None = None

    def open(self) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setblocking(False)
            sock.bind(("0.0.0.0", NTP_PORT))
        except OSError as exc:
            log.warning("cannot listen for NTP broadcasts: %s", exc)
            sock.close()
            return False
        if self.interface:
            try:  # struct ip_mreqn: the group, any local address, the interface
                index = socket.if_nametoindex(self.interface)
                mreqn = socket.inet_aton(NTP_MULTICAST) + socket.inet_aton("0.0.0.0") + \
                    index.to_bytes(4, "little")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError as exc:
                log.warning("cannot join %s on %s: %s", NTP_MULTICAST, self.interface, exc)
        self.sock = sock
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def read(self, now: float | None = None) -> bool:
        """One datagram in; True when the set of servers heard changed."""
        try:
            data, ancillary, _, (source, _) = self.sock.recvmsg(2048, socket.CMSG_SPACE(
                IP_PKTINFO_LEN))
            pkt = packet.parse(data)
        except (BlockingIOError, InterruptedError, OSError, ParseError, ValueError):
            return False
        if pkt.mode != packet.MODE_BROADCAST or not 1 <= pkt.stratum <= 15 \
                or pkt.leap == packet.LEAP_UNSYNCHRONIZED:
            return False
        via = "broadcast"
        for level, kind, value in ancillary:  # in_pktinfo's ipi_addr: where it was sent
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO \
                    and len(value) >= 12 and socket.inet_ntoa(value[8:12]) == NTP_MULTICAST:
                via = "multicast"
        now = time.monotonic() if now is None else now
        if source in self._last:
            self._interval[source] = now - self._last[source]
        self._last[source] = now
        new = source not in self.heard
        self.heard[source] = via
        return new

    def expire(self, now: float | None = None) -> bool:
        """Forget servers gone quiet; True when one was."""
        now = time.monotonic() if now is None else now
        lost = [s for s, last in self._last.items()
                if now - last > LOST_AFTER * max(self._interval.get(s, 0.0), self.window)]
        for source in lost:
            del self._last[source]
            self._interval.pop(source, None)
            self.heard.pop(source, None)
            log.info("autodiscovery: %s not heard any more", source)
        return bool(lost)

    async def listen(self, window: float) -> list[str]:
        """Listen for `window` seconds; the servers heard (the command's round)."""
        if self.sock is None and not self.open():
            return []
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self.read)
        try:
            await asyncio.sleep(window)
        finally:
            loop.remove_reader(self.sock.fileno())
        return list(self.heard)

    async def run(self, on_change: Callable[[list[str]], Awaitable[None]]) -> None:
        """For good (the daemon): `on_change(servers)` whenever one is heard or lost."""
        if self.sock is None and not self.open():
            return
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def readable() -> None:
            if self.read():
                changed.set()

        loop.add_reader(self.sock.fileno(), readable)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.window)
                if self.expire() or changed.is_set():
                    changed.clear()
                    await on_change(list(self.heard))
        finally:
            loop.remove_reader(self.sock.fileno())
            self.close()


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
