"""Fetch the competition data and verify it.

In:  the official Kaggle API (`kaggle` package) for competition `digit-recognizer`, or a local copy
     (`SOURCE=`: the zip a user downloaded by browser, or a folder holding the CSVs).
Out: `data/raw/digit-recognizer.zip` and the verified `train.csv`, `test.csv`,
     `sample_submission.csv` beside it.

Guarantees: idempotent (valid files already in place: nothing is fetched, and it says so;
`force=True` fetches again; a CSV lost or damaged since is extracted again from the kept zip, offline, and
only a bad zip is fetched again); a CSV appears under its final name only once complete and verified
(extracted to a hidden staging folder, validated, then renamed); archive members with absolute
paths or `..` are refused, as are members that inflate far beyond their declared size; credentials
are never printed. A full disk is not a network failure (it is raised as the disk error it is); network
failures are retried with exponential backoff; the first delay is
`backoff` seconds, or `DIGITS_DOWNLOAD_BACKOFF` (seconds, a float; tests set it tiny), else 2.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import stat
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from digits import data, fileio, paths

RULES_URL = "https://www.kaggle.com/competitions/{competition}/rules"
CREDENTIALS_HELP = (
    "Kaggle credentials not found. Provide them in one of the ways the official client accepts:\n"
    "  1. log in once in a browser: .venv/bin/kaggle auth login (it saves {oauth_file})\n"
    "  2. an API token: export KAGGLE_API_TOKEN=<token> (Kaggle > Settings > API > Generate New Token)\n"
    "  3. a legacy key pair: export KAGGLE_USERNAME=<user> KAGGLE_KEY=<key>\n"
    '  4. a kaggle.json file ({{"username": ..., "key": ...}}) in {config_dir} (or the folder named by '
    "KAGGLE_CONFIG_DIR), made private with chmod 600"
)
# What to do instead of using the API, by what the API was wanted for.
WITHOUT_API = {
    "download": "Or skip the API: download the zip in a browser and run `make download SOURCE=path/to/{competition}.zip`.",
    "submit": "Or upload the file by hand at https://www.kaggle.com/competitions/{competition}/submissions.",
    "list": "Or see your submissions at https://www.kaggle.com/competitions/{competition}/submissions.",
}
# Where `kaggle auth login` keeps its OAuth credentials (kagglesdk's KaggleCredentials.DEFAULT_CREDENTIALS_FILE).
OAUTH_CREDENTIALS = Path("~/.kaggle/credentials.json")
MAX_EXPANSION = 200  # CSV deflates ~10x; a member inflating beyond 200x its compressed size is refused
MAX_MEMBER_BYTES = 2 * 1024**3


class DownloadError(RuntimeError):
    """The data could not be fetched or verified; the message says why and what to do."""


@dataclass
class DownloadResult:
    folder: Path
    rows: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    fetched: bool = True  # False when valid files were already in place


def download(
    competition: str = paths.COMPETITION,
    dest: Path = paths.RAW_DIR,
    source: Path | None = None,
    force: bool = False,
    retries: int = 4,
    backoff: float | None = None,
    log: Callable[[str], None] = print,
) -> DownloadResult:
    """Make `dest` hold verified competition CSVs; see the module docstring."""
    dest = Path(dest)
    if not force:
        existing = _existing_valid(dest)
        if existing is not None:
            log(
                f"{dest}: train.csv, test.csv and sample_submission.csv are present and valid; nothing to do "
                f"(FORCE=1 fetches again)."
            )
            existing.fetched = False
            return existing
    dest.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source).expanduser()
        if source.is_dir():
            return _install_from_folder(source, dest, log)
        if not source.exists():
            raise DownloadError(
                f"{source}: not found. SOURCE must be the competition zip or a folder holding its CSVs."
            )
        again = (
            f"Download the zip again (https://www.kaggle.com/competitions/{competition}/data) and rerun "
            f"`make download SOURCE={shlex.quote(str(source))} FORCE=1`."
        )
        return _install_from_zip(source, dest, log, again)
    if backoff is None:
        backoff = _backoff_from_env()
    again = "Fetch it again: `make download FORCE=1`."
    kept_zip = dest / f"{competition}.zip"
    if not force and kept_zip.is_file():  # a CSV went missing or bad, but the zip it came from is still here
        try:
            return _install_from_zip(kept_zip, dest, log, again="")
        except DownloadError as error:
            log(f"{str(error).strip()} Fetching it again.")
    zip_path = _fetch_with_kaggle(competition, dest, force=force, retries=retries, backoff=backoff, log=log)
    return _install_from_zip(zip_path, dest, log, again)


def _backoff_from_env(default: float = 2.0) -> float:
    text = os.environ.get("DIGITS_DOWNLOAD_BACKOFF", "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise DownloadError(f"DIGITS_DOWNLOAD_BACKOFF={text!r}: expected the first retry delay in seconds (>= 0).")
    return value


def _existing_valid(dest: Path) -> DownloadResult | None:
    if not all((dest / name).is_file() for name in paths.CSV_NAMES):
        return None
    try:
        check = data.verify_folder(dest)
    except data.DataError:
        return None  # broken or partial files: fetch again
    return DownloadResult(folder=dest, rows=check.rows, warnings=check.warnings)


# --- the Kaggle API ---------------------------------------------------------------------------


def credentials_source() -> str | None:
    """Which of the client's credential sources is set (never the secret itself), or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for token_file in ("~/.kaggle/access_token", "~/.kaggle/access_token.txt"):
        if Path(token_file).expanduser().is_file():
            return token_file
    config = kaggle_config_dir() / "kaggle.json"
    if config.is_file():
        return str(config)
    if OAUTH_CREDENTIALS.expanduser().is_file():  # `kaggle auth login`, the client's recommended way
        return str(OAUTH_CREDENTIALS)
    return None


def kaggle_config_dir() -> Path:
    """The folder the official client reads kaggle.json from (same rules as the client)."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return legacy


def warn_if_config_readable(log: Callable[[str], None]) -> None:
    config = kaggle_config_dir() / "kaggle.json"
    if os.name != "nt" and config.is_file() and config.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log(f"warning: {config} is readable by other users; run `chmod 600 {config}`.")


def kaggle_api(action: str = "download", competition: str = paths.COMPETITION):
    """An authenticated official `KaggleApi`, or DownloadError naming the ways to give credentials and, for
    `action` ("download", "submit" or "list"), how to do without the API."""
    without_api = WITHOUT_API[action].format(competition=competition)
    source = credentials_source()  # before the client runs: it deletes a login that Kaggle refuses
    if source is None:
        raise DownloadError(
            CREDENTIALS_HELP.format(config_dir=kaggle_config_dir(), oauth_file=OAUTH_CREDENTIALS) + "\n" + without_api
        )
    # Importing `kaggle` authenticates as a side effect and may print help text; keep that quiet, we
    # authenticate explicitly below and report failures ourselves.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

    import requests

    api = KaggleApi()
    # VERBOSE=1 (or VERBOSE_OUTPUT) in the environment makes the client dump every request, the
    # Authorization header included: never let it print the credentials.
    api.args = [arg for arg in api.args if arg != "--verbose"]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            api.authenticate()
    except SystemExit:
        # Credentials are set (checked above), yet the client gave up: Kaggle reported the token inactive,
        # or the file holding them is unusable. Saying "not found" here would send the user the wrong way.
        if source == str(OAUTH_CREDENTIALS):
            why = (
                f"the login saved in {OAUTH_CREDENTIALS} was refused (the client has deleted it). Log in again: "
                f".venv/bin/kaggle auth login."
            )
        else:
            why = (
                "the token is revoked or expired (Kaggle reports it inactive), or kaggle.json is not valid JSON with "
                '"username" and "key". Create a new token at https://www.kaggle.com/settings (API section) and '
                "update them, or log in with .venv/bin/kaggle auth login."
            )
        raise DownloadError(f"Kaggle did not accept the credentials from {source}: {why} {without_api}") from None
    except requests.exceptions.RequestException as error:  # checking a token is a network call
        raise DownloadError(explain_http_error(error, competition, "check the credentials")) from None
    return api


def explain_http_error(error: Exception, competition: str, action: str) -> str:
    """Turn an HTTP error from the Kaggle client into a message that says what to do."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    detail = str(error).strip() or type(error).__name__
    if status == 401:
        return (
            f"Kaggle rejected the credentials (401 Unauthorized) while trying to {action}. "
            f"The token or key is wrong or expired: create a new one at https://www.kaggle.com/settings "
            f"(API section) and update KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json, or log in again "
            f"with .venv/bin/kaggle auth login."
        )
    if status == 403:
        return (
            f"Kaggle refused access to competition '{competition}' (403 Forbidden: {detail}). "
            f"Accept the competition rules at {RULES_URL.format(competition=competition)} "
            f"(signed in as the account of your credentials), then rerun."
        )
    if status == 404:
        return (
            f"Kaggle has no competition '{competition}' (404 Not Found). Check COMPETITION "
            f"(the last part of the competition's URL)."
        )
    if status == 429:
        return f"Kaggle is rate-limiting requests (429 Too Many Requests) while trying to {action}; wait a minute and rerun."
    if status is not None:
        return f"Kaggle answered {status} while trying to {action}: {detail}"
    return f"could not reach Kaggle to {action}: {detail}. Check your internet connection and rerun."


def _fetch_with_kaggle(
    competition: str, dest: Path, force: bool, retries: int, backoff: float, log: Callable[[str], None]
) -> Path:
    import requests

    warn_if_config_readable(log)
    api = kaggle_api("download", competition)
    staging = dest / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    final_zip = dest / f"{competition}.zip"
    fetched = staging / f"{competition}.zip"  # where the client writes it
    log(f"downloading competition '{competition}' with the official Kaggle API ...")
    attempt = 0
    while True:
        attempt += 1
        try:
            # The client streams to staging/<competition>.zip with a progress bar. Without `force` it
            # resumes a partial file (from an earlier attempt or run) with Range requests, after checking
            # through its own marker file that the partial belongs to the same remote object.
            _client_download(api, competition, staging, force=force and attempt == 1)
            break
        except requests.exceptions.HTTPError as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status is not None and status < 500 and status != 429:
                raise DownloadError(explain_http_error(error, competition, "download the data")) from None
            last_error: Exception = error
        except (requests.exceptions.RequestException, OSError, ValueError) as error:
            if (
                isinstance(error, OSError)
                and not isinstance(error, requests.exceptions.RequestException)
                and error.errno in fileio.DISK_FULL_ERRNOS
            ):
                error.filename = error.filename or str(staging / f"{competition}.zip")  # write() names no file
                raise  # our disk, not the network: retrying cannot help (the command says to free space)
            last_error = error
        if attempt > retries:
            raise DownloadError(
                f"download of '{competition}' failed after {attempt} attempts: "
                f"{explain_http_error(last_error, competition, 'download the data')} "
                f"What arrived is kept in {staging}; the next `make download` resumes from it."
            ) from None
        delay = backoff * 2 ** (attempt - 1)
        arrived = fetched.stat().st_size if fetched.is_file() else 0
        keeps = f", resuming after the {arrived:,} bytes that arrived if the server allows it" if arrived else ""
        log(
            f"download interrupted ({type(last_error).__name__}: {last_error}); retry {attempt}/{retries} in "
            f"{delay:.0f} s{keeps}"
        )
        time.sleep(delay)
    if not fetched.is_file():
        candidates = sorted(staging.glob("*.zip"))
        if not candidates:
            raise DownloadError(f"the Kaggle client finished but left no zip in {staging}; rerun with FORCE=1.")
        fetched = candidates[0]
    os.replace(fetched, final_zip)
    shutil.rmtree(staging, ignore_errors=True)
    return final_zip


KAGGLE_CLIENT_VERSION = "2.2.4"  # what `_client_download` follows; tests/test_download.py checks the installed one


def _client_download(api, competition: str, folder: Path, force: bool) -> None:
    """`api.competition_download_files(competition, path=folder, force=force, quiet=False)` of the pinned kaggle
    client (KAGGLE_CLIENT_VERSION), with the client's own retries turned off (`max_retries=0`), so that the loop
    above is the only one. The client retries every OSError 5 times with 2-32 s of backoff, a full disk
    included: a user waited about a minute, reading "Connection error ... Retrying", before the disk-full
    message; and a network failure was retried up to 5 times inside each of our 5 attempts."""
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    output = _ClientOutput(sys.stdout)
    with api.build_kaggle_client() as kaggle, contextlib.redirect_stdout(output), contextlib.closing(output):
        request = ApiDownloadDataFilesRequest()
        request.competition_name = competition
        response = kaggle.competitions.competition_api_client.download_data_files(request)
        url = response.url.split("?")[0]
        outfile = os.path.join(folder, f"{competition}.{url.split('.')[-1]}")
        if force or api.download_needed(response, outfile, quiet=False):
            api.download_file(response, outfile, kaggle.http_client(), quiet=False, resume=not force, max_retries=0)


class _ClientOutput(io.TextIOBase):
    """Passes the client's printed lines on as they come ("Downloading ...", "Resuming from ..."; its progress
    bar goes to stderr), except the block it prints when it gives up, just before it raises ("Download failed
    after 0 retries.", the error, "Partial file saved at ...", "You can resume by running the same command
    again.", and the blank line before them): the retry loop says what happened and what comes next."""

    GIVING_UP = "Download failed after "

    def __init__(self, target) -> None:
        super().__init__()
        self.target = target
        self.pending = ""  # a line not yet ended
        self.blank_lines = 0  # held back: they may precede the block
        self.giving_up = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line, end="\n")
        self.target.flush()
        return len(text)

    def _line(self, line: str, end: str) -> None:
        self.giving_up = self.giving_up or line.startswith(self.GIVING_UP)
        if self.giving_up:  # the rest is the block (the error's text may span lines)
            self.blank_lines = 0
        elif not line.strip() and end:
            self.blank_lines += 1
        else:
            self.target.write("\n" * self.blank_lines + line + end)
            self.blank_lines = 0

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        if self.pending:  # a last line without its newline
            self._line(self.pending, end="")
        if not self.giving_up:
            self.target.write("\n" * self.blank_lines)
        self.pending, self.blank_lines = "", 0
        self.target.flush()
        super().close()


# --- extraction and verification --------------------------------------------------------------


def _install_from_zip(zip_path: Path, dest: Path, log: Callable[[str], None], again: str) -> DownloadResult:
    """`again`: what the user does about a bad zip (fetch it again, or download it again by browser)."""
    staging = dest / ".extract"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        extract_safely(zip_path, staging, again)
        result = _verify_and_move(staging, dest, log, origin=f"{zip_path.name}:", again=again)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"extracted and verified {', '.join(paths.CSV_NAMES)} from {zip_path} into {dest}")
    return result


def _install_from_folder(source: Path, dest: Path, log: Callable[[str], None]) -> DownloadResult:
    missing = [name for name in paths.CSV_NAMES if not (source / name).is_file()]
    if missing:
        raise DownloadError(
            f"{source}: missing {', '.join(missing)}. SOURCE must be the competition zip or a "
            f"folder holding {', '.join(paths.CSV_NAMES)}."
        )
    staging = dest / ".extract"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in paths.CSV_NAMES:
            shutil.copyfile(source / name, staging / name)
        again = (
            f"Fix the file, or download the competition zip and run `make download SOURCE=path/to/"
            f"{paths.COMPETITION}.zip FORCE=1`."
        )
        result = _verify_and_move(staging, dest, log, origin=f"{source}/", again=again)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"copied and verified {', '.join(paths.CSV_NAMES)} from {source} into {dest}")
    return result


def extract_safely(zip_path: Path, out_dir: Path, again: str) -> list[str]:
    """Extract the competition CSVs from `zip_path` into `out_dir`, refusing unsafe archives; every refusal ends
    with `again`, what to do about it."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DownloadError(
            f"{zip_path}: not a valid zip file ({error}). The download is corrupt or incomplete. {again}"
        ) from None
    with archive:
        members = archive.infolist()
        for member in members:
            name = PurePosixPath(member.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise DownloadError(
                    f"{zip_path}: refusing member '{member.filename}': absolute paths and '..' could write outside "
                    f"{out_dir}. This is not the competition's archive. {again}"
                )
        by_name = {PurePosixPath(m.filename).name: m for m in members if not m.is_dir()}
        missing = [name for name in paths.CSV_NAMES if name not in by_name]
        if missing:
            raise DownloadError(
                f"{zip_path}: missing {', '.join(missing)} (it holds {', '.join(sorted(by_name)) or 'nothing'}). "
                f"Is this the '{paths.COMPETITION}' archive? {again}"
            )
        for name in paths.CSV_NAMES:
            _extract_member(archive, by_name[name], out_dir / name, zip_path, again)
    return list(paths.CSV_NAMES)


def _extract_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, zip_path: Path, again: str
) -> None:
    limit = min(MAX_MEMBER_BYTES, max(member.file_size, 1), max(member.compress_size, 1) * MAX_EXPANSION)
    if member.file_size > MAX_MEMBER_BYTES or member.file_size > max(member.compress_size, 1) * MAX_EXPANSION:
        raise DownloadError(
            f"{zip_path}: member '{member.filename}' declares {member.file_size:,} bytes from "
            f"{member.compress_size:,} compressed: refused as a zip bomb. {again}"
        )
    written = 0
    try:
        with archive.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise DownloadError(
                        f"{zip_path}: member '{member.filename}' inflates beyond its declared {member.file_size:,} "
                        f"bytes: refused as a zip bomb. {again}"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, zipfile.BadZipFile) and error.errno is not None:
            error.filename = error.filename or str(target)  # a failed write() names no file
            raise  # a real disk error (full disk, permissions): let it surface as is
        raise DownloadError(f"{zip_path}: member '{member.filename}' is corrupt ({error}). {again}") from None


def _verify_and_move(staging: Path, dest: Path, log: Callable[[str], None], origin: str, again: str) -> DownloadResult:
    try:
        check = data.verify_folder(staging)
    except data.DataError as error:
        # Name the file as the user knows it (inside their zip or folder), not our staging copy, and say what
        # to do about where it came from.
        message = str(error).replace(f"{staging}/", origin).replace(str(staging), origin)
        message = message.replace(data.FIX_HINT, again)
        raise DownloadError(f"verification failed, nothing was installed in {dest}: {message}") from None
    for warning in check.warnings:
        log(f"warning: {warning}")
    for name in paths.CSV_NAMES:  # each rename is atomic; all three were verified together above
        os.replace(staging / name, dest / name)
    return DownloadResult(folder=dest, rows=check.rows, warnings=check.warnings)
