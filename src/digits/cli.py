"""Command line: `python -m digits <command> [--option value ...]`; the Makefile is a thin layer over it.

Errors a user can fix (bad data, bad config, no credentials) print one clear message and exit 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digits import fileio, paths


class UserError(Exception):
    """Base for errors whose message is the whole story for the user."""


def _cmd_download(args: argparse.Namespace) -> int:
    from digits.download import download

    result = download(competition=args.competition, dest=args.dest, source=args.source, force=args.force)
    rows = ", ".join(f"{name} {count:,} rows" for name, count in result.rows.items())
    print(f"data ready in {result.folder}: {rows}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline offline on the bundled sample: data, quick training, submission, report."""
    import datetime as dt
    import time

    from digits import config, download, submission, train

    started = time.perf_counter()
    settings = config.resolve("quick", {"epochs": args.epochs, "model": args.model})  # a bad value stops here
    data_dir = Path(args.data_dir)
    print(f"== 1/4 data: the bundled sample {paths.SAMPLE_ZIP} -> {data_dir}")
    download.download(source=paths.SAMPLE_ZIP, dest=data_dir)
    run_dir = Path(args.runs_dir) / f"demo-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    print(
        f"== 2/4 training: preset quick, {settings.model}, {settings.epochs} epochs (the sample is small) -> {run_dir}"
    )
    train.train_run(settings, run_dir, data_dir)
    print("== 3/4 submission")
    path = submission.make_submission(run_dir, data_dir=data_dir, submissions_dir=Path(args.submissions_dir))
    print(f"== 4/4 done in {time.perf_counter() - started:.0f} s")
    print(f"report:     {run_dir / 'report.html'}   (or `make report RUN={run_dir.name}`)")
    print(f"submission: {path}")
    print("On the full data: `make download train submission` (or `submit` to upload; see README.md).")
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

    demo = commands.add_parser("demo", help="the whole pipeline offline on the bundled sample")
    demo.add_argument("--data-dir", default=str(paths.DATA_DIR / "demo"))
    demo.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    demo.add_argument("--submissions-dir", default=str(paths.SUBMISSIONS_DIR))
    demo.add_argument("--epochs", default="12", help="epochs per fold (12; fewer for a faster look on a slow CPU)")
    demo.add_argument("--model", default="cnn", help="the model to train (cnn; `tiny` trains in seconds, for tests)")
    demo.set_defaults(handler=_cmd_demo)

    # light imports: TensorFlow loads only when a command needs it
    from digits import compare, predict, submission, train

    train.register_commands(commands)
    submission.register_commands(commands)
    compare.register_commands(commands)
    predict.register_commands(commands)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    from digits.compare import CompareError
    from digits.config import ConfigError
    from digits.data import DataError
    from digits.download import DownloadError
    from digits.predict import PredictError
    from digits.submission import SubmissionError
    from digits.train import RunError

    return UserError, DataError, DownloadError, ConfigError, RunError, SubmissionError, PredictError, CompareError


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # progress lines appear as they come, also through `| tee log`
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in fileio.DISK_FULL_ERRNOS:
            raise
        where = f" while writing {error.filename}" if error.filename else ""
        print(
            f"error: the disk is full{where} ({error.strerror}). Nothing was left half-written: files are "
            f"written to a temporary name and renamed when complete. Free some space and rerun the same "
            f"command; finished folds and submissions are kept.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
