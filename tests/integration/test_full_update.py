"""The directory as the site's source of truth (issue 13, part 2), on the lab's real
slapd: a reload's new AE and removed connection reach the directory through the same
full update; an administrator's AE rename is followed (title-changed, advertised under
the new title); a kill -9 at each step of a registration leaves no orphan once the agent
has started again (the intent record)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from agent_helpers import AGENT, write_config
from test_agent import stop, wait_for
from test_directory import ldap, registrar
from test_identity import ADMIN, DEVICES, REGISTRY, cleanup

FAULTS = str(Path(__file__).resolve().parents[1] / "faults")
TC = """
[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "SCP"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""


def section(name: str, second_ae: bool = False, extra_connection: bool = True) -> str:
    text = f"""[device]
name = "{name}"
manufacturer = "Example Medical"

[[device.connection]]
name = "dicom"
port = 11112
"""
    if extra_connection:
        text += '\n[[device.connection]]\nname = "extra"\nport = 11113\n'
    text += f'\n[[device.ae]]\nkey = "store"\ntitle_template = "{name}_{{n}}"\n' \
            f'connections = ["dicom"]\n{TC}'
    if second_ae:
        text += f'\n[[device.ae]]\nkey = "qr"\ntitle = "{name}_Q"\nconnections = ["dicom"]\n{TC}'
    return text


def registered(host, prefix: str) -> list[str]:
    """The registry's titles starting with `prefix` (dicomAETitle has no substring rule)."""
    out = ldap(host, "-b", REGISTRY, "-s", "one", "dicomAETitle").stdout
    return sorted(x.split(": ", 1)[1] for x in out.splitlines()
                  if x.startswith("dicomAETitle: ") and x.split(": ", 1)[1].startswith(prefix))


def dns_under(lab, host, dn: str) -> set[str]:
    out = ldap(host, "-b", dn, "-s", "sub", "(objectClass=*)", "dn", admin=True).stdout
    return {line[4:].lower() for line in out.replace("\n ", "").splitlines()
            if line.startswith("dn: ")}


def test_reload_reaches_the_directory_and_an_administrators_rename_is_followed(lab, host):
    name = f"UPD{host.index}"
    device_dn = f"dicomDeviceName={name},{DEVICES}"
    hooks = host.run_dir / "hooks"
    hooks.mkdir()
    seen = host.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_AE_TITLES" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    config = write_config(host, network=f'hostname = "{name.lower()}"\narp_probe = false\n'
                                        "initial_delay = [0.0, 0.0]",
                          agent_section=f'hooks_dir = "{hooks}"',
                          directory=registrar(lab, host) + "\nrefresh_interval = 2.0",
                          device_section=section(name))
    proc = host.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    titles = [f"{name}_1", f"{name}_Q", f"{name}_ADMIN"]
    try:
        wait_for(host, lambda s: s["state"] == "ready", 60)
        assert f"cn=extra,{device_dn}".lower() in dns_under(lab, host, device_dn)
        # The file gains an AE and loses a connection: reload, and the directory follows.
        Path(config).write_text(Path(config).read_text().replace(
            section(name), section(name, second_ae=True, extra_connection=False)))
        from test_agent import ask
        assert ask(host, {"v": 1, "op": "reload"})["ok"] is True
        snap = wait_for(host, lambda s: s["directory"]["ae_titles"] == titles[:2]
                        and s["state"] == "ready", 30)
        got = dns_under(lab, host, device_dn)
        assert f"cn=extra,{device_dn}".lower() not in got
        assert f"dicomaetitle={name}_q,{device_dn}".lower() in got
        assert f"cn=scp 1.2.840.10008.1.1,dicomaetitle={name}_q,{device_dn}".lower() in got
        assert registered(host, f"{name}_") == titles[:2]
        assert snap["degraded"] == []
        assert wait_for(host, lambda s: {x["txt"]["AET"] for x in s["dnssd"]["services"]}
                        == set(titles[:2]), 20)
        # An administrator renames the templated AE (modrdn, with the registry).
        old = f"dicomAETitle={name}_1,{device_dn}"
        assert lab.srv_exec(["ldapmodrdn", *ADMIN, "-r", old,
                             f"dicomAETitle={name}_ADMIN"]).returncode == 0
        assert lab.srv_exec(["ldapadd", *ADMIN], input=(
            f"dn: dicomAETitle={name}_ADMIN,{REGISTRY}\nobjectClass: dicomUniqueAETitle\n"
            f"dicomAETitle: {name}_ADMIN\n")).returncode == 0
        after = wait_for(host, lambda s: s["directory"]["ae_titles"] == [titles[2],
                                                                          titles[1]], 30)
        assert wait_for(host, lambda s: {x["txt"]["AET"] for x in s["dnssd"]["services"]}
                        == {titles[2], titles[1]}, 20)
        assert after["degraded"] == []
        assert wait_for(host, lambda s: seen.exists() and "title-changed" in seen.read_text())
        line = next(x for x in seen.read_text().splitlines() if x.startswith("title-changed"))
        assert line.split()[1:] == [titles[2], titles[1]]
        # Not put back under the configured template's title.
        assert f"dicomaetitle={name}_1,{device_dn}".lower() not in dns_under(lab, host,
                                                                             device_dn)
    finally:
        stop(proc)
        cleanup(lab, [name], titles)


@pytest.mark.parametrize("adds", [1, 2, 4])  # title reserved; device entry; its AE
def test_a_kill_during_registration_leaves_no_orphan_after_the_restart(lab, host, adds):
    name = f"KIL{host.index}X{adds}"
    config = write_config(host, network=f'hostname = "{name.lower()}"\narp_probe = false\n'
                                        "initial_delay = [0.0, 0.0]",
                          directory=registrar(lab, host),
                          device_section=section(name, extra_connection=False))
    env = {**os.environ, "PYTHONPATH": FAULTS, "DICOM_AGENT_FAULTS":
           f"ldap-kill-after-add:{adds}"}
    killed = host.popen([AGENT, "run", "--config", config], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = None
    try:
        assert killed.wait(60) == -9  # SIGKILL, right after that add
        state = host.run_dir / "agent-state"
        assert (state / "registration-intent.json").exists()
        assert registered(host, f"{name}_") == [f"{name}_1"]  # reserved, then killed
        proc = host.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        snap = wait_for(host, lambda s: s["state"] == "ready", 60)
        assert snap["directory"]["ae_titles"] == [f"{name}_1"]
        assert not (state / "registration-intent.json").exists()
        assert registered(host, f"{name}_") == [f"{name}_1"]  # no orphan: the one in use
        got = dns_under(lab, host, f"dicomDeviceName={name},{DEVICES}")
        assert len(got) == 4  # device, connection, AE, transfer capability
    finally:
        if proc is not None:
            stop(proc)
        cleanup(lab, [name], [f"{name}_{i}" for i in range(1, 4)])
