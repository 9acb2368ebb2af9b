"""The directory profile's state files, read without the LDAP driver (a device whose
directory is disabled still shows what it registered last): `directory.json` (server, base
DN, device DN, titles owned), `registration-intent.json` (registration.py's write-ahead
record) and `device-id`. A file of the wrong shape is set aside and the agent starts clean.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from profiles import statefile_io
from profiles.app_config.model import ae_title_problem


def directory_record(value: object) -> dict:
    """The shape of `directory.json` (server, base DN, device DN, titles owned):
    ValueError for anything else, so a wrong one is set aside and the agent starts clean."""
    if not isinstance(value, dict):
        raise ValueError("not an object")
    for key in ("server", "base_dn", "device_dn"):
        if not isinstance(value.get(key), str | None) or len(value.get(key) or "") > 1024:
            raise ValueError(f"{key} is not a string")
    titles = value.get("titles", [])
    if not isinstance(titles, list) or len(titles) > 256 or any(
            not isinstance(t, str) or ae_title_problem(t) for t in titles):
        raise ValueError("titles is not a list of AE titles")
    written = value.get("health_written", {})
    if not isinstance(written, dict) or len(written) > 256 or any(
            not isinstance(k, str) or ae_title_problem(k) or v not in (None, "TRUE", "FALSE")
            for k, v in written.items()):
        raise ValueError("health_written is not an object of AE titles to TRUE/FALSE/null")
    keys = value.get("keys", {})
    if not isinstance(keys, dict) or len(keys) > 256 or any(
            not isinstance(k, str) or len(k) > 1024 or not isinstance(t, str)
            or ae_title_problem(t) for k, t in keys.items()):
        raise ValueError("keys is not an object of AE keys to titles")
    return value


def intent_record(value: object) -> dict:
    """The shape of `registration-intent.json` (registration.py's write-ahead record)."""
    if not isinstance(value, dict) or not isinstance(value.get("added", []), list) \
            or not all(isinstance(d, str) and len(d) < 4096 for d in value.get("added", [])) \
            or not isinstance(value.get("adding"), str | None):
        raise ValueError("not an intent record")
    return value


DEVICE_ID_PURPOSE = "dicom-agent device-id"  # statefile_io.machine_specific()


def load_or_make_device_id(state_dir: Path) -> str:
    """This device's identity in the directory (plan.marker): 32 hex digits, made once
    (random) and saved. When it cannot be saved it is made from the machine ID instead,
    so every start agrees — the directory still knows the device — until it can be."""
    path = state_dir / "device-id"
    try:
        value = path.read_text().strip()
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value
    except OSError:
        pass
    return statefile_io.save_identifier(
        path, lambda seed: seed.hex() if seed else secrets.token_hex(16), DEVICE_ID_PURPOSE)


def read_directory_record(state_dir: Path) -> dict:
    return statefile_io.read_json(state_dir / "directory.json", directory_record) or {}
