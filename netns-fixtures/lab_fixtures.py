"""pytest fixtures for the netns lab: a session lab per DHCP flavour, a device per test.

The lab is the only way tests start servers or the agent: `device.run([...])` runs a
command "on a device" (network, mount and UTS namespaces of its own). A lab that cannot
be built fails the test that asked for it; nothing here skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from lab import Device, Lab

TEST_PREFIX = "dcmt"  # `make lab-up` uses dcm: a developer's lab and the suite coexist


def _session_lab(prefix: str, flavour: str) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the netns lab needs root (ip netns, slapd, dnsmasq)")
    lab = Lab(prefix=prefix, flavour=flavour, devices=3)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """dnsmasq flavour: DHCP + DNS with SRV, three chronyd, slapd."""
    yield from _session_lab(TEST_PREFIX, "dnsmasq")


@pytest.fixture(scope="session")
def kea_lab() -> Iterator[Lab]:
    """Kea flavour: Kea DHCPv4 (20 s leases) + kea-dhcp-ddns + BIND 9, chronyd, slapd."""
    yield from _session_lab(TEST_PREFIX + "k", "kea")


def _fresh_device(lab: Lab) -> Iterator[Device]:
    dev = lab.add_device()
    try:
        yield dev
    finally:
        lab.remove_device(dev)


@pytest.fixture
def device(lab: Lab) -> Iterator[Device]:
    """A new device namespace on the dnsmasq lab, removed after the test."""
    yield from _fresh_device(lab)


@pytest.fixture
def host(lab: Lab) -> Iterator[Device]:
    """A new device namespace with a static address (192.0.2.20+index) and a route."""
    for dev in _fresh_device(lab):
        dev.configure_static()
        yield dev


@pytest.fixture
def kea_device(kea_lab: Lab) -> Iterator[Device]:
    """A new device namespace on the Kea lab, removed after the test."""
    yield from _fresh_device(kea_lab)


@pytest.fixture(scope="session")
def debs(lab: Lab) -> tuple:
    """The Debian package built once per run from this checkout (packaging/deb.py, as
    `make deb`), and the same rebuilt under a higher version for the upgrade."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "packaging"))
    import deb

    done = subprocess.run(["make", "-s", "man"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"make man: {done.stderr[-2000:]}")
    try:
        first = deb.build(repo / "build" / "man", lab.run / "deb", None, None)
        upgrade = deb.build(repo / "build" / "man", lab.run / "deb-upgrade",
                            f"{deb.project_version()}+lab1", None,
                            built_wheels=lab.run / "deb" / "wheelhouse")
    except deb.BuildError as exc:
        pytest.fail(str(exc))
    return first, upgrade
