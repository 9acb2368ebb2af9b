"""The registration core (profiles/app_config/registration.py) against an in-memory
directory: title races, rollback after a failure at each step, a kill at each step and
the recovery after it, adoption, conflicts, renames, and the full update."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fake_directory import ROOT, FakeDirectory, norm

from profiles.app_config import plan, registration
from profiles.app_config.model import Device, NetworkAE, NetworkConnection, TransferCapability
from profiles.app_config.registration import (
    Add,
    Conflict,
    ConnectionLost,
    DirectoryError,
    Known,
    Refused,
    run,
)

ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
VERIFY = TransferCapability("1.2.840.10008.1.1", "SCP", ("1.2.840.10008.1.2",))
CT_STORE = TransferCapability("1.2.840.10008.5.1.4.1.1.2", "SCU", ("1.2.840.10008.1.2.1",))


def ae(title=None, template=None, key=None, connections=("dicom",), tcs=(VERIFY,), **kw):
    return NetworkAE(title=title, title_template=template, association_acceptor=True,
                     association_initiator=True, connections=tuple(connections),
                     transfer_capabilities=tuple(tcs), key=key, **kw)


def device(name="CT1", aes=None, connections=None, **kw) -> Device:
    return Device(name=name, aes=tuple(aes or [ae(template="WS{n}")]),
                  connections=tuple(connections or [NetworkConnection("dicom", port=104)]),
                  **kw)


def hostnames(dev: Device) -> dict[str, str]:
    return {c.name: f"{dev.name.lower()}.hospital.test" for c in dev.connections}


def register(d: FakeDirectory, dev: Device, known: Known | None = None, device_id=ID):
    return run(registration.register(ROOT, dev, hostnames(dev), known or Known(), 100,
                                     device_id), d.execute)


def known_of(reg) -> Known:
    return Known(list(reg.titles), dict(reg.keys))


def dev_dn(name: str) -> str:
    return plan.device_dn(ROOT, name)


def test_a_new_device_reserves_titles_adds_its_entries_and_clears_its_intent():
    d = FakeDirectory()
    reg = register(d, device(aes=[ae(template="WS{n}"), ae(title="CT1_Q", key="qr")]))
    assert reg.titles == ["WS1", "CT1_Q"] and not reg.adopted
    assert reg.keys == {"WS{n}": "WS1", "qr": "CT1_Q"}
    assert d.titles() == {"WS1", "CT1_Q"}
    assert plan.marker(ID) in d.get(dev_dn("CT1"))["dicomsoftwareversion"]
    assert len(d.under(dev_dn("CT1"))) == 1 + 1 + 2 + 2  # device, conn, 2 AEs, 2 TCs
    assert d.intent is None


def test_a_title_taken_between_the_registry_read_and_the_add_goes_to_the_next():
    d = FakeDirectory()

    def race(op):
        if isinstance(op, Add) and op.entry.dn == plan.title_dn(ROOT, "WS1"):
            d.load([plan.title_entry(ROOT, "WS1")])  # another device, a moment earlier
            d.before = None

    d.before = race
    reg = register(d, device())
    assert reg.titles == ["WS2"] and d.titles() == {"WS1", "WS2"}


def successful_adds(dev: Device) -> int:
    d = FakeDirectory()
    register(d, dev)
    return sum(isinstance(op, Add) for op in d.log)


TWO_AES = device(aes=[ae(template="WS{n}"), ae(title="CT1_Q", tcs=(VERIFY, CT_STORE))])


@pytest.mark.parametrize("step", range(successful_adds(TWO_AES)))
def test_a_refusal_at_any_add_is_rolled_back_completely(step):
    d = FakeDirectory()
    adds = []

    def refuse(op, index):
        if isinstance(op, Add):
            adds.append(op)
            if len(adds) == step + 1:
                return 53  # unwillingToPerform
        return None

    d.fault = refuse
    with pytest.raises(Refused):
        register(d, TWO_AES)
    assert d.titles() == set() and d.under(dev_dn("CT1")) == []
    assert d.intent is None  # all undone: nothing left to recover


@pytest.mark.parametrize("step", range(successful_adds(TWO_AES)))
def test_a_connection_lost_at_any_add_is_undone_on_the_next_connection(step):
    d = FakeDirectory()
    adds = []

    def drop(op, index):
        if isinstance(op, Add):
            adds.append(op)
            if len(adds) == step + 1:
                return ConnectionLost("server went away")
        return None

    d.fault = drop
    with pytest.raises(ConnectionLost):
        register(d, TWO_AES)
    assert d.intent is not None and d.intent["adding"] == adds[-1].entry.dn
    # A new connection: the intent record is recovered first, then registration again.
    d.lost, d.fault = False, None
    undone, in_flight = run(registration.recover(d.intent), d.execute)
    # The add in flight is undone too when it is the device's own subtree; a title in
    # flight is handed back as maybe ours.
    assert [norm(x) for x in undone] == [norm(op.entry.dn) for op in adds[:-1]] + (
        [] if in_flight else [norm(adds[-1].entry.dn)])
    assert in_flight == (adds[-1].entry.attributes["dicomAETitle"][0]
                         if "Registry" in adds[-1].entry.dn else None)
    assert d.titles() == set() and d.under(dev_dn("CT1")) == [] and d.intent is None
    reg = register(d, TWO_AES, Known([in_flight] if in_flight else []))
    assert reg.titles == ["WS1", "CT1_Q"] and d.titles() == {"WS1", "CT1_Q"}


class Killed(BaseException):
    """kill -9: nothing after it runs, no rollback (not a DirectoryError)."""


@pytest.mark.parametrize("step", range(successful_adds(TWO_AES) + 1))
def test_a_kill_at_any_step_leaves_no_orphan_after_the_restart(step):
    d = FakeDirectory()
    adds = []

    def kill(op, index):
        if isinstance(op, Add):
            adds.append(op)
            if len(adds) == step + 1:
                d.load([op.entry])  # the add reached the server, then the process died
                return Killed()
        return None

    d.fault = kill
    known = Known()
    if step < successful_adds(TWO_AES):
        with pytest.raises(Killed):
            register(d, TWO_AES)
        assert d.intent is not None  # the restart finds it
        d.fault = None
        _, in_flight = run(registration.recover(d.intent), d.execute)
        assert d.under(dev_dn("CT1")) == [] and d.intent is None
        # Only a title in flight is left, and kept as maybe ours for the next try.
        assert d.titles() == ({in_flight} if in_flight else set())
        known = Known([in_flight] if in_flight else [])
    else:
        register(d, TWO_AES)
    d.fault = None
    reg = register(d, TWO_AES, known)
    assert d.intent is None and reg.titles == ["WS1", "CT1_Q"]
    assert d.titles() == {"WS1", "CT1_Q"}  # no orphan: every title is used


def test_adoption_by_name_claims_the_entry_and_keeps_the_administrators_side():
    d = FakeDirectory()
    pre = device(name="PRE", aes=[ae(title="PRE_ADM")], description="by hand")
    d.load(plan.device_entries(ROOT, pre, ["PRE_ADM"], {"dicom": "old.hospital.test"}))
    d.get(dev_dn("PRE"))["objectclass"].append("extensibleObject")
    d.get(dev_dn("PRE"))["l"] = ["Room 3"]
    d.get(dev_dn("PRE"))["dicominstalled"] = ["FALSE"]
    mine = device(name="PRE", aes=[ae(title="PRE_SCU")], description="from the file",
                  manufacturer="Example")
    reg = register(d, mine)
    entry = d.get(dev_dn("PRE"))
    assert reg.adopted and reg.titles == ["PRE_ADM"]  # one AE each: the administrator's
    assert entry["l"] == ["Room 3"] and "extensibleObject" in entry["objectclass"]
    assert entry["dicomdescription"] == ["by hand"] and entry["dicominstalled"] == ["FALSE"]
    assert entry["dicommanufacturer"] == ["Example"]  # device-side: the file's
    assert plan.marker(ID) in entry["dicomsoftwareversion"]
    conn = d.get(plan.connection_dn(dev_dn("PRE"), "dicom"))
    assert conn["dicomhostname"] == ["pre.hospital.test"]
    # Registered again, now its own: nothing to change.
    d.log.clear()
    again = register(d, mine, known_of(reg))
    assert not again.adopted and again.changed == []
    writes = (registration.Add, registration.Modify, registration.Delete)
    assert not [op for op in d.log if isinstance(op, writes)]


def test_adoption_by_serial_needs_manufacturer_and_model_and_one_unclaimed_candidate():
    d = FakeDirectory()
    for name in ("ADMIN1", "ADMIN2"):
        d.load(plan.device_entries(ROOT, device(name=name, aes=[ae(title=f"{name}_A")],
                                                serial_number="SN-1", manufacturer="M",
                                                model_name="X"), [f"{name}_A"],
                                   {"dicom": "h"}))
    mine = device(name="NEW", serial_number="SN-1", manufacturer="M", model_name="X")
    with pytest.raises(Conflict, match="2 unclaimed devices match serial number"):
        register(d, mine)
    # One of them claimed by another device: the other one is ours to adopt.
    d.get(dev_dn("ADMIN1"))["dicomsoftwareversion"] = [plan.marker(OTHER_ID)]
    reg = register(d, mine)
    assert reg.adopted and reg.device_dn == dev_dn("ADMIN2")
    # Serial number alone adopts nothing.
    assert register(FakeDirectory(), device(name="LONE", serial_number="SN-1")).adopted is False


def test_a_name_claimed_by_another_device_is_a_conflict_and_nothing_is_written():
    d = FakeDirectory()
    other = plan.with_marker(device(name="CT1", aes=[ae(title="CT1_A")]), OTHER_ID)
    d.load([plan.title_entry(ROOT, "CT1_A"),
            *plan.device_entries(ROOT, other, ["CT1_A"], {"dicom": "x"})])
    before = {k: dict(v) for k, v in d.entries.items()}
    with pytest.raises(Conflict, match="belongs to another device"):
        register(d, device(name="CT1", aes=[ae(title="CT1_B")]))
    assert d.entries == before


def test_a_renamed_entry_is_found_by_its_marker_and_updated_where_it_is():
    d = FakeDirectory()
    reg = register(d, device())
    entries = sorted(d.entries.values(), key=lambda e: len(e["dn"]))
    renamed = "dicomDeviceName=RENAMED," + plan.devices_dn(ROOT)
    for e in entries:  # the administrator's modrdn of the whole subtree
        if norm(e["dn"]).endswith(norm(reg.device_dn)):
            del d.entries[norm(e["dn"])]
            d.put(e["dn"][:-len(reg.device_dn)] + renamed, {k: v for k, v in e.items()
                                                            if k != "dn"})
    again = register(d, replace(device(), manufacturer="Example"), known_of(reg))
    assert again.device_dn == renamed and not again.adopted
    assert d.get(renamed)["dicommanufacturer"] == ["Example"]
    assert d.get(dev_dn("CT1")) is None  # no second entry under the old name


def test_the_full_update_adds_removes_and_changes_only_the_device_side():
    d = FakeDirectory()
    first = device(aes=[ae(title="CT1_A", key="a", description="scanner"),
                        ae(title="CT1_B", key="b")],
                   connections=[NetworkConnection("dicom", port=104),
                                NetworkConnection("tls", port=2762)])
    reg = register(d, first)
    a_dn = plan.ae_dn(dev_dn("CT1"), "CT1_A")
    d.get(a_dn)["dicomdescription"] = ["edited by the administrator"]
    d.get(a_dn)["dicomapplicationcluster"] = ["RADIOLOGY"]
    d.get(a_dn)["objectclass"].append("extensibleObject")
    d.get(a_dn)["l"] = ["kept"]
    # The file now: AE b gone, AE c new, a's transfer capabilities changed, the tls
    # connection gone, the port changed, a description changed in the file.
    second = device(aes=[ae(title="CT1_A", key="a", description="changed in the file",
                            tcs=(VERIFY, CT_STORE)),
                         ae(template="CT1_C{n}", key="c")],
                    connections=[NetworkConnection("dicom", port=11112)])
    again = register(d, second, known_of(reg))
    assert again.titles == ["CT1_A", "CT1_C1"] and again.released == ["CT1_B"]
    assert d.titles() == {"CT1_A", "CT1_C1"}  # b's title given back
    a = d.get(a_dn)
    assert a["dicomdescription"] == ["edited by the administrator"]  # directory-side
    assert a["dicomapplicationcluster"] == ["RADIOLOGY"] and a["l"] == ["kept"]
    assert d.get(plan.tc_dn(a_dn, CT_STORE)) is not None
    assert d.get(plan.ae_dn(dev_dn("CT1"), "CT1_B")) is None
    assert d.get(plan.connection_dn(dev_dn("CT1"), "tls")) is None
    assert d.get(plan.connection_dn(dev_dn("CT1"), "dicom"))["dicomport"] == ["11112"]
    assert d.get(plan.ae_dn(dev_dn("CT1"), "CT1_C1")) is not None


def test_aes_are_matched_by_key_never_by_position():
    d = FakeDirectory()
    reg = register(d, device(aes=[ae(template="WS{n}", key="store"),
                                  ae(template="WS{n}", key="query")]))
    assert reg.keys == {"store": "WS1", "query": "WS2"}
    swapped = device(aes=[ae(template="WS{n}", key="query"),
                          ae(template="WS{n}", key="store")])
    again = register(d, swapped, known_of(reg))
    assert again.titles == ["WS2", "WS1"] and again.released == []
    assert d.titles() == {"WS1", "WS2"}


def test_an_administrators_title_change_is_followed_and_reported():
    d = FakeDirectory()
    reg = register(d, device(aes=[ae(title="CT1_A", key="a")]))
    old = plan.ae_dn(dev_dn("CT1"), "CT1_A")
    entry = d.entries.pop(norm(old))
    new = plan.ae_dn(dev_dn("CT1"), "CT1_RENAMED")
    d.put(new, {**{k: v for k, v in entry.items() if k != "dn"},
                "dicomaetitle": ["CT1_RENAMED"]})
    for k in [k for k in d.entries if k.endswith("," + norm(old))]:
        tc = d.entries.pop(k)
        d.put(tc["dn"].replace("dicomAETitle=CT1_A", "dicomAETitle=CT1_RENAMED"),
              {a: v for a, v in tc.items() if a != "dn"})
    again = register(d, device(aes=[ae(title="CT1_A", key="a")]), known_of(reg))
    assert again.titles == ["CT1_RENAMED"] and again.title_changes == [("CT1_A",
                                                                        "CT1_RENAMED")]
    assert again.keys == {"a": "CT1_RENAMED"}
    assert d.get(old) is None  # the configured title is not put back


def test_unregister_removes_only_its_own_and_releases_its_titles():
    d = FakeDirectory()
    register(d, device(aes=[ae(template="WS{n}"), ae(title="CT1_Q", key="q")]))
    with pytest.raises(Conflict):
        run(registration.unregister(ROOT, device(), OTHER_ID, False), d.execute)
    dn, removed, titles = run(registration.unregister(ROOT, device(), ID, False), d.execute)
    assert sorted(titles) == ["CT1_Q", "WS1"] and d.titles() == set()
    assert len(removed) == 6 + 2  # device, connection, AEs, TCs; two titles
    assert d.under(dn) == []
    with pytest.raises(DirectoryError, match="no device CT1"):
        run(registration.unregister(ROOT, device(), ID, False), d.execute)


def test_read_back_gives_the_directory_side_with_inheritance():
    d = FakeDirectory()
    reg = register(d, device(aes=[ae(title="CT1_A")], station_name="CT-ROOM3"))
    d.get(reg.device_dn)["dicominstalled"] = ["FALSE"]
    d.get(plan.ae_dn(reg.device_dn, "CT1_A"))["dicompreferredcallingaetitle"] = ["PACS"]
    eff = run(registration.effective(reg.device_dn), d.execute)
    assert eff["installed"] is False and eff["aes"]["CT1_A"]["installed"] is False
    assert eff["aes"]["CT1_A"]["preferred_calling_ae_title"] == ["PACS"]
    assert eff["device"]["dicomStationName"] == ["CT-ROOM3"]


def test_the_agent_restores_only_the_installed_flag_it_wrote():
    d = FakeDirectory()
    reg = register(d, device(aes=[ae(title="CT1_A")]))
    ae_dn = plan.ae_dn(reg.device_dn, "CT1_A")
    written, before = run(registration.set_ae_installed(ae_dn, False), d.execute)
    assert written and before is None and d.get(ae_dn)["dicominstalled"] == ["FALSE"]
    # Back up: restored to what it was (absent), since it still says our FALSE.
    assert run(registration.set_ae_installed(ae_dn, None, only_if="FALSE"), d.execute) == (
        True, "FALSE")
    assert "dicominstalled" not in d.get(ae_dn)
    # Down again; meanwhile an administrator sets TRUE: the restore leaves it alone.
    run(registration.set_ae_installed(ae_dn, False), d.execute)
    d.get(ae_dn)["dicominstalled"] = ["TRUE"]
    assert run(registration.set_ae_installed(ae_dn, None, only_if="FALSE"), d.execute) == (
        False, "TRUE")
    assert d.get(ae_dn)["dicominstalled"] == ["TRUE"]
