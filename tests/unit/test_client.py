"""agent/client.py against a fake status socket: answers, errors, a dead agent, a truncated
answer, watch and wait_ready, both flavours; and it stays standard-library only."""

from __future__ import annotations

import ast
import asyncio
import json
import socket
import sys
import threading
from pathlib import Path

import pytest

from agent import client as agent_client
from agent.client import (
    BOOT_ORDER,
    AgentClient,
    AgentNotRunning,
    AgentRefused,
    AsyncAgentClient,
    ProtocolError,
)
from agent.daemon.boot import BootState

ARCHIVE = {"v": 1, "aet": "ARCHIVE", "found": True, "stale": False, "source": "directory",
           "device": "PACS1", "installed": True,
           "connections": [{"hostname": "pacs1.hospital.test", "port": None,
                            "tls_cipher_suites": [], "installed": True, "addresses": []},
                           {"hostname": "pacs1.hospital.test", "port": 11112,
                            "tls_cipher_suites": [], "installed": True,
                            "addresses": ["198.51.100.10"]}],
           "application_cluster": ["RAD"], "primary_device_type": ["ARCHIVE"]}


class FakeAgent:
    """A UNIX socket that answers each request line from `answers(request) -> [lines]`."""

    def __init__(self, path: Path, answers):
        self.path = path
        self.answers = answers
        self.requests: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as f:
                line = f.readline()
                request = json.loads(line)
                self.requests.append(request)
                for out in self.answers(request):
                    try:
                        conn.sendall(out)
                    except OSError:
                        break

    def close(self) -> None:
        self.sock.close()


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.fixture
def fake(tmp_path):
    servers = []

    def make(answers):
        server = FakeAgent(tmp_path / "status.sock", answers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_lookup_gives_a_peer_with_the_first_accepting_connection(fake, tmp_path):
    server = fake(lambda req: [line(ARCHIVE)])
    peer = AgentClient(tmp_path / "status.sock").lookup("ARCHIVE", refresh=True)
    assert server.requests == [{"v": 1, "op": "lookup", "aet": "ARCHIVE", "refresh": True}]
    assert (peer.host, peer.port, peer.addresses) == ("pacs1.hospital.test", 11112,
                                                      ("198.51.100.10",))
    assert peer.installed and peer.source == "directory" and not peer.stale
    assert peer.application_cluster == ("RAD",) and not peer.connection.tls


def test_not_found_is_none_and_an_error_answer_raises_with_its_code(fake, tmp_path):
    def answers(req):
        if req["op"] == "lookup":
            return [line({"v": 1, "aet": req["aet"], "found": False, "stale": False,
                          "source": "directory"})]
        return [line({"v": 1, "error": {"code": "forbidden", "message": "root only"}})]

    fake(answers)
    agent = AgentClient(tmp_path / "status.sock")
    assert agent.lookup("NOBODY") is None
    with pytest.raises(AgentRefused) as refused:
        agent.request("renew")
    assert refused.value.code == "forbidden" and refused.value.message == "root only"


def test_no_agent_and_a_broken_answer_are_told_apart(fake, tmp_path):
    with pytest.raises(AgentNotRunning):
        AgentClient(tmp_path / "status.sock").status()
    fake(lambda req: [b'{"v": 1, "state": "rea'])  # then the connection closes
    with pytest.raises(ProtocolError, match="mid-answer"):
        AgentClient(tmp_path / "status.sock").status()


def test_watch_and_wait_ready_follow_the_boot_states(fake, tmp_path):
    states = ["acquiring-address", "syncing-time", "registering", "ready"]
    fake(lambda req: [line({"v": 1, "state": s, "degraded": []}) for s in states])
    agent = AgentClient(tmp_path / "status.sock")
    assert [s["state"] for s in agent.watch()] == states
    assert agent.wait_ready(5)["state"] == "ready"
    assert agent.wait_ready(5, state="syncing-time")["state"] == "syncing-time"


def test_wait_ready_times_out_naming_where_the_agent_is(fake, tmp_path):
    fake(lambda req: [line({"v": 1, "state": "acquiring-address",
                            "degraded": ["internal-clock"]})])
    with pytest.raises(TimeoutError, match=r"acquiring-address after 0.5 s \(wanted ready\)"
                                           r" \(degraded: internal-clock\)"):
        AgentClient(tmp_path / "status.sock").wait_ready(0.5)


def test_the_asyncio_flavour_does_the_same(fake, tmp_path):
    fake(lambda req: [line(ARCHIVE)] if req["op"] == "lookup" else
         [line({"v": 1, "state": "ready", "degraded": []})])

    async def main():
        agent = AsyncAgentClient(tmp_path / "status.sock")
        peer = await agent.lookup("ARCHIVE")
        snap = await agent.wait_ready(5)
        return peer.port, snap["state"]

    assert asyncio.run(main()) == (11112, "ready")


def test_the_boot_order_is_the_agents_and_the_module_needs_only_the_stdlib():
    assert tuple(s.value for s in BootState if s is not BootState.STOPPING) == BOOT_ORDER
    tree = ast.parse(Path(agent_client.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
