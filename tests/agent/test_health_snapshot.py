"""An AE's health and the degraded condition `ae-unreachable` change together: an
observer that reads the snapshot at every turn of the event loop, while the health task
finds an acceptor down and then up again, never sees one without the other. (Before, the
AE's health changed, then a directory update or the next AE's C-ECHO was awaited, and only
after every AE was checked did `degraded` follow: a status request in between saw `down`
without `ae-unreachable`.) Nor does it see a down AE still listed among the DNS-SD
services: the announce task sends the goodbyes later (here: an advertiser that takes a few
turns of the loop), but the service leaves the snapshot with the health. (Before, it left
only once the goodbyes were sent: one full run in five failed the lab's health test.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.adapters import health as health_adapter
from agent.config import load_config
from agent.daemon.router import Agent

REPO = Path(__file__).resolve().parents[2]


def test_every_snapshot_shows_health_and_its_degraded_condition_together(tmp_path,
                                                                          monkeypatch):
    archive = (REPO / "agent" / "examples" / "archive.toml").read_text()
    archive = archive.replace('title = "ARCHIVE2_STORE"',
                              'title = "ARCHIVE2_STORE"\nhealth_check = true')
    archive = archive.replace('title = "ARCHIVE2_QR"', 'title = "ARCHIVE2_QR"\nhealth_check = true')
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'runtime_dir = "{tmp_path / "run"}"\nhealth_interval = 1\n\n'
                      + archive.replace('security = "anonymous"', "enabled = false"))
    answers = iter([None, None, "refused", None, "refused", "refused", None, None, None, None])
    checked: list[str] = []

    def echo(calling, called, host, port, tls, ca_file):
        checked.append(called)
        return next(answers)

    monkeypatch.setattr(health_adapter, "echo", echo)
    monkeypatch.setattr(health_adapter, "HEALTH_SETTLE", 0.0)

    class Advertiser:  # zeroconf's part: each announcement takes a few turns of the loop
        def __init__(self):
            self.address, self.advertised, self.seen = None, {}, set()
            self.counts = {}

        async def announce(self, services, address):
            for _ in range(5):
                await asyncio.sleep(0)
            self.address, self.advertised = address, {x.name: x.name for x in services}

        async def browse(self):
            pass

    async def main() -> list[tuple[tuple[str, ...], bool, tuple[str, ...]]]:
        agent = Agent(load_config(config))
        agent.announcer.advertiser = Advertiser()
        agent.net.auto_ip = "192.0.2.57"
        agent.time.addressed.set()

        async def interval(seconds: float) -> None:  # the health interval, made short
            await real_sleep(0.01 if seconds >= 1 else seconds)

        real_sleep = asyncio.sleep
        monkeypatch.setattr(health_adapter.asyncio, "sleep", interval)
        task = asyncio.create_task(agent.health.run())
        announce = asyncio.create_task(agent.announce.run())
        seen = []
        while len(checked) < 10 and not task.done():
            snap = agent.snapshot()
            health = tuple(e["health"] for e in snap["directory"]["effective"])
            services = tuple(x["txt"]["AET"] for x in snap["dnssd"]["services"])
            seen.append((health, "ae-unreachable" in snap["degraded"], services))
            await real_sleep(0)
        task.cancel()
        announce.cancel()
        return seen

    seen = asyncio.run(main())
    assert {h for h, _, _ in seen} >= {("up", "up"), ("down", "up"), ("down", "down"),
                                       ("up", "down")}  # every combination was shown
    bad = [(h, d) for h, d, _ in seen if ("down" in h) != d]
    assert not bad, bad[:5]
    titles = ("ARCHIVE2_STORE", "ARCHIVE2_QR")
    assert any(set(s) == set(titles) for _, _, s in seen)  # both were advertised at times
    listed_down = [(h, s) for h, _, s in seen
                   if any(state == "down" and t in s for state, t in zip(h, titles, strict=True))]
    assert not listed_down, listed_down[:5]
