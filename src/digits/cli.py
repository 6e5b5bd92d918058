"""Command line: `python -m digits <command> [--option value ...]`; the Makefile is a thin layer over it.

Errors a user can fix (bad data, bad config, no credentials) print one clear message and exit 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digits import paths


class UserError(Exception):
    """Base for errors whose message is the whole story for the user."""


def _cmd_download(args: argparse.Namespace) -> int:
    from digits.download import download

    result = download(competition=args.competition, dest=args.dest, source=args.source, force=args.force)
    rows = ", ".join(f"{name} {count:,} rows" for name, count in result.rows.items())
    print(f"data ready in {result.folder}: {rows}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description="Kaggle Digit Recognizer pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    download = commands.add_parser("download", help="fetch and verify the competition CSVs")
    download.add_argument("--competition", default=paths.COMPETITION)
    download.add_argument("--source", type=Path, default=None, help="a local zip or folder instead of the Kaggle API")
    download.add_argument("--dest", type=Path, default=paths.RAW_DIR)
    download.add_argument("--force", action="store_true", help="fetch again even if valid files are present")
    download.set_defaults(handler=_cmd_download)

    _add_training_commands(commands)
    return parser


def _add_training_commands(commands) -> None:
    try:
        from digits import train  # noqa: F401  (imported lazily below; here only to register commands)
    except ImportError:
        return
    train.register_commands(commands)


def user_errors() -> tuple[type[BaseException], ...]:
    from digits.data import DataError
    from digits.download import DownloadError

    errors: list[type[BaseException]] = [UserError, DataError, DownloadError]
    try:
        from digits.config import ConfigError

        errors.append(ConfigError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
