"""The boot state machine: what the device has done of PS3.15's steps, and what is next.

Theory of operation
-------------------
Boot is a sequence of steps — link, address (Annex F), time (Annex G), locate and
register with the directory (H.1), announce (H.2) — but the profiles run concurrently:
registration with a fixed or saved title may finish while time is still syncing. So the
machine keeps which steps are done, and the state it reports is the first step not
done (CONTRACTS.md: "the state names the first unfinished step"). Conditions that let
boot go on in a lesser way — the internal clock, no directory, a registration waiting
for an administrator, a link-local address — are listed as `degraded`.

Every (state, event) pair the machine accepts is in TRANSITIONS, as data: the steps an
event completes or undoes and the degraded conditions it sets or clears. An event with
no entry for the current state is logged and counted, never raised: a daemon outlives
surprises. `make diagram` draws the states from this table (diagram()).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BootState(enum.Enum):
    STARTING = "starting"
    WAITING_FOR_LINK = "waiting-for-link"
    ACQUIRING_ADDRESS = "acquiring-address"
    SYNCING_TIME = "syncing-time"
    LOCATING_DIRECTORY = "locating-directory"
    REGISTERING = "registering"
    ANNOUNCING = "announcing"
    READY = "ready"
    STOPPING = "stopping"


class Event(enum.Enum):
    STARTED = "started"
    CARRIER_UP = "carrier-up"
    CARRIER_DOWN = "carrier-down"
    LEASE_BOUND = "lease-bound"
    AUTO_IP = "auto-ip"  # a link-local address: an address, degraded
    LEASE_LOST = "lease-lost"
    ADDRESS_CHANGED = "address-changed"
    TIME_SYNCED = "time-synced"
    TIME_INTERNAL = "time-internal"  # no server answered: the internal clock
    DIRECTORY_LOCATED = "directory-located"
    DIRECTORY_REGISTERED = "directory-registered"
    DIRECTORY_AWAITING = "directory-awaiting-manual-registration"
    DIRECTORY_UNAVAILABLE = "directory-unavailable"
    DIRECTORY_DISABLED = "directory-disabled"
    ANNOUNCED = "announced"
    WITHDRAWN = "withdrawn"  # advertisements taken back (lease lost, stop)
    STOP = "stop"


# The steps in boot order and the state that names each while it is not done.
STEPS = (("link", BootState.WAITING_FOR_LINK), ("address", BootState.ACQUIRING_ADDRESS),
         ("time", BootState.SYNCING_TIME), ("located", BootState.LOCATING_DIRECTORY),
         ("registered", BootState.REGISTERING), ("announced", BootState.ANNOUNCING))
DEGRADED = ("internal-clock", "directory-cached", "directory-unavailable",
            "awaiting-manual-registration", "auto-ip")


@dataclass(frozen=True)
class Effect:
    done: frozenset[str] = frozenset()
    undone: frozenset[str] = frozenset()
    degrade: frozenset[str] = frozenset()
    recover: frozenset[str] = frozenset()


def _e(done: str = "", undone: str = "", degrade: str = "", recover: str = "") -> Effect:
    return Effect(frozenset(done.split()), frozenset(undone.split()),
                  frozenset(degrade.split()), frozenset(recover.split()))


_ANY = frozenset(BootState) - {BootState.STOPPING}
_RUNNING = _ANY - {BootState.STARTING}
_ADDRESSED = frozenset({BootState.SYNCING_TIME, BootState.LOCATING_DIRECTORY,
                        BootState.REGISTERING, BootState.ANNOUNCING, BootState.READY})
_DIRECTORY = "directory-cached directory-unavailable awaiting-manual-registration"

# event -> (states it is accepted in, its effect)
TRANSITIONS: dict[Event, tuple[frozenset[BootState], Effect]] = {
    Event.STARTED: (frozenset({BootState.STARTING}), _e()),
    Event.CARRIER_UP: (_RUNNING | {BootState.STARTING}, _e(done="link")),
    Event.CARRIER_DOWN: (_RUNNING | {BootState.STARTING}, _e(undone="link")),
    # A lease, or a link-local address, is an address; the link must be up to get one.
    Event.LEASE_BOUND: (_RUNNING, _e(done="link address", recover="auto-ip")),
    Event.AUTO_IP: (_RUNNING, _e(done="link address", degrade="auto-ip")),
    # Lease lost: advertisements are withdrawn and the address is to be found again.
    Event.LEASE_LOST: (_ADDRESSED, _e(undone="address announced")),
    Event.ADDRESS_CHANGED: (_ADDRESSED, _e(undone="announced")),  # re-announce
    Event.TIME_SYNCED: (_RUNNING, _e(done="time", recover="internal-clock")),
    Event.TIME_INTERNAL: (_RUNNING, _e(done="time", degrade="internal-clock")),
    Event.DIRECTORY_LOCATED: (_RUNNING, _e(done="located", recover=_DIRECTORY)),
    Event.DIRECTORY_REGISTERED: (_RUNNING, _e(done="located registered", recover=_DIRECTORY)),
    Event.DIRECTORY_AWAITING: (_RUNNING, _e(done="located registered",
                                            degrade="awaiting-manual-registration",
                                            recover="directory-cached directory-unavailable")),
    Event.DIRECTORY_UNAVAILABLE: (_RUNNING, _e(done="located registered",
                                               degrade="directory-unavailable",
                                               recover="awaiting-manual-registration")),
    Event.DIRECTORY_DISABLED: (_RUNNING, _e(done="located registered", recover=_DIRECTORY)),
    Event.ANNOUNCED: (_ADDRESSED, _e(done="announced")),
    Event.WITHDRAWN: (_ANY, _e(undone="announced")),
    Event.STOP: (_ANY, _e()),
}


class BootMachine:
    """Sans-IO: feed events, read `state` and `degraded`; `changed` says whether the
    last event changed what a status snapshot shows."""

    def __init__(self) -> None:
        self.state = BootState.STARTING
        self.done: set[str] = set()
        self.degraded: set[str] = set()
        self.ignored: Counter[str] = Counter()
        self.changed = False

    def handle(self, event: Event) -> BootState:
        before = (self.state, frozenset(self.degraded))
        accepted, effect = TRANSITIONS[event]
        if self.state not in accepted:
            self.ignored[f"{event.value}@{self.state.value}"] += 1
            log.info("no transition for %s in %s: ignored", event.value, self.state.value)
            self.changed = False
            return self.state
        self.done |= effect.done
        self.done -= effect.undone
        self.degraded |= effect.degrade
        self.degraded -= effect.recover
        if event is Event.STOP:
            new = BootState.STOPPING
        else:
            new = next((state for step, state in STEPS if step not in self.done),
                       BootState.READY)
        if new is not self.state:
            log.info("%s -> %s (%s)", self.state.value, new.value, event.value)
        self.state = new
        self.changed = (self.state, frozenset(self.degraded)) != before
        return self.state

    def set_degraded(self, condition: str, present: bool) -> None:
        """For conditions the profiles report outside the table (directory-cached)."""
        (self.degraded.add if present else self.degraded.discard)(condition)


def diagram() -> str:
    """A Graphviz digraph of the states, computed from TRANSITIONS: from each state (its
    earlier steps done, later ones not), the state each accepted event leads to."""
    lines = ["digraph boot {", "  rankdir=LR; node [shape=box, style=rounded];"]
    order = [s for _, s in STEPS]
    for state in BootState:
        for event, (accepted, _) in TRANSITIONS.items():
            if state not in accepted:
                continue
            machine = BootMachine()
            machine.state = state
            if state in order:
                machine.done = {step for step, _ in STEPS[:order.index(state)]}
            elif state is BootState.READY:
                machine.done = {step for step, _ in STEPS}
            target = machine.handle(event)
            if target is not state:
                lines.append(f'  "{state.value}" -> "{target.value}" [label="{event.value}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(diagram(), end="")
