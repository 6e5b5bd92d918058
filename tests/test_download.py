"""`digits download` end to end: the CLI in a subprocess, the real `kaggle` client, a stand-in Kaggle API.

Nothing of the project is mocked. The stand-in (tests/kaggle_standin.py) answers on localhost through the proxy
variables that `kaggle_env` sets, so no test can reach the real Kaggle. The `--source` tests use no API at all
(the stand-in still runs, to show that nothing calls it).

Timing: the client's own retries (`2**n + random()` s of backoff each, which no setting shortens) are turned
off; every failure goes to our retry loop, whose backoff DIGITS_DOWNLOAD_BACKOFF makes tiny here.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digits import data, download
from helpers import assert_user_error
from kaggle_standin import KaggleStandIn

CSV_NAMES = ("train.csv", "test.csv", "sample_submission.csv")
SAMPLE_ROWS = {"train.csv": 3000, "test.csv": 1000, "sample_submission.csv": 1000}
RULES_URL = "https://www.kaggle.com/competitions/digit-recognizer/rules"


# --- helpers ------------------------------------------------------------------------------------


def run_download(env: dict[str, str], *args: str | os.PathLike) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "digits", "download", *map(str, args)]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120
    )


def with_key(env: dict[str, str], server: KaggleStandIn, key: str | None = None) -> dict[str, str]:
    return {**env, "KAGGLE_USERNAME": server.username, "KAGGLE_KEY": key or server.key}


def with_token(env: dict[str, str], server: KaggleStandIn, token: str | None = None) -> dict[str, str]:
    return {**env, "KAGGLE_API_TOKEN": token or server.token}


def write_kaggle_json(env: dict[str, str], server: KaggleStandIn, mode: int = 0o600) -> Path:
    config = Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    config.write_text(f'{{"username": "{server.username}", "key": "{server.key}"}}')
    config.chmod(mode)
    return config


def write_oauth_login(env: dict[str, str], server: KaggleStandIn, expired: bool = False) -> Path:
    """What `kaggle auth login` saves in ~/.kaggle/credentials.json: a refresh token and an access token, current
    or (`expired`) to be renewed with the refresh token first."""
    path = Path(env["HOME"]) / ".kaggle" / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    expires = datetime.now(UTC) + timedelta(hours=-12 if expired else 12)
    login = {
        "refresh_token": "refresh-" + server.key,
        "access_token": server.token,
        "access_token_expiration": expires.isoformat(),
        "username": server.username,
        "scopes": [],
    }
    path.write_text(json.dumps(login))
    path.chmod(0o600)
    return path


def sample_members(sample_zip: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(sample_zip) as archive:
        return {name: archive.read(name) for name in CSV_NAMES}


def write_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def assert_sample_installed(dest: Path, sample_zip: Path) -> None:
    """The three CSVs are the sample's, byte for byte, and load with the project's strict loaders."""
    expected = sample_members(sample_zip)
    for name in CSV_NAMES:
        assert (dest / name).read_bytes() == expected[name], f"{name} differs from the sample's"
    train = data.load_train(dest / "train.csv")
    assert train.images.shape == (SAMPLE_ROWS["train.csv"], 28, 28, 1)
    assert len(train.labels) == SAMPLE_ROWS["train.csv"]
    assert data.load_test(dest / "test.csv").shape == (SAMPLE_ROWS["test.csv"], 28, 28, 1)
    assert len(data.load_sample_submission(dest / "sample_submission.csv")) == SAMPLE_ROWS["sample_submission.csv"]
    assert not (dest / ".download").exists() and not (dest / ".extract").exists(), "staging folders left behind"


def assert_no_csvs(dest: Path) -> None:
    left = [name for name in CSV_NAMES if (dest / name).exists()]
    assert not left, f"{left} left in {dest}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def central_directory_entry(raw: bytes | bytearray, name: str) -> int:
    """Offset of `name`'s central directory header (signature PK 1 2; name length at +28, name at +46)."""
    encoded = name.encode()
    offset = raw.find(b"PK\x01\x02")
    while offset >= 0:
        length = int.from_bytes(raw[offset + 28 : offset + 30], "little")
        if length == len(encoded) and raw[offset + 46 : offset + 46 + length] == encoded:
            return offset
        offset = raw.find(b"PK\x01\x02", offset + 1)
    raise AssertionError(f"no central directory entry for {name}")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def stored_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's CSVs in an uncompressed zip (7 MB): larger than the client's 1 MiB read chunk, so that a
    connection dropped after a few MiB leaves whole chunks on disk and the retry resumes from a real offset."""
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "digit-recognizer.zip"
    return write_zip(
        tmp_path_factory.mktemp("stored") / "digit-recognizer.zip", sample_members(sample), zipfile.ZIP_STORED
    )


# --- from the Kaggle API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials", ["key pair", "token", "kaggle.json", "kaggle auth login", "kaggle auth login, expired"]
)
def test_download_installs_the_verified_csvs(kaggle_server, kaggle_env, sample_zip, tmp_path, credentials):
    if credentials == "key pair":
        env = with_key(kaggle_env, kaggle_server)
    elif credentials == "token":
        env = with_token(kaggle_env, kaggle_server)
    elif credentials == "kaggle.json":
        env = kaggle_env
        write_kaggle_json(env, kaggle_server)
    else:  # the client's recommended way; refused as "not found" before session 13
        env = kaggle_env
        login = write_oauth_login(env, kaggle_server, expired=credentials.endswith("expired"))
    dest = tmp_path / "raw"

    result = run_download(env, "--dest", dest)

    assert result.returncode == 0, result.stderr
    assert_sample_installed(dest, sample_zip)
    assert (dest / "digit-recognizer.zip").read_bytes() == sample_zip.read_bytes()
    assert "train.csv 3,000 rows, test.csv 1,000 rows, sample_submission.csv 1,000 rows" in result.stdout
    assert "readable by other users" not in result.stdout
    calls = kaggle_server.api_calls("DownloadDataFiles")
    assert len(calls) == 1 and calls[0].json() == {"competitionName": "digit-recognizer"}
    assert len(kaggle_server.data_requests()) == 1
    scheme = "Bearer" if credentials == "token" or "login" in credentials else "Basic"
    assert calls[0].headers["Authorization"].startswith(scheme + " ")
    assert bool(kaggle_server.api_calls("IntrospectToken")) == (credentials == "token")
    if credentials == "kaggle auth login, expired":  # renewed with the refresh token, then used and saved
        (renewed, *_) = kaggle_server.issued_tokens
        assert calls[0].headers["Authorization"] == f"Bearer {renewed}"
        assert json.loads(login.read_text())["access_token"] == renewed
        assert renewed not in result.stdout + result.stderr


def test_rerun_is_idempotent_and_makes_no_request(kaggle_server, kaggle_env, sample_zip, tmp_path):
    env = with_key(kaggle_env, kaggle_server)
    dest = tmp_path / "raw"
    assert run_download(env, "--dest", dest).returncode == 0
    before = snapshot(dest)
    kaggle_server.reset_log()

    result = run_download(env, "--dest", dest)

    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert kaggle_server.requests == [], "a rerun with valid files in place must not call Kaggle"
    assert snapshot(dest) == before


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_csv_comes_back_from_the_kept_zip_offline(kaggle_server, kaggle_env, sample_zip, tmp_path, damage):
    dest = tmp_path / "raw"
    assert run_download(with_key(kaggle_env, kaggle_server), "--dest", dest).returncode == 0
    if damage == "deleted":
        (dest / "train.csv").unlink()
    else:
        (dest / "train.csv").write_bytes((dest / "train.csv").read_bytes()[:5000])
    kaggle_server.reset_log()

    result = run_download(kaggle_env, "--dest", dest)  # no credentials: the API is not needed

    assert result.returncode == 0, result.stderr
    assert (
        f"extracted and verified train.csv, test.csv, sample_submission.csv from {dest / 'digit-recognizer.zip'}"
        in (result.stdout)
    )
    assert_sample_installed(dest, sample_zip)
    assert kaggle_server.requests == []


def test_a_bad_kept_zip_is_fetched_again(kaggle_server, kaggle_env, sample_zip, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "digit-recognizer.zip").write_bytes(b"<html>Sign in to Kaggle</html>\n" * 100)  # no CSVs beside it

    result = run_download(with_key(kaggle_env, kaggle_server), "--dest", dest)

    assert result.returncode == 0, result.stderr
    assert f"{dest / 'digit-recognizer.zip'}: not a valid zip file" in result.stdout
    assert "The download is corrupt or incomplete. Fetching it again." in result.stdout
    assert "FORCE=1" not in result.stdout  # no advice to do what is being done
    assert len(kaggle_server.api_calls("DownloadDataFiles")) == 1
    assert_sample_installed(dest, sample_zip)
    assert (dest / "digit-recognizer.zip").read_bytes() == sample_zip.read_bytes()


def test_force_fetches_again(kaggle_server, kaggle_env, sample_zip, tmp_path):
    env = with_key(kaggle_env, kaggle_server)
    dest = tmp_path / "raw"
    assert run_download(env, "--dest", dest).returncode == 0
    kaggle_server.reset_log()

    result = run_download(env, "--dest", dest, "--force")

    assert result.returncode == 0, result.stderr
    assert "nothing to do" not in result.stdout
    assert len(kaggle_server.api_calls("DownloadDataFiles")) == 1
    assert len(kaggle_server.data_requests()) == 1
    assert_sample_installed(dest, sample_zip)


def test_no_credentials_names_the_ways_to_give_them(kaggle_server, kaggle_env, tmp_path):
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(kaggle_env, "--dest", dest))

    for way in (
        ".venv/bin/kaggle auth login",
        "~/.kaggle/credentials.json",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "kaggle.json",
        kaggle_env["KAGGLE_CONFIG_DIR"],
    ):
        assert way in stderr
    assert "SOURCE=" in stderr  # the way around the API
    assert kaggle_server.requests == []
    assert_no_csvs(dest)


@pytest.mark.parametrize("case", ["wrong key", "token refused with 401"])
def test_rejected_credentials(kaggle_server, kaggle_env, tmp_path, case):
    if case == "wrong key":
        env = with_key(kaggle_env, kaggle_server, key="not-the-key")
    else:
        env = with_token(kaggle_env, kaggle_server)
        kaggle_server.fail("IntrospectToken", 401)
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(env, "--dest", dest))

    assert "rejected the credentials (401 Unauthorized)" in stderr
    assert "https://www.kaggle.com/settings" in stderr
    assert kaggle_server.data_requests() == []
    assert_no_csvs(dest)


def test_inactive_token_is_not_reported_as_missing(kaggle_server, kaggle_env, tmp_path):
    env = with_token(kaggle_env, kaggle_server, token="KGAT_revoked")  # IntrospectToken: {"active": false}

    stderr = assert_user_error(run_download(env, "--dest", tmp_path / "raw"))

    assert "did not accept the credentials from KAGGLE_API_TOKEN" in stderr
    assert "not found" not in stderr
    assert kaggle_server.api_calls("IntrospectToken")
    assert kaggle_server.api_calls("DownloadDataFiles") == []


def test_a_refused_login_says_to_log_in_again(kaggle_server, kaggle_env, tmp_path):
    login = write_oauth_login(kaggle_env, kaggle_server, expired=True)
    kaggle_server.fail("GenerateAccessToken", 401)  # the refresh token is revoked

    stderr = assert_user_error(run_download(kaggle_env, "--dest", tmp_path / "raw"))

    assert f"did not accept the credentials from {Path('~/.kaggle/credentials.json')}" in stderr
    assert "(the client has deleted it). Log in again: .venv/bin/kaggle auth login." in stderr
    assert not login.exists()  # the client's doing, as the message says
    assert kaggle_server.api_calls("GenerateAccessToken")
    assert kaggle_server.api_calls("DownloadDataFiles") == []


def test_rules_not_accepted(kaggle_server, kaggle_env, tmp_path):
    kaggle_server.fail("DownloadDataFiles", 403)
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(with_key(kaggle_env, kaggle_server), "--dest", dest))

    assert RULES_URL in stderr
    assert "rerun" in stderr
    assert "403" in stderr
    assert len(kaggle_server.api_calls("DownloadDataFiles")) == 1, "a 403 must not be retried"
    assert_no_csvs(dest)


def test_dropped_connection_is_resumed(kaggle_server, kaggle_env, stored_zip, sample_zip, tmp_path):
    kaggle_server.serve_zip(stored_zip)
    dropped_at = 2_500_000  # bytes: the client has written its first two 1 MiB chunks by then
    kaggle_server.drop_data_connections(times=1, after_bytes=dropped_at)
    dest = tmp_path / "raw"

    result = run_download(with_key(kaggle_env, kaggle_server), "--dest", dest)

    assert result.returncode == 0, result.stderr
    # the dropped one; our retry's fresh URL (the client opens it, then sees the partial and asks for the rest)
    first, reopened, retry = kaggle_server.data_requests()
    assert first.dropped and first.status == 200 and "Range" not in first.headers
    assert reopened.status == 200 and not reopened.dropped and "Range" not in reopened.headers
    resumed_from = int(retry.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= dropped_at
    assert retry.headers["If-Range"] == kaggle_server.etag
    assert retry.status == 206 and not retry.dropped
    assert "Resuming from" in result.stdout
    # one retry loop, ours: the client's own gave up at once, and its "run the same command again" is not shown
    assert f"retry 1/4 in 0 s, resuming after the {resumed_from:,} bytes that arrived" in result.stdout
    assert "retry 2/4" not in result.stdout
    assert "Retrying" not in result.stdout and "Download failed after" not in result.stdout
    assert (dest / "digit-recognizer.zip").read_bytes() == stored_zip.read_bytes()
    assert_sample_installed(dest, sample_zip)


def test_the_installed_kaggle_client_is_the_one_our_download_follows():
    """`download._client_download` repeats the client's competition_download_files with its retries off: a new
    client must be read again before the pin in requirements.txt moves."""
    import importlib.metadata

    assert importlib.metadata.version("kaggle") == download.KAGGLE_CLIENT_VERSION
    pinned = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().splitlines()
    assert f"kaggle=={download.KAGGLE_CLIENT_VERSION}" in pinned


def test_the_clients_give_up_block_is_left_out_and_every_other_line_kept():
    """What the client prints as it raises (kaggle 2.2.4's text, an error spanning two lines) is left out,
    with the blank line before it; its other lines pass unchanged, a blank line among them and a last line
    without its newline included."""
    import contextlib
    import io

    shown = io.StringIO()
    output = download._ClientOutput(shown)
    with contextlib.redirect_stdout(output), contextlib.closing(output):
        print("Downloading digit-recognizer.zip to /x/.download")
        print("\n", end="")
        print("Resuming from 2097152 bytes (5231117 bytes left)...")
        print("\nDownload failed after 0 retries.")
        print("Error: ChunkedEncodingError: ('Connection broken:\n IncompleteRead(2500000 bytes read)')")
        print("Partial file saved at: /x/.download/digit-recognizer.zip")
        print("You can resume by running the same command again.")
    assert shown.getvalue() == (
        "Downloading digit-recognizer.zip to /x/.download\n\nResuming from 2097152 bytes (5231117 bytes left)...\n"
    )

    shown = io.StringIO()
    output = download._ClientOutput(shown)
    with contextlib.redirect_stdout(output), contextlib.closing(output):
        print("digit-recognizer.zip: Skipping, found more recently modified local copy (use --force to force download)")
        print("\n", end="")
        print("no newline", end="")
    assert shown.getvalue() == (
        "digit-recognizer.zip: Skipping, found more recently modified local copy (use --force to force download)\n"
        "\nno newline"
    )


def test_connection_that_keeps_dropping(kaggle_server, kaggle_env, tmp_path):
    kaggle_server.drop_data_connections(times=1000, after_bytes=None)  # close every data connection unanswered
    dest = tmp_path / "raw"

    result = run_download(with_key(kaggle_env, kaggle_server), "--dest", dest)

    stderr = assert_user_error(result)
    assert "download of 'digit-recognizer' failed after 5 attempts" in stderr
    assert "rerun" in stderr
    assert "retry 4/4" in result.stdout
    assert len(kaggle_server.data_requests()) == 5  # the first try and 4 retries
    assert_no_csvs(dest)


@pytest.mark.parametrize("credentials", ["key pair", "token"])
def test_kaggle_unreachable(kaggle_env, tmp_path, credentials):
    unreachable = f"http://127.0.0.1:{closed_port()}"
    env = {**kaggle_env, **{name: unreachable for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}}
    env = (
        {**env, "KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k"}
        if credentials == "key pair"
        else {**env, "KAGGLE_API_TOKEN": "t"}
    )

    stderr = assert_user_error(run_download(env, "--dest", tmp_path / "raw"))

    assert "could not reach Kaggle" in stderr
    assert "internet connection" in stderr


def test_corrupt_zip_is_refused(kaggle_server, kaggle_env, tmp_path):
    kaggle_server.serve_zip(b"<html>this is not a zip</html>\n" * 1000)
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(with_key(kaggle_env, kaggle_server), "--dest", dest))

    assert f"{dest / 'digit-recognizer.zip'}: not a valid zip file" in stderr
    assert "Fetch it again: `make download FORCE=1`." in stderr
    assert_no_csvs(dest)
    assert not (dest / ".extract").exists()


@pytest.mark.parametrize(
    ("case", "exit_code"),
    [
        ("key pair", 0),
        ("token", 0),
        ("key pair, VERBOSE=1", 0),
        ("token, VERBOSE=1", 0),
        ("wrong key", 2),
        ("token, 403", 2),
    ],
)
def test_credentials_are_never_printed(kaggle_server, kaggle_env, tmp_path, case, exit_code):
    if case.startswith("token"):
        env = with_token(kaggle_env, kaggle_server)
        secrets = [kaggle_server.token]
    else:
        key = "wrong-" + kaggle_server.key if case == "wrong key" else kaggle_server.key
        env = with_key(kaggle_env, kaggle_server, key=key)
        secrets = [key, base64.b64encode(f"{kaggle_server.username}:{key}".encode()).decode()]  # the Basic header
    if "VERBOSE=1" in case:
        env["VERBOSE"] = "1"  # makes the client dump each request, Authorization header included
    if "403" in case:
        kaggle_server.fail("DownloadDataFiles", 403)

    result = run_download(env, "--dest", tmp_path / "raw")

    assert result.returncode == exit_code, result.stderr
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o600], ids=["chmod 644", "chmod 600"])
def test_warns_when_kaggle_json_is_readable_by_others(kaggle_server, kaggle_env, sample_zip, tmp_path, mode):
    config = write_kaggle_json(kaggle_env, kaggle_server, mode=mode)

    result = run_download(kaggle_env, "--dest", tmp_path / "raw")

    assert result.returncode == 0, result.stderr
    warned = f"warning: {config} is readable by other users; run `chmod 600 {config}`" in result.stdout
    assert warned == (mode == 0o644)
    assert kaggle_server.key not in result.stdout + result.stderr


def test_bad_backoff_setting_is_a_clear_error(kaggle_server, kaggle_env, tmp_path):
    env = {**with_key(kaggle_env, kaggle_server), "DIGITS_DOWNLOAD_BACKOFF": "soon"}

    stderr = assert_user_error(run_download(env, "--dest", tmp_path / "raw"))

    assert "DIGITS_DOWNLOAD_BACKOFF='soon'" in stderr
    assert kaggle_server.requests == []


# --- from a local copy (--source): no API -------------------------------------------------------


def test_source_zip(kaggle_server, kaggle_env, sample_zip, tmp_path):
    dest = tmp_path / "raw"

    result = run_download(kaggle_env, "--source", sample_zip, "--dest", dest)

    assert result.returncode == 0, result.stderr
    assert_sample_installed(dest, sample_zip)
    assert kaggle_server.requests == []


def test_source_folder(kaggle_server, kaggle_env, sample_zip, tmp_path):
    folder = tmp_path / "from-browser"
    folder.mkdir()
    for name, content in sample_members(sample_zip).items():
        (folder / name).write_bytes(content)
    dest = tmp_path / "raw"

    result = run_download(kaggle_env, "--source", folder, "--dest", dest)

    assert result.returncode == 0, result.stderr
    assert_sample_installed(dest, sample_zip)
    assert snapshot(folder) == {name: content for name, content in sample_members(sample_zip).items()}
    assert kaggle_server.requests == []


def test_source_not_found(kaggle_env, tmp_path):
    missing = tmp_path / "nowhere.zip"

    stderr = assert_user_error(run_download(kaggle_env, "--source", missing, "--dest", tmp_path / "raw"))

    assert f"{missing}: not found" in stderr


def test_zip_missing_a_member(kaggle_env, sample_zip, tmp_path):
    members = sample_members(sample_zip)
    del members["sample_submission.csv"]
    source = write_zip(tmp_path / "partial.zip", members)
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(kaggle_env, "--source", source, "--dest", dest))

    assert f"{source}: missing sample_submission.csv" in stderr
    assert_no_csvs(dest)


@pytest.mark.parametrize("evil_name", ["../evil.csv", "../../evil.csv", "ABSOLUTE"])
def test_zip_member_escaping_dest_is_refused(kaggle_env, sample_zip, tmp_path, evil_name):
    outside = tmp_path / "outside"
    outside.mkdir()
    if evil_name == "ABSOLUTE":
        evil_name = str(outside / "evil.csv")
    members: dict[str | zipfile.ZipInfo, bytes] = {zipfile.ZipInfo(evil_name): b"label\n1\n"}
    members.update(sample_members(sample_zip))
    source = write_zip(tmp_path / "evil.zip", members)
    with zipfile.ZipFile(source) as archive:
        assert archive.namelist()[0] == evil_name  # the member name really is unsafe
    dest = tmp_path / "work" / "raw"

    stderr = assert_user_error(run_download(kaggle_env, "--source", source, "--dest", dest))

    assert f"refusing member '{evil_name}'" in stderr
    assert list(tmp_path.rglob("evil.csv")) == [], "a member was written outside dest"
    assert_no_csvs(dest)


def test_zip_bomb_by_compression_ratio_is_refused(kaggle_env, sample_zip, tmp_path):
    """A member that declares far more bytes than a CSV's ~10x deflate ratio is refused before inflating."""
    members = sample_members(sample_zip)
    header = members["train.csv"].split(b"\n", 1)[0]
    members["train.csv"] = header + b"\n" + (b"0," * 784 + b"0\n") * 4000  # 6 MB of zeros: deflates ~1000x
    source = write_zip(tmp_path / "bomb.zip", members)
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(kaggle_env, "--source", source, "--dest", dest))

    assert f"{source}: member 'train.csv' declares" in stderr
    assert "zip bomb" in stderr
    assert_no_csvs(dest)
    assert not (dest / ".extract").exists()


def test_zip_member_lying_about_its_size_is_refused(kaggle_env, sample_zip, tmp_path):
    """A member whose headers declare 1,000 bytes but which inflates to 5 MB.

    extract_safely's declared-ratio check passes (1,000 bytes is small), and its streaming size check never
    fires because CPython's zipfile itself stops at the declared size; the CRC of those 1,000 bytes then fails,
    and the member is refused as corrupt. Either way nothing is installed.
    """
    source = write_zip(tmp_path / "liar.zip", sample_members(sample_zip))
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("train.csv")
    declared = (1000).to_bytes(4, "little")
    local = info.header_offset
    assert raw[local : local + 4] == b"PK\x03\x04"
    raw[local + 22 : local + 26] = declared  # local file header: uncompressed size
    central = central_directory_entry(raw, "train.csv")
    raw[central + 24 : central + 28] = declared  # central directory: uncompressed size
    source.write_bytes(bytes(raw))
    with zipfile.ZipFile(source) as archive:
        assert archive.getinfo("train.csv").file_size == 1000
    dest = tmp_path / "raw"

    stderr = assert_user_error(run_download(kaggle_env, "--source", source, "--dest", dest))

    assert f"{source}: member 'train.csv'" in stderr
    assert "is corrupt (Bad CRC-32" in stderr
    assert_no_csvs(dest)
    assert not (dest / ".extract").exists()


def test_bad_pixel_is_located_and_dest_is_untouched(kaggle_env, sample_zip, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    with zipfile.ZipFile(sample_zip) as archive:  # a previous, valid install that must survive
        archive.extractall(dest)
    before = snapshot(dest)
    members = sample_members(sample_zip)
    lines = members["train.csv"].split(b"\n")
    cells = lines[4].split(b",")  # line 5 of the file: the header is line 1
    cells[1 + 300] = b"256"  # column pixel300 (column 0 is the label)
    lines[4] = b",".join(cells)
    members["train.csv"] = b"\n".join(lines)
    source = write_zip(tmp_path / "bad.zip", members)

    stderr = assert_user_error(run_download(kaggle_env, "--source", source, "--dest", dest, "--force"))

    assert "bad.zip:train.csv: line 5, column 'pixel300'" in stderr
    assert "256" in stderr
    assert "nothing was installed" in stderr
    assert snapshot(dest) == before
    assert sorted(os.listdir(dest)) == sorted(CSV_NAMES)


def test_stand_in_serves_ranges(kaggle_server, sample_zip):
    """The stand-in itself: a Range request is answered 206 with the right slice (what the resume test relies on)."""
    connection = http.client.HTTPConnection("127.0.0.1", kaggle_server.port, timeout=10)
    connection.request("GET", "http://localhost/storage/digit-recognizer.zip", headers={"Range": "bytes=100-199"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes 100-199/{sample_zip.stat().st_size}"
    assert body == sample_zip.read_bytes()[100:200]


def test_stand_in_takes_a_submission_from_the_real_client(kaggle_server, kaggle_env, tmp_path):
    """The submission half of the stand-in, driven by the official `kaggle` CLI (for the `make submit` tests)."""
    env = with_token(kaggle_env, kaggle_server)
    kaggle_cli = Path(sys.executable).with_name("kaggle")
    submission = tmp_path / "submission.csv"
    submission.write_text("ImageId,Label\n1,3\n2,7\n")

    submit = subprocess.run(
        [kaggle_cli, "competitions", "submit", "-c", "digit-recognizer", "-f", submission, "-m", "first try"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    listing = subprocess.run(
        [kaggle_cli, "competitions", "submissions", "-c", "digit-recognizer", "--csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert submit.returncode == 0, submit.stderr
    assert "Successfully submitted" in submit.stdout
    called = [
        r.api_method or f"{r.method} {r.kind}" for r in kaggle_server.requests if r.api_method != "IntrospectToken"
    ]
    assert called == [
        "StartSubmissionUpload",
        "PUT upload",
        "CreateSubmission",
        "GetSubmissionLimits",
        "ListSubmissions",
    ]
    (stored,) = kaggle_server.submissions
    assert stored.content == submission.read_bytes() and stored.description == "first try"
    assert listing.returncode == 0, listing.stderr
    assert "submission.csv" in listing.stdout and "first try" in listing.stdout and "0.99000" in listing.stdout
    assert kaggle_server.token not in submit.stdout + submit.stderr + listing.stdout + listing.stderr
