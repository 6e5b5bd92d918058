"""A stand-in for the Kaggle API, so the official `kaggle` client can be tested end to end on localhost.

The real client (kaggle 2.x + kagglesdk) sends every call as a JSON POST to
`http://localhost/api/v1/<service>/<Method>` when `KAGGLE_API_ENVIRONMENT=LOCALHOST`; with `http_proxy`
pointing at this server, those calls (and every URL it redirects to) arrive here, the request line holding the
absolute URL. What is answered, as read from the installed kagglesdk:

- `security.OAuthService/IntrospectToken` ({"token": ...}): what `authenticate()` asks about a KAGGLE_API_TOKEN
  (twice per process: `import kaggle` authenticates too). An unknown token is `{"active": false}` (RFC 7662).
- `users.AccountService/GenerateAccessToken` ({"refreshToken": ...}): how the client renews the access token of a
  `kaggle auth login` (~/.kaggle/credentials.json) once it has expired. A refresh token in `refresh_tokens` gets a
  new access token (added to `tokens`; `{"token", "expiresIn", "userName"}`); any other is refused with 401.
- `competitions.CompetitionApiService/DownloadDataFiles` ({"competitionName": ...}): a 302 to a signed-looking
  data URL on this same server (`/storage/<competition>.zip?...`), which serves the zip with Content-Length,
  Accept-Ranges, ETag and Last-Modified, and honours `Range` (206) and `If-Range`. The client follows the
  redirect with the session's Authorization header (same host) and, when it resumes, repeats it.
- Submissions: `StartSubmissionUpload` -> {"token", "createUrl"}, a PUT of the file to createUrl, then
  `CreateSubmission` ({"blobFileTokens": token}); `ListSubmissions`, `GetSubmission`, `GetSubmissionLimits`.
  A new submission is scored at once (`submission_score`), or after `pending_lists` listings, or fails
  (`submission_status = "ERROR"`, `submission_error`).

Every API call checks the Authorization header: `Basic` for a username/key pair in `api_keys`, `Bearer` for a
token in `tokens`. Errors are JSON `{"code": N, "message": ...}` with HTTP status N, as Kaggle sends them and as
kagglesdk turns them into `requests.HTTPError`. Each test configures its server through the attributes and
methods below, and reads back `requests` (every request received, in order).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import secrets
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/api/v1/"
DATA_PREFIX = "/storage/"
UPLOAD_PREFIX = "/upload/"
COMPETITION = "digit-recognizer"
RULES_MESSAGE = "You must accept this competition's rules before you'll be able to download files."


@dataclass
class RecordedRequest:
    """One request as the stand-in received it."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    kind: str  # "api", "data", "upload" or "other"
    status: int | None = None  # what the stand-in answered (None: the connection was closed unanswered)
    dropped: bool = False  # the connection was closed before the whole response was sent

    @property
    def api_method(self) -> str | None:
        """`DownloadDataFiles` for `/api/v1/competitions.CompetitionApiService/DownloadDataFiles`."""
        return self.path.rsplit("/", 1)[-1] if self.kind == "api" else None

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


@dataclass
class Drop:
    """Cut the first `times` data requests short: after `after_bytes` of the body, or before any response."""

    times: int
    after_bytes: int | None  # None: close the connection without answering at all


@dataclass
class Submission:
    ref: int
    file_name: str
    content: bytes
    description: str
    date: datetime
    status: str = "COMPLETE"
    public_score: str = "0.99000"
    private_score: str = ""
    error_description: str = ""
    pending_lists: int = 0  # ListSubmissions shows it PENDING (no score) this many more times
    unlisted_lists: int = 0  # ListSubmissions leaves it out this many more times


@dataclass
class KaggleStandIn:
    """Configure, start (`start()` or `with`), point the client at `proxy_url`, then read `requests`."""

    zip_bytes: bytes = b""
    competition: str = COMPETITION
    username: str = "standin-user"
    key: str = field(default_factory=lambda: "key" + secrets.token_hex(16))
    token: str = field(default_factory=lambda: "KGAT_" + secrets.token_hex(16))
    last_modified: datetime = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    # Per API method name: (status, message) answered instead of the real thing, e.g. {"DownloadDataFiles": (403, ...)}.
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    drop: Drop | None = None
    submission_score: str = "0.99000"
    # What a new submission becomes once scored ("COMPLETE" or "ERROR", with `submission_error` as the reason),
    # and how many ListSubmissions calls show it PENDING (no score) before that.
    submission_status: str = "COMPLETE"
    submission_error: str = ""
    pending_lists: int = 0
    # How many ListSubmissions calls leave a new submission out, as a listing that lags the upload would.
    listing_lag: int = 0
    submissions_allowed_per_day: int = 5

    def __post_init__(self) -> None:
        self.api_keys: dict[str, str] = {self.username: self.key}  # username -> key (Basic)
        self.tokens: dict[str, str] = {self.token: self.username}  # token -> username (Bearer)
        self.refresh_tokens: dict[str, str] = {"refresh-" + self.key: self.username}  # `kaggle auth login`'s
        self.issued_tokens: list[str] = []  # access tokens GenerateAccessToken handed out, in order
        self.requests: list[RecordedRequest] = []
        self.submissions: list[Submission] = []
        self.uploads: dict[str, dict] = {}  # blob token -> {"file_name", "content_length", "content"}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- configuration ------------------------------------------------------------------------

    def serve_zip(self, path_or_bytes: str | Path | bytes) -> None:
        """The bytes the data URL serves (the zip, or anything else to simulate corruption)."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        self.zip_bytes = data

    def fail(self, api_method: str, status: int, message: str | None = None) -> None:
        """Answer `api_method` (e.g. "DownloadDataFiles") with the JSON error `status` from now on."""
        default = {401: "Unauthenticated", 403: RULES_MESSAGE, 404: "Not found", 429: "Too many requests"}
        self.failures[api_method] = (status, message or default.get(status, f"error {status}"))

    def drop_data_connections(self, times: int, after_bytes: int | None) -> None:
        """Drop the first `times` data requests: headers with the full Content-Length, `after_bytes` of the body,
        then close the socket (`after_bytes=None`: close without sending a single byte)."""
        self.drop = Drop(times=times, after_bytes=after_bytes)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KaggleStandIn:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="kaggle-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KaggleStandIn:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stand-in first"
        return self._server.server_address[1]

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what was received --------------------------------------------------------------------

    def api_calls(self, api_method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "api" and api_method in (None, r.api_method)]

    def data_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "data"]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- helpers for the handler --------------------------------------------------------------

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.zip_bytes).hexdigest()[:32] + '"'

    @property
    def last_modified_header(self) -> str:
        return email.utils.format_datetime(self.last_modified, usegmt=True)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_drop(self) -> Drop | None:
        with self._lock:
            if self.drop is None or self.drop.times <= 0:
                return None
            self.drop.times -= 1
            return Drop(times=1, after_bytes=self.drop.after_bytes)

    def _user_for(self, authorization: str) -> str | None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.tokens.get(credentials.strip())
        if scheme.lower() == "basic":
            try:
                username, _, key = base64.b64decode(credentials.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return username if self.api_keys.get(username) == key and key else None
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KaggleStandIn/1.0"

    @property
    def standin(self) -> KaggleStandIn:
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        pass  # quiet: the tests read `standin.requests` instead

    # Every verb goes through one dispatcher; the client uses POST (API), GET (data) and PUT (upload).
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)  # absolute-form ("http://localhost/api/...") when it came through the proxy
        path = url.path
        if path.startswith(API_PREFIX):
            kind = "api"
        elif path.startswith(DATA_PREFIX):
            kind = "data"
        elif path.startswith(UPLOAD_PREFIX):
            kind = "upload"
        else:
            kind = "other"
        record = RecordedRequest(
            method=self.command,
            path=path,
            query=parse_qs(url.query),
            headers={name: value for name, value in self.headers.items()},
            body=self._read_body(),
            kind=kind,
        )
        self.standin._record(record)
        try:
            if kind == "api" and self.command == "POST":
                self._api(record)
            elif kind == "data" and self.command in ("GET", "HEAD"):
                self._data(record)
            elif kind == "upload" and self.command == "PUT":
                self._upload(record)
            else:
                self._error(record, 404, f"no such endpoint: {self.command} {path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # --- responses ----------------------------------------------------------------------------

    def _send(self, record: RecordedRequest, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        record.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, record: RecordedRequest, payload: dict, status: int = 200) -> None:
        self._send(record, status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, record: RecordedRequest, status: int, message: str) -> None:
        self._json(record, {"code": status, "message": message}, status=status)

    # --- the API ------------------------------------------------------------------------------

    def _api(self, record: RecordedRequest) -> None:
        standin = self.standin
        method = record.api_method or ""
        try:
            payload = record.json()
        except ValueError:
            self._error(record, 400, "the request body is not JSON")
            return
        if method in standin.failures:
            status, message = standin.failures[method]
            self._error(record, status, message)
            return
        if method == "IntrospectToken":  # asks about a token; answers, like RFC 7662, without authenticating
            username = standin.tokens.get(payload.get("token", ""))
            if username is None:
                self._json(record, {"active": False})
            else:
                self._json(record, {"active": True, "username": username, "clientId": "kaggle-cli", "scope": ""})
            return
        if method == "GenerateAccessToken":  # authenticated by the refresh token in its body
            username = standin.refresh_tokens.get(payload.get("refreshToken", ""))
            if username is None:
                self._error(record, 401, "Unauthenticated: unknown or revoked refresh token")
                return
            token = "KGAT_" + secrets.token_hex(16)
            with standin._lock:
                standin.tokens[token] = username
                standin.issued_tokens.append(token)
            self._json(record, {"token": token, "expiresIn": 43200, "userName": username})
            return
        user = standin._user_for(self.headers.get("Authorization", ""))
        if user is None:
            self._error(record, 401, "Unauthenticated: missing or invalid credentials")
            return
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            self._error(record, 404, f"the stand-in does not implement {method}")
            return
        handler(record, payload, user)

    def _competition_ok(self, record: RecordedRequest, payload: dict) -> bool:
        name = payload.get("competitionName", "")
        if name != self.standin.competition:
            self._error(record, 404, f"Competition '{name}' not found")
            return False
        return True

    def _api_DownloadDataFiles(self, record: RecordedRequest, payload: dict, user: str) -> None:
        if not self._competition_ok(record, payload):
            return
        name = payload["competitionName"]
        signature = secrets.token_hex(8)
        location = f"http://localhost{DATA_PREFIX}{name}.zip?GoogleAccessId=standin&Expires=1&Signature={signature}"
        self._send(record, 302, b"", {"Location": location})

    def _api_StartSubmissionUpload(self, record: RecordedRequest, payload: dict, user: str) -> None:
        if not self._competition_ok(record, payload):
            return
        blob_token = "blob-" + secrets.token_hex(8)
        self.standin.uploads[blob_token] = {
            "file_name": payload.get("fileName", ""),
            "content_length": int(payload.get("contentLength", 0)),
            "content": None,
        }
        self._json(record, {"token": blob_token, "createUrl": f"http://localhost{UPLOAD_PREFIX}{blob_token}"})

    def _api_CreateSubmission(self, record: RecordedRequest, payload: dict, user: str) -> None:
        if not self._competition_ok(record, payload):
            return
        upload = self.standin.uploads.get(payload.get("blobFileTokens", ""))
        if upload is None or upload["content"] is None:
            self._error(record, 400, "blobFileTokens does not name a completed upload")
            return
        with self.standin._lock:
            submission = Submission(
                ref=1000 + len(self.standin.submissions),
                file_name=upload["file_name"],
                content=upload["content"],
                description=payload.get("submissionDescription", ""),
                date=datetime.now(UTC).replace(tzinfo=None),
                public_score=self.standin.submission_score,
                status=self.standin.submission_status,
                error_description=self.standin.submission_error,
                pending_lists=self.standin.pending_lists,
                unlisted_lists=self.standin.listing_lag,
            )
            self.standin.submissions.append(submission)
        self._json(record, {"message": "Successfully submitted to Digit Recognizer", "ref": submission.ref})

    def _api_ListSubmissions(self, record: RecordedRequest, payload: dict, user: str) -> None:
        if not self._competition_ok(record, payload):
            return
        with self.standin._lock:
            newest_first = sorted(self.standin.submissions, key=lambda s: s.ref, reverse=True)
            listed = [_submission_json(s, user) for s in newest_first if s.unlisted_lists == 0]
            for submission in newest_first:
                if submission.unlisted_lists:
                    submission.unlisted_lists -= 1
                else:
                    submission.pending_lists = max(submission.pending_lists - 1, 0)
        self._json(record, {"submissions": listed, "nextPageToken": ""})

    def _api_GetSubmission(self, record: RecordedRequest, payload: dict, user: str) -> None:
        ref = int(payload.get("ref", 0))
        for submission in self.standin.submissions:
            if submission.ref == ref:
                self._json(record, _submission_json(submission, user))
                return
        self._error(record, 404, f"Submission {ref} not found")

    def _api_GetSubmissionLimits(self, record: RecordedRequest, payload: dict, user: str) -> None:
        if not self._competition_ok(record, payload):
            return
        used = len(self.standin.submissions)
        allowed = max(self.standin.submissions_allowed_per_day - used, 0)
        self._json(record, {"numToday": used, "numTotal": used, "numAllowedNow": allowed, "limitedByTotal": False})

    # --- the data URL -------------------------------------------------------------------------

    def _data(self, record: RecordedRequest) -> None:
        standin = self.standin
        name = record.path[len(DATA_PREFIX) :]
        if name != f"{standin.competition}.zip":
            self._error(record, 404, f"no such object: {name}")
            return
        body = standin.zip_bytes
        total = len(body)
        headers = {
            "Content-Type": "application/zip",
            "Accept-Ranges": "bytes",
            "ETag": standin.etag,
            "Last-Modified": standin.last_modified_header,
        }
        status, start, end = 200, 0, total  # end exclusive
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range in (standin.etag, standin.last_modified_header)):
            parsed = _parse_range(wanted, total)
            if parsed is None:
                self._send(record, 416, b"", {"Content-Range": f"bytes */{total}"})
                return
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        drop = standin._take_drop()
        if drop is not None:
            self._drop(record, status, headers, body[start:end], drop.after_bytes)
            return
        self._send(record, status, body[start:end], headers)

    def _drop(self, record: RecordedRequest, status: int, headers: dict, body: bytes, after_bytes: int | None) -> None:
        """Promise the whole body, send part of it, then close the socket: a connection dropped mid-transfer."""
        self.close_connection = True
        record.dropped = True
        if after_bytes is not None:
            record.status = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:after_bytes])
            self.wfile.flush()
        with contextlib.suppress(OSError):  # the client may have closed first
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- the submission upload ----------------------------------------------------------------

    def _upload(self, record: RecordedRequest) -> None:
        blob_token = record.path[len(UPLOAD_PREFIX) :]
        upload = self.standin.uploads.get(blob_token)
        if upload is None:
            self._error(record, 404, "upload URL expired or unknown")
            return
        if upload["content_length"] and len(record.body) != upload["content_length"]:
            self._error(record, 400, f"expected {upload['content_length']} bytes, got {len(record.body)}")
            return
        upload["content"] = record.body
        self._json(record, {})


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    """`bytes=N-` or `bytes=N-M` -> (start, end exclusive); None when not satisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":  # suffix range: the last N bytes
            start, end = max(total - int(last), 0), total
        else:
            start = int(first)
            end = min(int(last) + 1, total) if last else total
    except ValueError:
        return None
    if start >= total or start >= end:
        return None
    return start, end


def _submission_json(submission: Submission, user: str) -> dict:
    pending = submission.pending_lists > 0
    return {
        "ref": submission.ref,
        "totalBytes": len(submission.content),
        "date": submission.date.isoformat(timespec="milliseconds") + "Z",
        "description": submission.description,
        "errorDescription": "" if pending else submission.error_description,
        "fileName": submission.file_name,
        "publicScore": "" if pending else submission.public_score,
        "privateScore": "" if pending else submission.private_score,
        "status": "PENDING" if pending else submission.status,
        "submittedBy": user,
        "teamName": user,
        "url": f"/submissions/{submission.ref}/{submission.file_name}",
    }
