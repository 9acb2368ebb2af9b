"""The boot state machine: what the device has done of PS3.15's steps, and what is next.

Theory of operation
-------------------
Boot is a sequence of steps — start, link, address (Annex F), time (Annex G), locate and
register with the directory (H.1), announce (H.2) — but the profiles run concurrently:
registration with a fixed or saved title may finish while time is still syncing. So the
machine keeps which steps are done, and the state it reports is the first step not
done (dicom-agent(8), BOOT STATES: "the state names the first unfinished step"); once the `stopped`
step is done the state is `stopping`, whatever else is done. Conditions that let boot
go on in a lesser way — the internal clock, no directory, a registration waiting for an
administrator, a link-local address, a profile between restarts, an AE without a title —
are listed as `degraded`.

This module is the whole truth: every (state, event) pair the machine accepts is in
TRANSITIONS, as data — the steps an event completes or undoes and the conditions it
sets or clears. There is no other way to change the machine. An event with no entry for
the current state is logged and counted, never raised: a daemon outlives surprises.
`make diagram` draws the edges the table really has (diagram()), exploring every
combination of done steps reachable from the start.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BootState(enum.StrEnum):
    STARTING = "starting"
    WAITING_FOR_LINK = "waiting-for-link"
    ACQUIRING_ADDRESS = "acquiring-address"
    SYNCING_TIME = "syncing-time"
    LOCATING_DIRECTORY = "locating-directory"
    REGISTERING = "registering"
    ANNOUNCING = "announcing"
    READY = "ready"
    STOPPING = "stopping"


class Step(enum.StrEnum):
    STARTED = "started"
    LINK = "link"
    ADDRESS = "address"
    TIME = "time"
    LOCATED = "located"
    REGISTERED = "registered"
    ANNOUNCED = "announced"
    STOPPED = "stopped"


class Condition(enum.StrEnum):
    """Degraded conditions (dicom-agent(8), DEGRADED CONDITIONS)."""

    INTERNAL_CLOCK = "internal-clock"
    DIRECTORY_CACHED = "directory-cached"
    DIRECTORY_UNAVAILABLE = "directory-unavailable"
    AWAITING_MANUAL_REGISTRATION = "awaiting-manual-registration"
    AUTO_IP = "auto-ip"
    PROFILE_FAILING = "profile-failing"
    NO_TITLE = "no-title"
    CLOCK_STEP_REFUSED = "clock-step-refused"
    DIRECTORY_CONFLICT = "directory-conflict"
    NOT_INSTALLED = "not-installed"
    AE_UNREACHABLE = "ae-unreachable"
    DNSSD_UNICAST_REFUSED = "dnssd-unicast-refused"
    STATE_NOT_SAVED = "state-not-saved"
    TIME_UNAUTHENTICATED = "time-unauthenticated"
    OTHER_NETWORK_MANAGER = "other-network-manager"


class Event(enum.StrEnum):
    STARTED = "started"
    CARRIER_UP = "carrier-up"
    CARRIER_DOWN = "carrier-down"
    LEASE_BOUND = "lease-bound"
    AUTO_IP = "auto-ip"  # a link-local address: an address, degraded
    LEASE_LOST = "lease-lost"
    ADDRESS_CHANGED = "address-changed"
    TIME_SYNCED = "time-synced"
    TIME_INTERNAL = "time-internal"  # no server answered: the internal clock
    DIRECTORY_LOCATED = "directory-located"  # a server with the DICOM root: registering
    DIRECTORY_REGISTERED = "directory-registered"
    DIRECTORY_AWAITING = "directory-awaiting-manual-registration"
    DIRECTORY_UNAVAILABLE = "directory-unavailable"
    DIRECTORY_CACHED = "directory-cached"  # unavailable, lookups served from the cache
    DIRECTORY_CONFLICT = "directory-conflict"  # whose entry it is is not clear
    DIRECTORY_DISABLED = "directory-disabled"
    DIRECTORY_LOOKUP_ONLY = "directory-lookup-only"  # no device described: lookups only
    TITLES_MISSING = "titles-missing"  # an AE has no title and none can be had now
    TITLES_KNOWN = "titles-known"
    NOT_INSTALLED = "not-installed"  # the directory says an AE or the device is not installed
    ALL_INSTALLED = "all-installed"
    AE_DOWN = "ae-down"  # a health-checked AE did not answer its C-ECHO
    AES_UP = "aes-up"  # every health-checked AE answers (or none is checked)
    UNICAST_REFUSED = "unicast-refused"  # the site DNS refused our DNS-SD update
    UNICAST_REGISTERED = "unicast-registered"
    ANNOUNCED = "announced"
    WITHDRAWN = "withdrawn"  # advertisements taken back (lease lost, conflict)
    PROFILE_FAILING = "profile-failing"  # a supervised task died and waits to restart
    PROFILES_HEALTHY = "profiles-healthy"  # no task is between restarts
    CLOCK_STEP_REFUSED = "clock-step-refused"  # the step policy refused a correction
    CLOCK_STEP_SETTLED = "clock-step-settled"  # a later round needed no refusal
    STATE_NOT_SAVED = "state-not-saved"  # the state directory refused a file
    STATE_SAVED = "state-saved"  # every state file is written
    TIME_UNAUTHENTICATED = "time-unauthenticated"  # NTS configured, no server passed
    TIME_AUTHENTICATED = "time-authenticated"  # NTS works with a server (or is not asked)
    OTHER_NETWORK_MANAGER = "other-network-manager"  # another one holds the interface
    OTHER_NETWORK_MANAGER_GONE = "other-network-manager-gone"
    STOP = "stop"


# The steps in boot order and the state that names each while it is not done.
STEPS = ((Step.STARTED, BootState.STARTING), (Step.LINK, BootState.WAITING_FOR_LINK),
         (Step.ADDRESS, BootState.ACQUIRING_ADDRESS), (Step.TIME, BootState.SYNCING_TIME),
         (Step.LOCATED, BootState.LOCATING_DIRECTORY),
         (Step.REGISTERED, BootState.REGISTERING), (Step.ANNOUNCED, BootState.ANNOUNCING))
# Steps whose being done names the state before any unfinished one.
FINAL = ((Step.STOPPED, BootState.STOPPING),)


@dataclass(frozen=True)
class Effect:
    """What one (state, event) entry does: steps done or undone, conditions set or cleared."""

    done: frozenset[Step] = frozenset()
    undone: frozenset[Step] = frozenset()
    degrade: frozenset[Condition] = frozenset()
    recover: frozenset[Condition] = frozenset()


def _e(done=(), undone=(), degrade=(), recover=()) -> Effect:
    return Effect(frozenset(done), frozenset(undone), frozenset(degrade), frozenset(recover))


S, C = Step, Condition
_ANY = frozenset(BootState) - {BootState.STOPPING}
_RUNNING = _ANY - {BootState.STARTING}
_ADDRESSED = frozenset({BootState.SYNCING_TIME, BootState.LOCATING_DIRECTORY,
                        BootState.REGISTERING, BootState.ANNOUNCING, BootState.READY})
_DIRECTORY = (C.DIRECTORY_CACHED, C.DIRECTORY_UNAVAILABLE, C.AWAITING_MANUAL_REGISTRATION,
              C.DIRECTORY_CONFLICT)

# event -> (states it is accepted in, its effect)
TRANSITIONS: dict[Event, tuple[frozenset[BootState], Effect]] = {
    Event.STARTED: (frozenset({BootState.STARTING}), _e(done=[S.STARTED])),
    Event.CARRIER_UP: (_RUNNING, _e(done=[S.LINK])),
    Event.CARRIER_DOWN: (_RUNNING, _e(undone=[S.LINK])),
    # A lease, or a link-local address, is an address; the link must be up to get one.
    Event.LEASE_BOUND: (_RUNNING, _e(done=[S.LINK, S.ADDRESS], recover=[C.AUTO_IP])),
    Event.AUTO_IP: (_RUNNING, _e(done=[S.LINK, S.ADDRESS], degrade=[C.AUTO_IP])),
    # Lease lost (also while the link is down): advertisements are withdrawn and the
    # address is to be found again.
    Event.LEASE_LOST: (_RUNNING, _e(undone=[S.ADDRESS, S.ANNOUNCED])),
    Event.ADDRESS_CHANGED: (_RUNNING, _e(undone=[S.ANNOUNCED])),  # re-announce
    Event.TIME_SYNCED: (_RUNNING, _e(done=[S.TIME], recover=[C.INTERNAL_CLOCK])),
    Event.TIME_INTERNAL: (_RUNNING, _e(done=[S.TIME], degrade=[C.INTERNAL_CLOCK])),
    Event.DIRECTORY_LOCATED: (_RUNNING, _e(done=[S.LOCATED], undone=[S.REGISTERED],
                                           recover=_DIRECTORY)),
    Event.DIRECTORY_REGISTERED: (_RUNNING, _e(done=[S.LOCATED, S.REGISTERED],
                                              recover=_DIRECTORY)),
    Event.DIRECTORY_AWAITING: (_RUNNING, _e(
        done=[S.LOCATED, S.REGISTERED], degrade=[C.AWAITING_MANUAL_REGISTRATION],
        recover=[C.DIRECTORY_CACHED, C.DIRECTORY_UNAVAILABLE, C.DIRECTORY_CONFLICT])),
    Event.DIRECTORY_CONFLICT: (_RUNNING, _e(
        done=[S.LOCATED, S.REGISTERED], degrade=[C.DIRECTORY_CONFLICT],
        recover=[C.DIRECTORY_CACHED, C.DIRECTORY_UNAVAILABLE,
                 C.AWAITING_MANUAL_REGISTRATION])),
    # Unreachable: a conflict seen before stays until the directory says otherwise.
    Event.DIRECTORY_UNAVAILABLE: (_RUNNING, _e(
        done=[S.LOCATED, S.REGISTERED], degrade=[C.DIRECTORY_UNAVAILABLE],
        recover=[C.AWAITING_MANUAL_REGISTRATION, C.DIRECTORY_CACHED])),
    Event.DIRECTORY_CACHED: (_RUNNING, _e(
        done=[S.LOCATED, S.REGISTERED],
        degrade=[C.DIRECTORY_UNAVAILABLE, C.DIRECTORY_CACHED],
        recover=[C.AWAITING_MANUAL_REGISTRATION])),
    Event.DIRECTORY_DISABLED: (_RUNNING, _e(done=[S.LOCATED, S.REGISTERED],
                                            recover=_DIRECTORY)),
    Event.DIRECTORY_LOOKUP_ONLY: (_RUNNING, _e(done=[S.LOCATED, S.REGISTERED],
                                               recover=_DIRECTORY)),
    Event.TITLES_MISSING: (_ANY, _e(degrade=[C.NO_TITLE])),
    Event.TITLES_KNOWN: (_ANY, _e(recover=[C.NO_TITLE])),
    Event.NOT_INSTALLED: (_ANY, _e(degrade=[C.NOT_INSTALLED])),
    Event.ALL_INSTALLED: (_ANY, _e(recover=[C.NOT_INSTALLED])),
    Event.AE_DOWN: (_ANY, _e(degrade=[C.AE_UNREACHABLE])),
    Event.AES_UP: (_ANY, _e(recover=[C.AE_UNREACHABLE])),
    Event.UNICAST_REFUSED: (_ANY, _e(degrade=[C.DNSSD_UNICAST_REFUSED])),
    Event.UNICAST_REGISTERED: (_ANY, _e(recover=[C.DNSSD_UNICAST_REFUSED])),
    Event.ANNOUNCED: (_ADDRESSED, _e(done=[S.ANNOUNCED])),
    Event.WITHDRAWN: (_ANY, _e(undone=[S.ANNOUNCED])),
    Event.PROFILE_FAILING: (_ANY, _e(degrade=[C.PROFILE_FAILING])),
    Event.PROFILES_HEALTHY: (_ANY, _e(recover=[C.PROFILE_FAILING])),
    Event.CLOCK_STEP_REFUSED: (_ANY, _e(degrade=[C.CLOCK_STEP_REFUSED])),
    Event.CLOCK_STEP_SETTLED: (_ANY, _e(recover=[C.CLOCK_STEP_REFUSED])),
    Event.STATE_NOT_SAVED: (_ANY, _e(degrade=[C.STATE_NOT_SAVED])),
    Event.STATE_SAVED: (_ANY, _e(recover=[C.STATE_NOT_SAVED])),
    Event.TIME_UNAUTHENTICATED: (_ANY, _e(degrade=[C.TIME_UNAUTHENTICATED])),
    Event.TIME_AUTHENTICATED: (_ANY, _e(recover=[C.TIME_UNAUTHENTICATED])),
    Event.OTHER_NETWORK_MANAGER: (_ANY, _e(degrade=[C.OTHER_NETWORK_MANAGER])),
    Event.OTHER_NETWORK_MANAGER_GONE: (_ANY, _e(recover=[C.OTHER_NETWORK_MANAGER])),
    Event.STOP: (_ANY, _e(done=[S.STOPPED])),
}


def state_of(done: frozenset[Step] | set[Step]) -> BootState:
    for step, state in FINAL:
        if step in done:
            return state
    return next((state for step, state in STEPS if step not in done), BootState.READY)


class BootMachine:
    """Sans-IO: feed events, read `state` and `degraded`; `changed` says whether the
    last event changed what a status snapshot shows."""

    def __init__(self) -> None:
        self.done: set[Step] = set()
        self.degraded: set[Condition] = set()
        self.state = state_of(self.done)
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
        new = state_of(self.done)
        if new is not self.state:
            log.info("%s -> %s (%s)", self.state.value, new.value, event.value)
        self.state = new
        self.changed = (self.state, frozenset(self.degraded)) != before
        return self.state


def reachable(events: frozenset[Event] | set[Event] = frozenset(Event)
              ) -> tuple[set[BootState], set[tuple[BootState, Event, BootState]]]:
    """Every state reachable from a new machine through any sequence of `events`, and
    every edge (state, event, other state) taken on the way. Effects never depend on the
    degraded conditions, so exploring the sets of done steps is exhaustive."""
    start = frozenset(BootMachine().done)
    seen, todo = {start}, [start]
    states, edges = {state_of(start)}, set()
    while todo:
        done = todo.pop()
        here = state_of(done)
        for event, (accepted, effect) in TRANSITIONS.items():
            if here not in accepted or event not in events:
                continue
            after = (done | effect.done) - effect.undone
            there = state_of(after)
            states.add(there)
            if there is not here:
                edges.add((here, event, there))
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return states, edges


def diagram() -> str:
    """A Graphviz digraph of the edges the table really has (see reachable())."""
    _, edges = reachable()
    order = list(BootState)
    lines = ["digraph boot {", "  rankdir=LR; node [shape=box, style=rounded];"]
    for here, event, there in sorted(edges, key=lambda e: (order.index(e[0]),
                                                          order.index(e[2]), e[1].value)):
        lines.append(f'  "{here.value}" -> "{there.value}" [label="{event.value}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(diagram(), end="")
