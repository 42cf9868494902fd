"""What every command line shares: logging, and turning failures into one line and an exit code.

A user never sees a traceback: a catalogued error prints ``error: <what>; <next step>`` and exits
with the catalog's status; anything unexpected prints one line and exits 1. Set
``FAIR4FREE_DEBUG=1`` to get the traceback when reporting a bug.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from types import FrameType

from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError

DEBUG_ENV = "FAIR4FREE_DEBUG"


def configure_logging(verbose: bool = False) -> None:
    """Progress lines on stderr, so stdout stays clean for tables and JSON."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def _terminate_as_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, set up logging and run the chosen subcommand's ``handler(args) -> int``."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    return run_cli(lambda: int(args.handler(args)))


def run_cli(main: Callable[[], int]) -> int:
    """Run a command's body and map every way it can end to an exit status."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return main()
    except Fair4FreeError as exc:
        print(f"error: {exc.public_message()}", file=sys.stderr)  # noqa: T201
        return int(exc.entry.exit_code)
    except KeyboardInterrupt:
        entry = Fair4FreeError(ErrorCode.INTERRUPTED, "interrupted")
        print(f"error: {entry.public_message()}", file=sys.stderr)  # noqa: T201
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(  # noqa: T201
            f"error: internal error ({type(exc).__name__}: {exc}); "
            f"rerun with {DEBUG_ENV}=1 and report the traceback",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)
