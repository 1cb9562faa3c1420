"""The `phonehome` command (also `python -m harness`).

Each subcommand is one module with `add_arguments(parser)` and `run(args) -> int`; adding one is
one line in `COMMANDS`. Exit codes, one meaning everywhere: 0 clean, 1 leak, 2 unverified or a
user mistake (one line on stderr, never a traceback), 3 a bug (one line naming the file the
traceback was saved to).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from harness import __version__
from harness.adb_env import adb_port_problem
from harness.errors import PhonehomeError

# (name, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("analyze", "harness.analyzer.command", "find identifiers and activation clients in a capture file"),
    ("sample-capture", "harness.sample", "write a reproduction of the 2019 Nokia 7 Plus capture and its IDS.json"),
    ("devices", "harness.device.cli", "list attached phones: masked serial, model, state, build"),
    ("virtual", "harness.virtual.cli", "start a virtual phone from a device profile"),
    ("demo", "harness.demo", "run the gate on three virtual phones, the 2019 Nokia 7 Plus incident among them"),
    ("baseline", "harness.gate.baseline_command", "write a baseline of destinations from a gate run's findings"),
]

INTERNAL_ERROR = 3


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line and exit 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="phonehome", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"phonehome {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=module.__doc__)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def save_traceback(exc: BaseException) -> str:
    """Write the traceback owner-only under the temp directory; the path, or why it failed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"phonehome-crash-{stamp}-{os.getpid()}.txt"
    text = "".join(traceback.format_exception(exc))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"phonehome {__version__} {' '.join(sys.argv)}\n{text}")
    except OSError as err:
        return f"could not save the traceback ({err.strerror or err})"
    return f"traceback saved to {path}"


def internal_error(exc: BaseException) -> int:
    """A bug: one line (the exception type, never its text, which may hold raw capture bytes)."""
    where = save_traceback(exc)
    print(f"phonehome: internal error ({type(exc).__name__}), a bug: {where}", file=sys.stderr)
    return INTERNAL_ERROR


def check_environment() -> None:
    """Variables adb and adbutils read: a bad one is the user's one line, not adbutils' crash."""
    problem = adb_port_problem()
    if problem:
        raise PhonehomeError(problem)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        check_environment()
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args))
    except PhonehomeError as exc:
        print(f"phonehome: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("phonehome: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `phonehome analyze ... | head`: the answer was not delivered whole
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    except Exception as exc:
        return internal_error(exc)
