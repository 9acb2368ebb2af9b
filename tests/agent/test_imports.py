"""What each kind of run loads (issue 18: a device pays at boot only for the profiles it
uses): a daemon whose directory is disabled never loads ldap3, the standalone DHCP and
time commands load neither the directory's nor DNS-SD's libraries, and none of them loads
dnspython, pyroute2 or pynetdicom (health checks import it when they first run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("ldap3", "pyasn1", "zeroconf", "dns", "pyroute2", "pynetdicom")


def loaded(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after running `code`."""
    probe = (f"import sys\n{code}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])  # a list literal of names


def daemon_config(tmp_path, directory: str) -> Path:
    config = tmp_path / "agent.toml"
    archive = (REPO / "agent" / "examples" / "archive.toml").read_text()
    assert 'security = "anonymous"' in archive
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'runtime_dir = "{tmp_path / "run"}"\n\n'
                      + archive.replace('security = "anonymous"', directory))
    return config


def test_the_daemon_starts_without_the_heavy_libraries(tmp_path):
    """Configuration read (its DNs checked without ldap3) and the daemon made: nothing
    heavy yet — the first DHCPDISCOVER does not wait for zeroconf or ldap3."""
    secret = tmp_path / "registrar.pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    config = daemon_config(tmp_path, 'security = "basic"\nbind_dn = "cn=Registrar,dc=h,dc=t"'
                                     f'\npassword_file = "{secret}"'
                                     '\nallow_cleartext_password = true')
    code = ("from agent.config import load_config\nfrom agent.daemon.router import Agent\n"
            f"agent = Agent(load_config({str(config)!r}))\n"
            "assert agent.config.directory.bind_dn")
    assert loaded(code) == []


def test_the_warm_up_loads_ldap3_only_for_a_directory(tmp_path):
    """The daemon's warm-up (in a thread while the address is acquired): zeroconf for
    DNS-SD, ldap3 only when the directory is enabled — and a daemon whose directory is
    disabled never loads it, its directory task included."""
    for directory, heavy in (("enabled = false", ["zeroconf"]),
                             ('security = "anonymous"', ["ldap3", "pyasn1", "zeroconf"])):
        config = daemon_config(tmp_path, directory)
        code = ("import asyncio\nfrom agent.config import load_config\n"
                "from agent.daemon.router import Agent\n"
                "async def main():\n"
                f"    agent = Agent(load_config({str(config)!r}))\n"
                "    await agent._warm_up()\n"
                "    if not agent.config.directory.enabled:\n"
                "        assert agent.snapshot()['directory']['state'] == 'disabled'\n"
                "        await agent.directory.run()\n"  # such a device's directory task ends
                "asyncio.run(main())")
        assert loaded(code) == heavy, directory


def test_the_directory_cores_and_state_files_load_no_ldap3():
    assert loaded("import profiles.app_config.plan, profiles.app_config.registration, "
                  "profiles.app_config.records_io") == []


@pytest.mark.parametrize("module", ["agent.commands.dhcp_command", "agent.commands.time_command"])
def test_the_standalone_dhcp_and_time_commands_load_only_their_profile(module):
    assert loaded(f"import {module}") == []
