"""The status socket on a temporary path: protocol, limits, permissions, many clients."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

from agent.daemon.status import MAX_LINE, StatusServer, may_mutate


async def start(tmp_path, **kw) -> tuple[StatusServer, dict]:
    state = {"v": 1, "state": "starting", "n": 0}

    async def lookup(req):
        return {"v": 1, "aet": req["aet"], "found": req["aet"] == "ARCHIVE"}

    async def renew(req):
        return {"v": 1, "ok": True}

    server = StatusServer(tmp_path / "status.sock", lambda: dict(state),
                          {"lookup": lookup, "renew": renew}, **kw)
    await server.start()
    return server, state


async def ask(path, raw: bytes, count: int = 1) -> list[dict]:
    """Send raw lines; read `count` replies (fewer if the server closes first)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    lines = []
    while len(lines) < count and (line := await asyncio.wait_for(reader.readline(), 5)):
        lines.append(json.loads(line))
    writer.close()
    return lines


def test_requests_replies_and_errors(tmp_path):
    async def main():
        server, _ = await start(tmp_path)
        path = server.path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        got = await ask(path, b'{"v":1,"op":"status"}\n{"v":1,"op":"lookup","aet":"ARCHIVE"}\n'
                              b'{"v":1,"op":"lookup","aet":"NONE"}\nnot json\n[1,2]\n'
                              b'{"v":2,"op":"status"}\n{"v":1,"op":"dance"}\n'
                              b'{"v":1,"op":"lookup"}\n', count=8)
        await server.close()
        return got, server.counters

    got, counters = asyncio.run(main())
    assert got[0]["state"] == "starting"
    assert got[1] == {"v": 1, "aet": "ARCHIVE", "found": True}
    assert got[2]["found"] is False
    assert [g["error"]["code"] for g in got[3:]] == [
        "bad-request", "bad-request", "bad-request", "unknown-op", "bad-request"]
    assert got[7]["error"]["message"] == "lookup: 'aet'"
    assert counters == {"bad-request": 4, "unknown-op": 1}


def test_an_oversized_line_is_refused_and_the_server_lives_on(tmp_path):
    async def main():
        server, _ = await start(tmp_path)
        big = await ask(server.path, b'{"v":1,"op":"status","x":"' + b"a" * (MAX_LINE + 10)
                        + b'"}\n')
        after = await ask(server.path, b'{"v":1,"op":"status"}\n')
        await server.close()
        return big, after

    big, after = asyncio.run(main())
    assert big == [{"v": 1, "error": {"code": "too-large",
                                      "message": "a request is at most 65536 bytes"}}]
    assert after[0]["state"] == "starting"


def test_watch_sends_now_then_each_change(tmp_path):
    async def main():
        server, state = await start(tmp_path)
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(b'{"v":1,"op":"watch"}\n')
        first = json.loads(await reader.readline())
        state["state"] = "ready"
        server.changed()
        second = json.loads(await reader.readline())
        writer.close()
        await server.close()
        return first, second

    first, second = asyncio.run(main())
    assert (first["state"], second["state"]) == ("starting", "ready")


def test_a_hundred_clients_at_once(tmp_path):
    async def main():
        server, _ = await start(tmp_path)
        replies = await asyncio.gather(*(ask(server.path, b'{"v":1,"op":"status"}\n')
                                         for _ in range(100)))
        await server.close()
        return replies

    replies = asyncio.run(main())
    assert len(replies) == 100 and all(r[0]["state"] == "starting" for r in replies)


def test_a_stale_socket_is_replaced_a_live_one_is_not(tmp_path):
    async def main():
        (tmp_path / "status.sock").write_text("left by a crash")
        server, _ = await start(tmp_path)
        second = StatusServer(tmp_path / "status.sock", dict, {})
        with pytest.raises(OSError, match="another agent"):
            await second.start()
        await server.close()
        return (tmp_path / "status.sock").exists()

    assert asyncio.run(main()) is False


def test_mutating_ops_need_root_or_the_status_group():
    assert may_mutate(0, 0, None)
    assert not may_mutate(1000, 1000, None)
    assert may_mutate(1000, 0, "root")  # primary group root
    assert not may_mutate(1000, 1000, "no-such-group-here")


def test_mutating_op_as_root_is_allowed(tmp_path):
    async def main():
        server, _ = await start(tmp_path)
        got = await ask(server.path, b'{"v":1,"op":"renew"}\n')
        await server.close()
        return got

    assert asyncio.run(main()) == [{"v": 1, "ok": True}]  # the tests run as root


CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"v":1,"op":"renew"}\\n{"v":1,"op":"status"}\\n')
f = s.makefile()
print(f.readline().strip())
print(f.readline().strip())
"""


@pytest.mark.integration  # privileged: another user's peer: setpriv
def test_a_peer_outside_the_status_group_is_forbidden_to_mutate():
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    # pytest's tmp_path is private to root: the unprivileged peer needs a way in.
    public = Path(tempfile.mkdtemp(prefix="dicom-agent-status-"))
    public.chmod(0o755)

    async def main():
        server, _ = await start(public, status_group="root")
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", public_python(),
            "-c", CLIENT, str(server.path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        await server.close()
        return out.decode().splitlines(), err.decode()

    try:
        (renew, status), err = asyncio.run(main())
    finally:
        shutil.rmtree(public)
    assert json.loads(renew) == {"v": 1, "error": {
        "code": "forbidden", "message": '"renew" is for root and the status group only'}}, err
    assert json.loads(status)["state"] == "starting"  # reading is for anyone


def public_python() -> str:
    """An interpreter any user may run (the peer runs as nobody): the system's, when there
    is one; the tests' own may live under /root."""
    import shutil
    import sys

    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def test_hostile_json_is_a_bad_request(tmp_path):
    async def main():
        server, _ = await start(tmp_path)
        got = await ask(server.path, b"[" * 60000 + b"\n" + b'{"v":true,"op":"status"}\n'
                        + b'{"v":1.0,"op":"status"}\n' + b'{"v":1,"op":"status","n":'
                        + b"9" * 50 + b"}\n" + b'{"v":1,"op":"status","n":NaN}\n'
                        + b'{"v":1,"op":"lookup","aet":' + b'{"a":' * 9 + b"1" + b"}" * 9
                        + b"}\n" + b'{"v":1,"op":"status"}\n', count=7)
        await server.close()
        return got, server.counters

    got, counters = asyncio.run(main())
    assert [g.get("error", {}).get("code") for g in got] == ["bad-request"] * 6 + [None]
    assert got[0]["error"]["message"] == "nested deeper than 8"
    assert got[6]["state"] == "starting" and counters["bad-request"] == 6


FLOOD = """
import resource, socket, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker's own limit
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b'{"v":1,"op":"sta')  # half a request, never finished
    held.append(s)
busy = 0
for s in held:
    s.settimeout(1.0)
    try:
        busy += b'"busy"' in s.recv(4096)
    except OSError:
        pass
print(busy, flush=True)
sys.stdin.readline()  # hold the rest until told
"""


@pytest.mark.integration  # privileged: another user's clients: setpriv
def test_an_unprivileged_flood_is_capped_and_the_daemon_keeps_its_files(tmp_path, monkeypatch):
    import resource
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from agent.daemon import status
    from profiles import statefile_io

    monkeypatch.setattr(status, "REQUEST_DEADLINE", 3.0)
    public = Path(tempfile.mkdtemp(prefix="dicom-agent-flood-"))
    public.chmod(0o755)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))  # as in the review

    async def main():
        server, _ = await start(public)
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", public_python(),
            "-c", FLOOD, str(server.path), "140", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = await proc.stdout.readline()
        if not line:  # the flood itself failed: say why
            raise AssertionError((await proc.stderr.read()).decode()[-2000:])
        busy = int(line)
        # Root is still answered, and the daemon can still open its files.
        during = await ask(server.path, b'{"v":1,"op":"status"}\n')
        statefile_io.write_json(tmp_path / "lease-eth0.json", {"ok": True})
        await asyncio.sleep(3.5)  # the held half-requests time out
        after = dict(server.counters)
        proc.stdin.write(b"\n")
        await proc.wait()
        await server.close()
        return busy, during, after, server.cap

    try:
        busy, during, counters, cap = asyncio.run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        shutil.rmtree(public)
    assert cap == 32  # a quarter of the 128 files
    assert busy == 140 - status.MAX_PER_UID and counters["busy"] == busy
    assert during[0]["state"] == "starting"
    assert counters["timeout"] == status.MAX_PER_UID  # idle half-requests are dropped
