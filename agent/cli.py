"""`dicom-agent` command line (CONTRACTS.md "Commands").

Exit codes: 0 success, 1 the operation failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys

from agent.config import load_config
from profiles.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    device = config.device
    titles = [ae.title or f"template {ae.title_template!r}" for ae in device.aes]
    print(f"{args.file}: valid (device {device.name}, {len(device.connections)} connection(s), "
          f"AEs: {', '.join(titles)})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-agent",
        description="Boot-time network agent for DICOM devices (PS3.15 Annexes F, G, H).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a configuration file",
                           description="Validate FILE; every error on stderr as "
                                       "'key.path: reason'. Exit 0 valid, 2 invalid.")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
