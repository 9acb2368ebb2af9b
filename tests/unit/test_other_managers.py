"""Another DHCP client or network manager holding the interface, found in /proc (a fake
one here): by its name and arguments, in this network namespace only."""

from __future__ import annotations

import os
from pathlib import Path

from agent.adapters.address import other_managers


def process(proc: Path, pid: int, comm: str, argv: list[str], ns: Path) -> None:
    d = proc / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    os.link(ns, d / "ns" / "net")  # the same inode: the same namespace


def test_clients_of_this_interface_and_managers_of_this_namespace_are_found(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    ours, theirs = tmp_path / "ns-ours", tmp_path / "ns-theirs"
    ours.write_text("")
    theirs.write_text("")
    os.link(ours, proc / "self" / "ns" / "net")
    process(proc, 100, "dhclient", ["dhclient", "-4", "-lf", "/var/lib/x", "eth1"], ours)
    process(proc, 101, "busybox", ["busybox", "udhcpc", "-f", "-i", "eth0"], ours)
    process(proc, 102, "dhclient", ["dhclient", "eth0"], theirs)  # another namespace
    process(proc, 103, "busybox", ["busybox", "sh"], ours)
    process(proc, 104, "sshd", ["sshd", "eth0"], ours)
    assert other_managers("eth0", proc, tmp_path / "no-netif") == ["udhcpc (pid 101)"]
    assert other_managers("eth1", proc, tmp_path / "no-netif") == ["dhclient (pid 100)"]
    process(proc, 105, "dhcpcd", ["dhcpcd", "-B"], ours)  # every interface
    process(proc, 106, "NetworkManager", ["/usr/sbin/NetworkManager", "--no-daemon"], ours)
    assert other_managers("eth2", proc, tmp_path / "no-netif") == [
        "NetworkManager (pid 106)", "dhcpcd (pid 105)"]
