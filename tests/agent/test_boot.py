"""The boot state machine: order, concurrency of steps, degraded conditions, surprises;
the table is the whole truth (every event the daemon emits has an entry, every contract
state is reachable, the committed diagram is the generated one)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.daemon.boot import (
    TRANSITIONS,
    BootMachine,
    BootState,
    Condition,
    Event,
    diagram,
    reachable,
)

REPO = Path(__file__).resolve().parents[2]


def run(*events: Event) -> BootMachine:
    m = BootMachine()
    for event in events:
        m.handle(event)
    return m


def test_a_normal_boot_walks_the_steps_in_order():
    m = BootMachine()
    seen = [m.handle(e).value for e in (
        Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.TIME_SYNCED,
        Event.DIRECTORY_LOCATED, Event.DIRECTORY_REGISTERED, Event.ANNOUNCED)]
    assert seen == ["waiting-for-link", "acquiring-address", "syncing-time",
                    "locating-directory", "registering", "announcing", "ready"]
    assert m.degraded == set()


def test_later_steps_may_finish_first_the_state_names_the_first_unfinished():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.DIRECTORY_REGISTERED,
            Event.ANNOUNCED)
    assert m.state is BootState.SYNCING_TIME  # time is the first step not done
    m.handle(Event.TIME_SYNCED)
    assert m.state is BootState.READY


def test_degraded_conditions_let_boot_finish():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.AUTO_IP, Event.TIME_INTERNAL,
            Event.DIRECTORY_UNAVAILABLE, Event.ANNOUNCED)
    assert m.state is BootState.READY
    assert m.degraded == {"auto-ip", "internal-clock", "directory-unavailable"}
    m.handle(Event.LEASE_BOUND)
    m.handle(Event.DIRECTORY_REGISTERED)
    m.handle(Event.TIME_SYNCED)
    assert m.degraded == set()


def test_lease_lost_withdraws_and_goes_back_to_acquiring_address():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.TIME_SYNCED,
            Event.DIRECTORY_REGISTERED, Event.ANNOUNCED)
    m.handle(Event.LEASE_LOST)
    assert m.state is BootState.ACQUIRING_ADDRESS and "announced" not in m.done
    m.handle(Event.LEASE_BOUND)
    assert m.state is BootState.ANNOUNCING  # time and directory stay done
    m.handle(Event.ADDRESS_CHANGED)
    assert m.state is BootState.ANNOUNCING


def test_an_event_without_an_entry_is_counted_not_raised():
    m = BootMachine()
    m.handle(Event.TIME_SYNCED)  # before the start
    m.handle(Event.STARTED)
    m.handle(Event.ANNOUNCED)  # no address yet: nothing to announce
    assert m.state is BootState.WAITING_FOR_LINK and not m.changed
    assert m.ignored == {"time-synced@starting": 1, "announced@waiting-for-link": 1}


def test_a_lease_lost_while_the_link_is_down_still_undoes_the_address():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.TIME_SYNCED,
            Event.DIRECTORY_REGISTERED, Event.ANNOUNCED, Event.CARRIER_DOWN)
    assert m.state is BootState.WAITING_FOR_LINK
    m.handle(Event.LEASE_LOST)
    m.handle(Event.CARRIER_UP)
    assert m.state is BootState.ACQUIRING_ADDRESS


def test_stop_ends_in_stopping_and_nothing_moves_it():
    m = run(Event.STARTED, Event.STOP)
    assert m.state is BootState.STOPPING
    m.handle(Event.LEASE_BOUND)
    assert m.state is BootState.STOPPING and m.ignored["lease-bound@stopping"] == 1


def test_changed_reports_visible_changes_only():
    m = run(Event.STARTED, Event.CARRIER_UP)
    m.handle(Event.CARRIER_UP)
    assert not m.changed
    m.handle(Event.TIME_INTERNAL)  # a degraded condition appears: visible
    assert m.changed and m.state is BootState.ACQUIRING_ADDRESS


def test_the_diagram_is_generated_from_the_table():
    text = diagram()
    assert text.startswith("digraph boot {")
    assert '"acquiring-address" -> "syncing-time" [label="lease-bound"];' in text
    assert '"ready" -> "acquiring-address" [label="lease-lost"];' in text
    assert '"ready" -> "stopping" [label="stop"];' in text
    # A carrier that comes back with the lease still held leads straight to ready; a
    # lost lease withdrew the advertisements, so a new one never does.
    assert '"waiting-for-link" -> "ready" [label="carrier-up"];' in text
    assert '"acquiring-address" -> "ready"' not in text
    assert '"starting" -> "ready"' not in text


def test_the_committed_diagram_is_the_generated_one():
    assert (REPO / "boot-states.dot").read_text() == diagram(), "run `make diagram`"


def test_every_contract_state_is_reachable_from_events_the_daemon_emits():
    daemon = "".join(p.read_text() for p in sorted((REPO / "agent").glob("*/*.py"))
                     if p.parent.name in ("daemon", "adapters") and p.name != "boot.py")
    emitted = {Event[name] for name in re.findall(r"Event\.([A-Z_]+)", daemon)}
    assert emitted <= set(TRANSITIONS)  # every event the daemon emits has an entry
    assert set(Event) - emitted == set(), "an event in the table the daemon never emits"
    contracts = Path("/work/shared/CONTRACTS.md")
    states, _ = reachable(emitted)
    assert states == set(BootState)
    if contracts.exists():  # the names the contract lists are the enum's
        text = contracts.read_text()
        listed = re.search(r"Boot states: (.*?)\. The state", text, re.S).group(1)
        assert set(re.findall(r"`([a-z-]+)`", listed)) == {s.value for s in BootState}


def test_registering_is_reachable_through_the_directory_reports():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.TIME_SYNCED)
    assert m.state is BootState.LOCATING_DIRECTORY
    assert m.handle(Event.DIRECTORY_LOCATED) is BootState.REGISTERING
    assert m.handle(Event.DIRECTORY_REGISTERED) is BootState.ANNOUNCING


def test_a_failing_profile_and_a_missing_title_are_conditions_and_changes():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.TIME_SYNCED,
            Event.DIRECTORY_UNAVAILABLE)
    m.handle(Event.TITLES_MISSING)
    assert m.changed and Condition.NO_TITLE in m.degraded
    m.handle(Event.ANNOUNCED)
    assert m.state is BootState.READY
    m.handle(Event.PROFILE_FAILING)
    assert m.changed and m.degraded == {"no-title", "directory-unavailable", "profile-failing"}
    m.handle(Event.PROFILES_HEALTHY)
    m.handle(Event.DIRECTORY_REGISTERED)
    m.handle(Event.TITLES_KNOWN)
    assert m.degraded == set() and m.state is BootState.READY


def test_directory_cached_is_set_and_cleared_by_the_table():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.DIRECTORY_CACHED)
    assert m.degraded == {"directory-cached", "directory-unavailable"}
    m.handle(Event.DIRECTORY_REGISTERED)
    assert m.degraded == set()


def test_directory_conditions_replace_each_other():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.DIRECTORY_UNAVAILABLE)
    m.handle(Event.DIRECTORY_AWAITING)
    assert m.degraded == {"awaiting-manual-registration"}
    m.handle(Event.DIRECTORY_UNAVAILABLE)
    assert m.degraded == {"directory-unavailable"}
