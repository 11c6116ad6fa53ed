"""The ``gpsk`` command line: ``gpsk generate``, ``gpsk solve``, ``gpsk check``, ``gpsk evaluate``, ``gpsk train``, ...

Each subcommand lives beside the code it drives; a module listed in ``_SUBCOMMANDS`` exposes
``register(subparsers)`` that adds its parser and sets ``func`` (a callable taking the parsed namespace and
returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gpsk_materials.errors import GPSKError
from gpsk_materials.text_table import format_table  # noqa: F401 -- public here before it moved

#: modules that contribute subcommands, in the order ``gpsk --help`` lists them
_SUBCOMMANDS = [
    "gpsk_materials.pipelines.cli",
    "gpsk_materials.diffraction.cli",
    "gpsk_materials.checks.cli",
    "gpsk_materials.evaluation.cli",
    "gpsk_materials.training.cli",
    "gpsk_materials.models.cli",
]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``gpsk`` argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="gpsk", description="GPSK-300 crystal generation toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subcommand not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gpsk`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GPSKError as exc:
        print(f"gpsk {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
