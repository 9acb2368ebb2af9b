"""An in-memory LDAP directory for the registration core's unit tests: it executes the
core's operations as a server would (68 for an existing entry, 32 for a missing one or
parent, 66 for a non-leaf delete) and can refuse, race, drop the connection and hold
other devices' entries."""

from __future__ import annotations

import copy
from collections.abc import Callable

from profiles.app_config import plan
from profiles.app_config.registration import (
    BASE,
    ONE,
    Add,
    ConnectionLost,
    Delete,
    Modify,
    Op,
    Persist,
    Search,
)

ROOT = "cn=DICOM Configuration,dc=hospital,dc=test"
CASE_EXACT = {"dicomaetitle"}  # H.1.3: caseExactMatch; the others ignore case here


def norm(dn: str) -> str:
    return ",".join(part.strip() for part in dn.lower().split(","))


class FakeDirectory:
    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self.intent: dict | None = None
        self.log: list[Op] = []
        self.lost = False  # the connection dropped: every operation fails
        # (operation, its index in this connection's log) -> None to go on, an int result
        # code to answer instead, or an exception to raise
        self.fault: Callable[[Op, int], object] | None = None
        self.before: Callable[[Op], None] | None = None  # a race: act just before `op`
        for dn, oc in ((ROOT, "dicomConfigurationRoot"),
                       (plan.devices_dn(ROOT), "dicomDevicesRoot"),
                       (plan.registry_dn(ROOT), "dicomUniqueAETitlesRegistryRoot")):
            self.put(dn, {"objectClass": [oc]})

    # -- content -----------------------------------------------------------------------

    def put(self, dn: str, attributes: dict) -> None:
        self.entries[norm(dn)] = {"dn": dn, **{k.lower(): list(v) for k, v in
                                               attributes.items()}}

    def load(self, entries: list[plan.Entry]) -> None:
        for e in entries:
            self.put(e.dn, e.attributes)

    def get(self, dn: str) -> dict | None:
        return self.entries.get(norm(dn))

    def under(self, dn: str) -> list[str]:
        tail = norm(dn)
        return sorted(e["dn"] for k, e in self.entries.items()
                      if k == tail or k.endswith("," + tail))

    def titles(self) -> set[str]:
        return {e["dicomaetitle"][0] for e in self.entries.values()
                if "dicomuniqueaetitle" in [c.lower() for c in e["objectclass"]]}

    # -- the server --------------------------------------------------------------------

    def execute(self, op: Op):
        self.log.append(op)
        if self.before is not None:
            self.before(op)
        if self.fault is not None:
            outcome = self.fault(op, len(self.log) - 1)
            if isinstance(outcome, BaseException):
                if isinstance(outcome, ConnectionLost):
                    self.lost = True
                raise outcome
            if isinstance(outcome, int):
                return outcome
        if self.lost and not isinstance(op, Persist):
            raise ConnectionLost("connection lost")
        match op:
            case Search():
                return self._search(op)
            case Add():
                key = norm(op.entry.dn)
                if key in self.entries:
                    return 68
                if norm(plan.split_rdn(op.entry.dn)[1]) not in self.entries:
                    return 32
                self.put(op.entry.dn, op.entry.attributes)
                return 0
            case Modify():
                entry = self.entries.get(norm(op.dn))
                if entry is None:
                    return 32
                for kind, attribute, values in op.changes:
                    name = attribute.lower()
                    if kind == "replace":
                        entry[name] = list(values)
                    elif kind == "delete":
                        entry.pop(name, None)
                    else:
                        entry.setdefault(name, []).extend(values)
                return 0
            case Delete():
                key = norm(op.dn)
                if key not in self.entries:
                    return 32
                if any(k.endswith("," + key) for k in self.entries):
                    return 66  # notAllowedOnNonLeaf
                del self.entries[key]
                return 0
            case Persist():
                self.intent = copy.deepcopy(op.intent)
                return None
        raise TypeError(op)

    def _search(self, op: Search) -> list[dict]:
        base = norm(op.base)
        if base not in self.entries:
            return []
        found = []
        for key, entry in self.entries.items():
            if op.scope == BASE:
                inside = key == base
            elif op.scope == ONE:
                inside = norm(plan.split_rdn(entry["dn"])[1]) == base
            else:
                inside = key == base or key.endswith("," + base)
            if not inside:
                continue
            if op.object_class != "*" and op.object_class.lower() not in [
                    c.lower() for c in entry["objectclass"]]:
                continue
            if all(self._has(entry, a, v) for a, v in op.equals):
                found.append(copy.deepcopy(entry))
        return found

    @staticmethod
    def _has(entry: dict, attribute: str, value: str) -> bool:
        values = [v.decode() if isinstance(v, bytes) else str(v)
                  for v in entry.get(attribute.lower(), [])]
        if attribute.lower() in CASE_EXACT:
            return value in values
        return value.lower() in [v.lower() for v in values]
