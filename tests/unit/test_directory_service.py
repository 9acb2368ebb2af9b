"""The daemon's directory service without a server: a refresh during an outage keeps the
offline answer (issue 11), and operations on the one connection never overlap."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from profiles.app_config.cache_io import LookupCache
from profiles.app_config.directory_io import DirectoryService
from profiles.app_config.ldap_io import Security
from profiles.app_config.model import Device

ANSWER = {"v": 1, "aet": "ARCHIVE", "found": True, "stale": False, "source": "directory",
          "device": "PACS1", "installed": True,
          "connections": [{"hostname": "pacs1.hospital.test", "port": 11112,
                           "tls_cipher_suites": []}]}


async def unreachable() -> tuple[list, list]:
    return [], []  # no server to try: the directory is away


def service(tmp_path) -> DirectoryService:
    return DirectoryService(Device(name="CT01", connections=(), aes=()), Security(), unreachable,
                            tmp_path, 10, 60)


def test_a_refresh_during_an_outage_keeps_the_cached_answer(tmp_path):
    LookupCache(tmp_path / "cache").put(ANSWER)
    s = service(tmp_path)

    async def main() -> list[dict]:
        return await asyncio.gather(s.lookup("ARCHIVE", refresh=True),
                                    *(s.lookup("ARCHIVE") for _ in range(5)))

    answers = asyncio.run(main())
    assert all(a["found"] and a["stale"] and a["source"] == "cache" for a in answers)
    assert LookupCache(tmp_path / "cache").get("ARCHIVE") is not None


def test_operations_on_the_connection_never_overlap(tmp_path):
    s = service(tmp_path)
    s._dir = type("Conn", (), {"odd_entries": 0})()  # a connection is up
    inside, most = 0, 0
    guard = threading.Lock()

    def operation(directory) -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)
        with guard:
            inside -= 1

    async def main() -> None:
        await asyncio.gather(*(s.call(operation) for _ in range(8)))

    asyncio.run(main())
    assert most == 1


def test_the_replicas_are_checked_between_refreshes_while_registered(tmp_path, monkeypatch):
    """A registered device looks at its own provider for other holders of its titles
    every TITLE_CHECK_INTERVAL and asks every provider every REPLICA_CHECK_INTERVAL, not
    only at its (hourly) refresh; not while unregistered."""
    from profiles.app_config import directory_io as service_module

    monkeypatch.setattr(service_module, "TITLE_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(service_module, "REPLICA_CHECK_INTERVAL", 0.2)
    s = DirectoryService(Device(name="CT01", connections=(), aes=()), Security(), unreachable,
                         tmp_path, 10, refresh_interval=0.5)
    registrations, checks, looks = [], [], []
    result = object()

    async def register(hostnames):
        registrations.append(asyncio.get_running_loop().time())
        s.state, s.last = "registered", result
        return "registered"

    async def check(result):
        checks.append(result)
        return None

    async def look(result):
        looks.append(result)
        return None

    s.register, s._check_replicas, s.check_titles = register, check, look

    async def main() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.maintain(lambda: {}), 1.2)

    asyncio.run(main())
    assert len(registrations) == 3  # at 0, 0.5 and 1.0 s
    assert 3 <= len(checks) <= 8  # ~2 a refresh period (every 0.2 s), none at a refresh
    assert 10 <= len(looks) <= 27  # the rest of the 0.04-0.06 s steps
    assert all(c is result for c in checks + looks)


def test_no_replica_check_while_not_registered(tmp_path, monkeypatch):
    from profiles.app_config import directory_io as service_module

    monkeypatch.setattr(service_module, "REPLICA_CHECK_INTERVAL", 0.05)
    s = DirectoryService(Device(name="CT01", connections=(), aes=()), Security(), unreachable,
                         tmp_path, 10, refresh_interval=0.3)
    checks = []

    async def register(hostnames):
        s.state = "awaiting-manual-registration"
        return s.state

    async def check(result):
        checks.append(result)

    s.register, s._check_replicas = register, check

    async def main() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.maintain(lambda: {}), 0.7)

    asyncio.run(main())
    assert checks == []
