"""The replicated directory of the lab (issue 14, part 1): two OpenLDAP providers in
multi-provider replication, each in its own namespace; replication can be cut and
restored without cutting devices off."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from lab import ADMIN_DN, ADMIN_PASSWORD, PROVIDER_ADDRESSES, LabError

REGISTRY = "cn=Unique AE Titles Registry,cn=DICOM Configuration,dc=hospital,dc=test"


def titles_on(host, address: str) -> set[str]:
    out = host.run(["ldapsearch", "-x", "-LLL", "-H", f"ldap://{address}", "-b", REGISTRY,
                    "-s", "one", "dicomAETitle"]).stdout
    return {x.split(": ", 1)[1] for x in out.splitlines() if x.startswith("dicomAETitle: ")}


def add_title(host, address: str, title: str) -> None:
    done = host.run(["ldapadd", "-x", "-H", f"ldap://{address}", "-D", ADMIN_DN, "-w",
                     ADMIN_PASSWORD], input=f"dn: dicomAETitle={title},{REGISTRY}\n"
                                            f"objectClass: dicomUniqueAETitle\n"
                                            f"dicomAETitle: {title}\n")
    assert done.returncode == 0, done.stderr


def until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def configured_on(lab, dev, name: str, template: str, provider: str):
    """Device `name` (AE title template) with its own state directory, whose directory
    record says `provider` answered last (so it registers there first): (config, state)."""
    from agent_helpers import write_config
    from test_agent import registrar_section
    from test_identity import device as device_section

    state = dev.run_dir / f"state-{name}"
    state.mkdir()
    (state / "directory.json").write_text(json.dumps({
        "server": f"ldap://{provider}.hospital.test:389", "base_dn": None,
        "device_dn": None, "titles": []}))
    return write_config(dev, network=f'hostname = "{name.lower()}"',
                        directory=registrar_section(lab, dev), name=f"{name}.toml",
                        device_section=device_section(name, name, template),
                        state_dir=str(state)), state


def test_two_providers_replicate_both_ways_and_replication_can_be_cut(lab, host):
    urls = lab.start_replicated(2)
    assert urls == [f"ldap://{a}:389" for a in PROVIDER_ADDRESSES[:2]]
    one, two = PROVIDER_ADDRESSES[:2]
    assert until(lambda: "ARCHIVE" in titles_on(host, two))  # the base, replicated
    tag = f"R{host.index}"
    add_title(host, one, f"{tag}_ONE")
    add_title(host, two, f"{tag}_TWO")
    assert until(lambda: {f"{tag}_ONE", f"{tag}_TWO"} <= titles_on(host, two)
                 and {f"{tag}_ONE", f"{tag}_TWO"} <= titles_on(host, one))
    lab.cut_replication(2)
    add_title(host, one, f"{tag}_CUT")
    time.sleep(3)
    assert f"{tag}_CUT" not in titles_on(host, two)  # cut, yet reachable
    lab.restore_replication(2)
    assert until(lambda: f"{tag}_CUT" in titles_on(host, two))
    # A lagging replica (SIGSTOP): it catches up once it runs again.
    lab.pause_provider(2)
    try:
        add_title(host, one, f"{tag}_LAG")
    finally:
        lab.resume_provider(2)
    assert until(lambda: f"{tag}_LAG" in titles_on(host, two))


def test_a_device_registers_through_the_srv_of_the_pair_and_both_have_it(lab, host):
    import json

    from agent_helpers import agent, default_device, write_config
    from test_agent import registrar_section

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    name = f"REP{host.index}"
    try:
        config = write_config(host, network=f'hostname = "{name.lower()}"',
                              directory=registrar_section(lab, host),
                              device_section=default_device(host.index, name=name))
        reg = agent(host, "directory", "register", "--config", config, "--json")
        out = json.loads(reg.stdout)
        assert reg.returncode == 0, reg.stderr
        assert out["server"] in ("ldap://ldap1.hospital.test:389",
                                 "ldap://ldap2.hospital.test:389")
        for address in PROVIDER_ADDRESSES[:2]:
            assert until(lambda a=address: f"{name}_SCU" in titles_on(host, a)), (
                address, out, sorted(titles_on(host, PROVIDER_ADDRESSES[0])),
                sorted(titles_on(host, PROVIDER_ADDRESSES[1])))
    finally:
        lab.set_srv_layout("live-first")
        for address in PROVIDER_ADDRESSES[:1]:
            for dn in (f"dicomDeviceName={name},cn=Devices,cn=DICOM Configuration,"
                       "dc=hospital,dc=test", f"dicomAETitle={name}_SCU,{REGISTRY}"):
                host.run(["ldapdelete", "-x", "-r", "-H", f"ldap://{address}", "-D",
                          ADMIN_DN, "-w", ADMIN_PASSWORD, dn])


def test_one_title_reserved_on_two_cut_replicas_is_kept_by_one_device(lab, device, host):
    """Issue 14: replication cut, two devices with one template reserve the same title,
    each on its own provider. The second, checking the other provider, finds the first's
    older AE entry (entryCSN) and moves on to the next title; replication restored, both
    providers agree: one title each, no orphan in the registry."""
    import json

    from agent_helpers import agent

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    lab.cut_replication(1)
    lab.cut_replication(2)
    template = f"RPL{host.index}_{{n}}"
    names = [f"RPA{host.index}", f"RPB{host.index}"]
    devices_ = (device, host)
    try:
        outs = []
        for dev, name, provider in zip(devices_, names, ("ldap1", "ldap2"), strict=True):
            config, _ = configured_on(lab, dev, name, template, provider)
            if dev is device:
                dev.configure_static()
            reg = agent(dev, "directory", "register", "--config", config, "--json")
            assert reg.returncode == 0, reg.stderr
            outs.append({**json.loads(reg.stdout), "log": reg.stderr})
        first, second = (o["titles"][0] for o in outs)
        assert outs[0]["server"].startswith("ldap://ldap1") and \
            outs[1]["server"].startswith("ldap://ldap2")
        assert first == template.format(n=1) and second == template.format(n=2)
        # The second reserved the same title on its replica, then gave way to the first.
        assert f"AE title {first} is also device {names[0]}'s" in outs[1]["log"]
        assert "giving it up" in outs[1]["log"] and "giving it up" not in outs[0]["log"]
        lab.restore_replication(1)
        lab.restore_replication(2)
        for address in PROVIDER_ADDRESSES[:2]:  # both directories agree, no orphan
            assert until(lambda a=address: {t for t in titles_on(host, a)
                                            if t.startswith(f"RPL{host.index}_")}
                         == {first, second}, 20), (address, titles_on(host, address))
            out = host.run(["ldapsearch", "-x", "-LLL", "-H", f"ldap://{address}", "-b",
                            "cn=Devices,cn=DICOM Configuration,dc=hospital,dc=test",
                            f"(dicomAETitle={first})", "dn"]).stdout
            assert out.count("dn: ") == 1 and names[0] in out  # one holder of the title
    finally:
        lab.restore_replication(1)
        lab.restore_replication(2)
        lab.set_srv_layout("live-first")
        for name in names:
            host.run(["ldapdelete", "-x", "-r", "-H", f"ldap://{PROVIDER_ADDRESSES[0]}", "-D",
                      ADMIN_DN, "-w", ADMIN_PASSWORD,
                      f"dicomDeviceName={name},cn=Devices,cn=DICOM Configuration,"
                      "dc=hospital,dc=test"])
        for n in (1, 2, 3):
            host.run(["ldapdelete", "-x", "-H", f"ldap://{PROVIDER_ADDRESSES[0]}", "-D",
                      ADMIN_DN, "-w", ADMIN_PASSWORD,
                      f"dicomAETitle={template.format(n=n)},{REGISTRY}"])


FAULTS = str(Path(__file__).resolve().parents[1] / "faults")
DEVICES = "cn=Devices,cn=DICOM Configuration,dc=hospital,dc=test"


def holders_on(host, address: str, title: str) -> list[str]:
    """The DNs of AE entries with `title` on one provider."""
    out = host.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", f"ldap://{address}",
                    "-b", DEVICES,
                    f"(&(objectClass=dicomNetworkAE)(dicomAETitle={title}))", "dn"]).stdout
    return [x[4:] for x in out.splitlines() if x.startswith("dn: ")]


def remove_device(host, name: str, titles: list[str]) -> None:
    for dn in [f"dicomDeviceName={name},{DEVICES}"] + [
            f"dicomAETitle={t},{REGISTRY}" for t in titles]:
        host.run(["ldapdelete", "-x", "-r", "-H", f"ldap://{PROVIDER_ADDRESSES[0]}", "-D",
                  ADMIN_DN, "-w", ADMIN_PASSWORD, dn])


@pytest.mark.parametrize("replicated", [True, False],
                         ids=["reservation-replicated", "reservation-not-replicated"])
def test_a_provider_lost_mid_registration_leaves_no_orphan_on_either(lab, host, replicated):
    """Issue 14: the provider dies between the title's reservation and the device entry.
    The agent goes on with the next SRV target: what the intent record says it added is
    undone there first, then it registers; the dead provider back, both directories agree
    on one title held by the device, no orphan, and a second registration changes
    nothing. Either the reservation had reached the other provider (it is deleted there,
    then reserved again) or not (replication to it cut: reserved there afresh, and the
    two adds of one registry entry merge when replication returns)."""
    from agent_helpers import AGENT, agent

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    one, two = PROVIDER_ADDRESSES[:2]
    name = f"FO{host.index}{'R' if replicated else 'N'}"
    template = f"{name}_{{n}}"
    title = template.format(n=1)
    config, state = configured_on(lab, host, name, template, "ldap1")
    fault_dir = host.run_dir / f"fault-{name}"
    fault_dir.mkdir()
    marker = fault_dir / "paused-after-add"
    env = {**os.environ, "PYTHONPATH": FAULTS, "DICOM_AGENT_FAULTS": "ldap-pause-after-add:1",
           "DICOM_AGENT_FAULT_DIR": str(fault_dir), "DICOM_AGENT_LOG": "INFO"}
    if not replicated:
        lab.cut_replication(2)
    proc = host.popen([AGENT, "directory", "register", "--config", config, "--json"],
                      env=env)
    try:
        assert until(marker.exists, 60), proc.stderr.read() if proc.poll() is not None else ""
        assert title in titles_on(host, one)  # reserved on ldap1, device entry not yet added
        if replicated:
            assert until(lambda: title in titles_on(host, two))
        else:
            time.sleep(1)
            assert title not in titles_on(host, two)
        lab.kill_provider(1)
        marker.unlink()
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["server"] == "ldap://ldap2.hospital.test:389", result
        assert result["titles"] == [title], (result, err)
        assert "undid an interrupted registration" in err
        assert not (state / "registration-intent.json").exists()
        assert holders_on(host, two, title) == [f"dicomAETitle={title},dicomDeviceName="
                                                f"{name},{DEVICES}"]
        lab.start_provider(1)
        if not replicated:
            lab.restore_replication(2)
        for address in (one, two):  # both agree: the one title, held by the device
            assert until(lambda a=address: {t for t in titles_on(host, a)
                                            if t.startswith(f"{name}_")} == {title}
                         and len(holders_on(host, a, title)) == 1, 20), (
                address, titles_on(host, address))
        again = agent(host, "directory", "register", "--config", config, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["changed"] == [] and \
            json.loads(again.stdout)["titles"] == [title]  # no duplicate work
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        marker.unlink(missing_ok=True)
        try:
            lab.provider_pid(1)
        except (OSError, ValueError, LabError):
            lab.start_provider(1)
        if not replicated:
            lab.restore_replication(2)
        lab.set_srv_layout("live-first")
        remove_device(host, name, [title, template.format(n=2)])


def test_a_boot_storm_on_the_pair_converges_without_duplicate_titles(lab, host):
    """Issue 14 (the smaller storm; `make bench` runs 30): devices with one pair of title
    templates boot at once against the replicated pair, spread over the SRV targets; all
    reach ready and, once replication settles, both providers agree with the agents:
    every title held by one AE, none held twice, no orphan in the registry."""
    import storm

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    addresses = PROVIDER_ADDRESSES[:2]
    run = storm.start(lab, 6, f"SM{host.index}")
    try:
        storm.wait_ready(run, 120)
        assert [b.name for b in run.booted if b.ready_s is None] == []
        took = storm.settle(lab, run, addresses, 60)
        assert took is not None, ([(b.name, b.titles) for b in run.booted],
                                  [storm.directory_view(lab, a, run.tag) for a in addresses])
        assert storm.duplicates(lab, run, addresses) == 0
        assert all(b.operations and b.operations > 0 for b in run.booted)
    finally:
        storm.end(lab, run)
        storm.remove(lab, run, addresses[0])
        lab.set_srv_layout("live-first")


def test_a_lagging_replica_never_makes_the_device_doubt_its_own_titles(lab, host):
    """Issue 14: the other provider lags (stopped, then behind): the replica check gets no
    answer within its deadline and the device keeps its title; caught up, the provider
    has the device's entries and a second registration changes nothing."""
    from agent_helpers import AGENT, agent

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    one, two = PROVIDER_ADDRESSES[:2]
    name = f"LAG{host.index}"
    template = f"{name}_{{n}}"
    title = template.format(n=1)
    config, _ = configured_on(lab, host, name, template, "ldap1")
    lab.pause_provider(2)
    try:
        reg = host.run([AGENT, "directory", "register", "--config", config, "--json"],
                       env={**os.environ, "DICOM_AGENT_LOG": "INFO"}, timeout=90)
        assert reg.returncode == 0, reg.stderr
        out = json.loads(reg.stdout)
        assert out["server"] == "ldap://ldap1.hospital.test:389" and out["titles"] == [title]
        assert "replica check: ldap://ldap2.hospital.test:389: no answer" in reg.stderr
        assert "giving it up" not in reg.stderr
    finally:
        lab.resume_provider(2)
    try:
        assert until(lambda: holders_on(host, two, title) == holders_on(host, one, title)
                     and len(holders_on(host, two, title)) == 1, 30)
        again = agent(host, "directory", "register", "--config", config, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["changed"] == [] and \
            json.loads(again.stdout)["titles"] == [title]
        assert "giving it up" not in again.stderr
    finally:
        lab.set_srv_layout("live-first")
        remove_device(host, name, [title])


def test_a_title_held_twice_after_a_partition_is_resolved_within_a_minute(lab, device, host):
    """Replication cut, two devices each cut off from the other provider (the
    registration's replica check cannot reach it) register the same title on their own
    providers. Replication restored, the rival's entry replicates to each device's own
    provider, where the device looks every 30 s (±20 %): the younger entry gives way and
    the title is held once on both providers within a minute (it took 5 min and more)."""
    from partition import Partition, holders

    lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    try:
        with Partition(lab, (device, host), str(host.index)) as part:
            title = part.registered_twice()
            for address in PROVIDER_ADDRESSES[:2]:
                assert len(holders(lab, address, title)) == 1  # each its own, cut
            took = part.heal(title, timeout=90)
            assert took is not None, (part.titles(), [
                holders(lab, a, title) for a in PROVIDER_ADDRESSES[:2]])
            assert took <= 60, took  # the bound, from the providers agreeing again
            a, b = part.titles()
            assert sorted(a + b) == [title, part.template.format(n=2)]
    finally:
        lab.set_srv_layout("live-first")
