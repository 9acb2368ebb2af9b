"""A device's own acceptor AE for the health tests: a pynetdicom Verification SCP.

Usage: echo_scp.py AET PORT   (prints {"listening": true}, then serves until ended)
"""

from __future__ import annotations

import json
import sys

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification


def main() -> None:
    title, port = sys.argv[1], int(sys.argv[2])
    ae = AE(ae_title=title)
    ae.add_supported_context(Verification)
    echoes = 0

    def on_echo(event) -> int:
        nonlocal echoes
        echoes += 1
        return 0x0000

    server = ae.start_server(("0.0.0.0", port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
    print(json.dumps({"listening": True}), flush=True)
    try:
        sys.stdin.read()  # until the test closes stdin or ends the process
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
