"""`make install DESTDIR=`: a staging install (packaging/stage.py) writes files only, for
the final paths — nothing run inside DESTDIR, no bytecode, no virtual environment — and
the tree works once placed: the system python3 in isolated mode runs the product and its
bundled dependencies from it. Uninstall removes what it wrote, keeping the site's edits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # pip fetches the dependencies' wheels (PyPI)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                            str(out), str(REPO)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    return out


def stage(destdir: Path, wheelhouse: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "packaging" / "stage.py"),
                           "--destdir", str(destdir), "--wheelhouse", str(wheelhouse),
                           *extra], capture_output=True, text=True)


def test_a_staging_install_into_an_empty_directory_is_files_only_and_runs(tmp_path,
                                                                          wheelhouse):
    destdir = tmp_path / "image"
    done = stage(destdir, wheelhouse)
    assert done.returncode == 0, done.stderr
    files = {str(p.relative_to(destdir)) for p in destdir.rglob("*") if p.is_file()}
    lib = "usr/lib/dicom-agent/python"
    for expected in ("usr/bin/dicom-agent", "usr/lib/systemd/system/dicom-agent.service",
                     "usr/lib/systemd/system/dicom-agent-wait-ready.service",
                     "usr/lib/systemd/system/dicom-ready.target",
                     "usr/lib/sysusers.d/dicom-agent.conf", "usr/lib/tmpfiles.d/dicom-agent.conf",
                     "etc/dicom-agent/agent.toml", f"{lib}/agent/commands/cli.py",
                     f"{lib}/zeroconf/__init__.py", f"{lib}/ldap3/__init__.py",
                     f"{lib}/dns/message.py", "usr/lib/dicom-agent/installed-files"):
        assert expected in files, expected
    assert not [f for f in files if f.endswith(".pyc") or "/.venv/" in f or "/bin/python" in f]
    unit = (destdir / "usr/lib/systemd/system/dicom-agent.service").read_text()
    assert "ExecStart=/usr/bin/dicom-agent run\n" in unit
    assert "Documentation=man:dicom-agent(8)" in unit
    assert (destdir / "usr/bin/dicom-agent").read_text().startswith("#!/usr/bin/python3 -I\n")
    assert os.access(destdir / "usr/bin/dicom-agent", os.X_OK)
    # Placed at /, the launcher's path would be /usr/lib/dicom-agent/python: here the same
    # code, isolated (-I), with the staged tree in its place, runs and finds everything
    # there, not in this machine's environment.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import agent, zeroconf, ldap3; "
             "assert all(m.__file__.startswith(sys.argv[1]) for m in (agent, zeroconf, ldap3));"
             "from agent.commands.cli import main; sys.exit(main(['--version']))")
    ran = subprocess.run(["/usr/bin/python3", "-I", "-B", "-c", probe,
                          str(destdir / lib)], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.startswith("dicom-agent "), ran.stderr
    # BUNDLE_DEPS=0: the product alone.
    alone = tmp_path / "alone"
    assert stage(alone, wheelhouse, "--no-deps").returncode == 0
    assert not (alone / lib / "zeroconf").exists() and (alone / lib / "agent").is_dir()


def test_uninstall_removes_what_install_wrote_and_keeps_the_sites_edits(tmp_path,
                                                                        wheelhouse):
    destdir = tmp_path / "image"
    assert stage(destdir, wheelhouse).returncode == 0
    hook = destdir / "etc/dicom-agent/hooks.d/10-site"
    hook.write_text("#!/bin/sh\n")
    config = destdir / "etc/dicom-agent/agent.toml"
    config.write_text(config.read_text() + '[network]\ninterface = "eth0"\n')
    done = subprocess.run([sys.executable, str(REPO / "packaging" / "stage.py"),
                           "--uninstall", "--destdir", str(destdir)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(destdir)) for p in destdir.rglob("*") if p.is_file())
    assert left == ["etc/dicom-agent/agent.toml", "etc/dicom-agent/hooks.d/10-site"]
