"""Whatever a configuration file holds, loading it gives a Config or a ConfigError."""

from __future__ import annotations

import copy
import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from profiles.app_config.schema_text import parse_schema
from profiles.errors import ConfigError, ParseError

BASE = {
    "network": {"interface": "eth0"},
    "device": {"name": "CT01", "connection": [{"name": "dicom", "port": 104}],
               "ae": [{"title": "CT01", "connections": ["dicom"], "transfer_capability": [
                   {"sop_class": "1.2.3", "role": "SCP", "transfer_syntaxes": ["1.2"]}]}]},
}
KEYS = ["interface", "hostname", "client_id", "initial_delay", "mode", "servers", "security",
        "bind_dn", "password_file", "title", "title_template", "port", "role", "sop_class",
        "transfer_syntaxes", "connections", "connection", "ae", "transfer_capability",
        "vendor_data", "installed", "name", "utc_offset", "state_dir", "x"]
toml_scalars = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=True),
                         st.text(max_size=30), st.sampled_from(["{n}", "WS{n:02d}", "a\\b"]))
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(["agent", "network", "time", "directory", "device", "ae", "tc"]),
       key=st.sampled_from(KEYS), value=toml_values)
def test_any_value_anywhere_gives_config_or_config_error(section, key, value):
    data = copy.deepcopy(BASE)
    target = {"ae": data["device"]["ae"][0],
              "tc": data["device"]["ae"][0]["transfer_capability"][0]}.get(section)
    if target is None:
        target = data.setdefault(section, {})
    target[key] = value
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.errors and all(path and reason for path, reason in exc.errors)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=200)
       | st.sampled_from(["attributetype (", "objectclass ( 1.2 MUST ( a $", "attributetype"]))
def test_schema_parser_returns_or_raises_parse_error(text):
    try:
        definitions = parse_schema(text)
    except ParseError as exc:
        assert str(exc)
    else:
        assert all(d.kind in ("attributetype", "objectclass") for d in definitions)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120))
def test_option_decoders_return_or_raise_parse_error(data):
    from profiles.network_address import options as o

    for decode in (o.domain_search, o.classless_routes, o.static_routes, o.client_fqdn,
                   o.tz_name, o.tz_posix, lambda v: o.hostname(v, 12),
                   lambda v: o.addresses(v, 6)):
        try:
            decode(data)
        except ParseError as exc:
            assert str(exc)


EXAMPLE = (Path(__file__).resolve().parents[2] / "agent" / "examples" / "archive.toml"
           ).read_bytes()


def mutated(data: bytes, draw) -> bytes:
    """The example with a few edits: bytes flipped, inserted (TOML's own punctuation,
    huge numbers, deep nesting, a BOM), deleted or cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(out)))
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[at:at] = draw(st.sampled_from([
                b"[", b"]", b"=", b'"', b"\n", b"[[device.ae]]\n", b"x = 1\n", b"\xef\xbb\xbf",
                b"9" * 400, b"1e999", b"-0", b"[" * 300, b"{a = {b = {c = 1}}}", b"\x00",
                b"\xff\xfe", b"inf", b"nan", b"1979-05-27T07:32:00Z", b"'''", b'"""']))
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 40))]
        else:
            del out[at:]
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_bytes_as_a_configuration_file_give_config_or_config_error(tmp_path_factory, data):
    """What check-config and the daemon read (agent.config.load_config, drop-ins and
    all): a Config, or a ConfigError whose every line names the file — never anything
    else, whatever the bytes."""
    from agent.config import load_config

    path = tmp_path_factory.mktemp("fuzz") / "agent.toml"
    raw = mutated(EXAMPLE, data.draw) if data.draw(st.booleans()) else \
        data.draw(st.binary(max_size=200))
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.errors and all(line.startswith(str(path)) for line in exc.lines())


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_check_config_exits_0_or_2_on_any_bytes_and_never_prints_a_traceback(
        tmp_path_factory, data):
    """The same through the command an operator runs: exit 0 or 2, one line per error
    naming the file, never a traceback."""
    import os
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("cli") / "agent.toml"
    path.write_bytes(mutated(EXAMPLE, data.draw) if data.draw(st.booleans())
                     else data.draw(st.binary(max_size=200)))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)],
                          capture_output=True, text=True, cwd=repo,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        assert all(line.startswith(str(path)) for line in proc.stderr.splitlines())
