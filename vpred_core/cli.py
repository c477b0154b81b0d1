"""Command-line interface: ``python -m vpred_core {demo,inspect,write-yaml}``.

Each sub-command lives in its own module exposing ``register(subparsers)``; the parser stores the handler
in ``args.handler`` which returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging

COMMAND_MODULES = ("commands_demo", "commands_files")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="python -m vpred_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f".{name}", __package__)
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return int(args.handler(args) or 0)
