"""Whatever a configuration file holds, loading it gives a Config or a ConfigError."""

from __future__ import annotations

import copy
import string

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
