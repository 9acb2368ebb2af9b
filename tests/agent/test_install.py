"""packaging/install.py's files for a device image (the real install runs in
tests/integration/test_systemd_unit.py, under systemd)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packaging"))
import install


def image(tmp_path: Path, groups: str = "root:x:0:\n", resolv_link: bool = False) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text(groups)
    if resolv_link:
        (root / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    else:
        (root / "etc" / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    return root


def test_an_image_gets_units_user_paths_and_an_example_config(tmp_path):
    root = image(tmp_path)
    written = install.write_system_files(root, "/usr/lib/dicom-agent")
    unit = (root / "etc/systemd/system/dicom-agent.service").read_text()
    assert "ExecStart=/usr/lib/dicom-agent/.venv/bin/dicom-agent run" in unit
    assert "/opt/dicom-agent" not in unit  # the prefix is the image's
    assert "User=dicom-agent" in unit
    assert (root / install.SYSUSERS).read_text().splitlines()[1].split()[:2] == \
        ["u", "dicom-agent"]
    tmpfiles = (root / install.TMPFILES).read_text()
    assert "d /etc/dicom-agent/credentials 0700 root root -" in tmpfiles
    assert "f /etc/resolv.conf 0644 dicom-agent dicom-agent -" in tmpfiles
    assert "etc/systemd/system/dicom-agent.service.d/chrony.conf" not in written
    assert (root / "etc/dicom-agent/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/dicom-agent/agent.toml").read_text().startswith("# A CT scanner")


def test_chronys_group_gets_a_dropin_and_resolveds_link_is_left_alone(tmp_path):
    root = image(tmp_path, "root:x:0:\n_chrony:x:112:\n", resolv_link=True)
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/chrony.service").write_text("[Service]\n")
    (root / "etc/dicom-agent").mkdir(parents=True)
    (root / "etc/dicom-agent/agent.toml").write_text("# the site's own\n")
    install.write_system_files(root, "/opt/dicom-agent")
    dropin = root / install.DROPINS / "chrony.conf"
    assert "SupplementaryGroups=_chrony" in dropin.read_text()
    socket = root / "etc/systemd/system/chrony.service.d/dicom-agent.conf"
    assert "ExecStartPost=/bin/chmod g+w /run/chrony/chronyd.sock" in socket.read_text()
    assert "/etc/resolv.conf" not in (root / install.TMPFILES).read_text()
    assert (root / "etc/dicom-agent/agent.toml").read_text() == "# the site's own\n"


def test_uninstall_removes_what_install_made_and_keeps_the_sites_files(tmp_path):
    root = image(tmp_path, "chrony:x:112:\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/chronyd.service").write_text("[Service]\n")
    install.write_system_files(root, "/opt/dicom-agent")
    assert (root / "etc/systemd/system/chronyd.service.d/dicom-agent.conf").exists()
    (root / "opt/dicom-agent/.venv/bin").mkdir(parents=True)
    (root / install.DROPINS / "sntp.conf").write_text("[Service]\n")  # the site's
    kept = install.uninstall(root, "/opt/dicom-agent")
    assert not (root / "opt/dicom-agent").exists()
    assert not (root / "etc/systemd/system/dicom-agent.service").exists()
    assert not (root / install.DROPINS / "chrony.conf").exists()
    assert not (root / "etc/systemd/system/chronyd.service.d").exists()
    assert not (root / install.SYSUSERS).exists() and not (root / install.TMPFILES).exists()
    assert (root / install.DROPINS / "sntp.conf").exists()
    assert kept == ["etc/dicom-agent", install.DROPINS]
