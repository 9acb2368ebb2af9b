"""The boot state machine: order, concurrency of steps, degraded conditions, surprises."""

from __future__ import annotations

from agent.boot import BootMachine, BootState, Event, diagram


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
    m = run(Event.STARTED)
    m.handle(Event.ANNOUNCED)  # no address yet: nothing to announce
    m.handle(Event.LEASE_LOST)
    assert m.state is BootState.WAITING_FOR_LINK and not m.changed
    assert m.ignored == {"announced@waiting-for-link": 1, "lease-lost@waiting-for-link": 1}


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
    assert '"waiting-for-link" -> "ready"' not in text


def test_directory_conditions_replace_each_other():
    m = run(Event.STARTED, Event.CARRIER_UP, Event.LEASE_BOUND, Event.DIRECTORY_UNAVAILABLE)
    m.handle(Event.DIRECTORY_AWAITING)
    assert m.degraded == {"awaiting-manual-registration"}
    m.handle(Event.DIRECTORY_UNAVAILABLE)
    assert m.degraded == {"directory-unavailable"}
