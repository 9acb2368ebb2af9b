"""The `[device]` part of a test device's configuration, in one place for the tests and
the lab's scenarios (partition.py): a device with one connection and one AE offering or
using Verification (or CT Image Storage as an SCU)."""

from __future__ import annotations

VERIFICATION, CT_IMAGE = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"


def device_toml(name: str, title: str | None = None, *, port: int | None = 11112,
                role: str = "SCP", sop_class: str = VERIFICATION, device_extra: str = "",
                connection_extra: str = "", ae_extra: str = "") -> str:
    """`title` with `{n}` is a title template; None: NAME_SCP (or NAME_SCU for an SCU)."""
    title = title or f"{name}_{role}"
    title_line = f'title_template = "{title}"' if "{" in title else f'title = "{title}"'
    port_line = f"port = {port}\n" if port is not None else ""
    return f"""[device]
name = "{name}"
{device_extra}

[[device.connection]]
name = "dicom"
{port_line}{connection_extra}

[[device.ae]]
{title_line}
connections = ["dicom"]
{ae_extra}

[[device.ae.transfer_capability]]
sop_class = "{sop_class}"
role = "{role}"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""
