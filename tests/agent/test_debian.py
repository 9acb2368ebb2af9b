"""The Debian package's own files (debian/, packaging/deb.py) and the devices' image
source (netns-fixtures/devroot.py); the package itself is built and installed, upgraded,
removed and purged under a real systemd in tests/integration/test_package.py."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packaging"))
sys.path.insert(0, str(REPO / "netns-fixtures"))
import deb  # noqa: E402
import devroot  # noqa: E402


def test_the_packages_version_is_pyproject_tomls():
    changelog = (REPO / "debian" / "changelog").read_text()
    assert deb.changelog_version(changelog) == deb.debian_version(deb.project_version())


def test_pre_releases_sort_before_their_release_as_debian_compares_them():
    assert deb.debian_version("1.2.0") == "1.2.0"
    assert deb.debian_version("1.2.0rc1") == "1.2.0~rc1"
    assert deb.debian_version("1.2.0.dev3") == "1.2.0~.dev3"
    assert deb.debian_version("1.2.0b2") == "1.2.0~b2"


def test_a_rebuilt_version_gets_a_first_changelog_entry_of_its_own():
    text = (REPO / "debian" / "changelog").read_text()
    new = deb.changelog_entry("0.1.0+lab1", text)
    assert deb.changelog_version(new) == "0.1.0+lab1"
    assert new.endswith(text)
    assert " -- dicom-agent developers <dicom-agent@example.org>  " in new.split("\n\n")[2]


def test_every_bundled_dependency_needs_its_own_copyright_paragraph():
    text = (REPO / "debian" / "copyright").read_text()
    bundled = ["dicom_agent", "dnspython", "zeroconf", "ldap3", "pyasn1", "ifaddr"]
    assert deb.uncovered(bundled, text) == []
    assert deb.uncovered([*bundled, "async_timeout"], text) == ["async_timeout"]


def test_the_units_are_started_the_debian_way_and_nothing_is_overridden():
    rules = (REPO / "debian" / "rules").read_text()
    assert "dh_installsystemd dicom-agent.service\n" in rules
    assert "--no-start --no-stop-on-upgrade dicom-agent-wait-ready.service" in rules
    assert not list((REPO / "debian").glob("*lintian-overrides*"))
    control = (REPO / "debian" / "control").read_text()
    assert "Architecture: all" in control
    assert "Depends: python3 (>= 3.11), systemd, ${misc:Depends}" in control


def test_the_image_comes_from_the_apt_sources_this_machine_has(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(
        "# a comment\ndeb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm-updates main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.example/archive\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n")
    (etc / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://never.example/debian bookworm main\n")
    assert devroot.apt_sources(etc) == [
        ("http://one.example/debian", ["bookworm-updates"], ["main"]),
        ("http://mirror.example/debian", ["bookworm", "bookworm-updates"], ["main", "contrib"])]
    assert devroot.mirror(etc) == "http://mirror.example/debian"
    (etc / "sources.list.d" / "debian.sources").unlink()
    try:
        devroot.mirror(etc)
    except devroot.DevRootError as exc:
        assert "bookworm main" in str(exc)
    else:
        raise AssertionError("no bookworm source, yet a mirror")
