"""The reference documentation (docs/*.rst, also the man pages) and the code agree: every
boot state, degraded condition, socket operation, error code, hook event and configuration
key of the code is documented, and nothing documented is unknown to the code. The man
pages render without a warning."""

from __future__ import annotations

import copy
import itertools
import re
import subprocess
import sys
from pathlib import Path

from agent import config as config_module
from agent.daemon.boot import BootState, Condition
from agent.daemon.hooks import HOOK_EVENTS
from agent.daemon.status import ERROR_CODES, MUTATING_OPS, READ_OPS

REPO = Path(__file__).resolve().parents[2]
AGENT_8 = (REPO / "docs" / "dicom-agent.8.rst").read_text()
TOML_5 = (REPO / "docs" / "dicom-agent.toml.5.rst").read_text()


def section(text: str, title: str) -> str:
    """The body of the section `title` (up to the next one)."""
    match = re.search(rf"^{re.escape(title)}\n=+\n(.*?)(?=^\S[^\n]*\n=+\n|\Z)", text,
                      re.M | re.S)
    assert match, title
    return match.group(1)


def terms(body: str) -> set[str]:
    """The terms of a definition list: unindented lines followed by an indented one."""
    lines = body.splitlines()
    out = set()
    for line, following in itertools.pairwise(lines):
        if line and not line[0].isspace() and following.startswith("    "):
            out.update(t.strip() for t in re.sub(r"\[.*", "", line).split(","))
    return {t for t in out if t}


def test_boot_states_and_degraded_conditions_are_the_codes():
    assert terms(section(AGENT_8, "BOOT STATES")) == {s.value for s in BootState}
    assert terms(section(AGENT_8, "DEGRADED CONDITIONS")) == {c.value for c in Condition}


def test_socket_operations_and_error_codes_are_the_codes():
    body = section(AGENT_8, "STATUS SOCKET")
    ops = terms(body.split("Errors:")[0])
    assert ops == set(READ_OPS) | set(MUTATING_OPS)
    assert terms(body.split("Errors:")[1]) == set(ERROR_CODES)


def test_hook_events_are_the_codes():
    body = section(AGENT_8, "HOOKS")
    listed = re.search(r"Events:\n\n(.*?)\n\n", body, re.S).group(1)
    assert {e.strip() for e in listed.replace("\n", " ").split(",")} == set(HOOK_EVENTS)


def test_every_configuration_key_is_documented_in_its_table(monkeypatch):
    """The keys each table of the code reads (recorded as it validates a full
    configuration) are the keys dicom-agent.toml(5) lists under that table."""
    known: dict[str, set[str]] = {}
    finish = config_module._Table.finish

    def record(self):
        known.setdefault(re.sub(r"\[\d+\]", "", self.path), set()).update(self.known)
        finish(self)

    monkeypatch.setattr(config_module._Table, "finish", record)
    data = copy.deepcopy({
        "network": {"interface": "eth0"},
        "device": {"name": "CT01", "connection": [{"name": "dicom", "port": 104}],
                   "ae": [{"title": "CT01", "connections": ["dicom"], "transfer_capability": [
                       {"sop_class": "1.2.3", "role": "SCP", "transfer_syntaxes": ["1.2"]}]}]}})
    config_module.parse_config(data)
    headings = {"agent": "[agent]", "network": "[network]", "time": "[time]",
                "directory": "[directory]", "dnssd": "[dnssd]", "device": "[device]",
                "device.connection": "[[device.connection]]", "device.ae": "[[device.ae]]",
                "device.ae.transfer_capability": "[[device.ae.transfer_capability]]"}
    sections = {"device": {"connection", "ae"}, "device.ae": {"transfer_capability"}}
    for path, heading in headings.items():
        documented = terms(section(TOML_5, heading))
        code = known[path] - sections.get(path, set())  # tables of their own, below
        assert documented == code, (heading, documented ^ code)


def test_the_man_pages_render_without_a_warning(tmp_path):
    for name in ("dicom-agent.8", "dicom-agent.toml.5"):
        page = tmp_path / name
        built = subprocess.run([sys.executable, "-m", "docutils", "--writer=manpage",
                                "--halt=warning", str(REPO / "docs" / f"{name}.rst"),
                                str(page)], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        lint = subprocess.run(["groff", "-ww", "-z", "-man", str(page)], capture_output=True,
                              text=True)
        assert lint.returncode == 0 and lint.stderr == "", lint.stderr
        assert page.read_text().startswith(".\\\" Man page generated from reStructuredText")


def test_no_product_file_cites_a_file_outside_the_repository_or_an_issue():
    cited = []
    for root in ("agent", "profiles", "packaging", "examples", "docs"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".rst", ".toml", ".service", ".conf"):
                text = path.read_text()
                if "CONTRACTS.md" in text or re.search(r"\bissue \d+", text, re.I):
                    cited.append(str(path.relative_to(REPO)))
    assert cited == []


def test_the_readmes_vendor_drop_in_is_a_valid_configuration():
    import tomllib

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```toml\n   # /usr/lib/dicom-agent/agent.toml.d/50-scanner.toml\n(.*?)"
                      r"```", readme, re.S).group(1)
    config = config_module.parse_config(tomllib.loads(
        "\n".join(line.removeprefix("   ") for line in block.splitlines())))
    assert config.device.name == "CT-7" and config.device.aes[0].key == "store-scu"


def test_the_readmes_administrator_table_has_every_degraded_condition():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## For administrators")[1].split("\n\n")[2]
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]}
    assert rows == {c.value for c in Condition}
