"""dicom-agent-client, the socket client shipped alone: `make client-wheel` builds it, and
a bare virtual environment (none of the agent's dependencies) imports and uses it."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_client_wheel_works_in_a_bare_environment(tmp_path):
    built = subprocess.run(["make", "-s", "client-wheel"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = sorted((REPO / "build" / "wheelhouse").glob("dicom_agent_client-*.whl"))
    venv = tmp_path / "app-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    with zipfile.ZipFile(wheel) as whl:  # what pip would put there; no pip in a bare venv
        whl.extractall(site)
    probe = ("import dicom_agent_client as c, sys\n"
             "try:\n    c.AgentClient('/nonexistent/status.sock').status()\n"
             "except c.AgentNotRunning as exc:\n    print('not running:', exc)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('ldap3', 'zeroconf', 'dns', 'pyroute2', 'agent', 'profiles')))\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "not running: no agent at /nonexistent/status.sock: No such file or directory", "[]"]
