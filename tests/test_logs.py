"""Logs: LOG_LEVEL and LOG_FORMAT, the access log and request ids of every adapter, the job's
fields on every line of its life, a client leaving mid-body, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from convkit import ConvKit
from convkit.errors import ConfigError
from convkit.logs import (
    ContextFilter,
    JsonFormatter,
    configure_logging,
    current_context,
    log_context,
)
from convkit.settings import Settings
from convkit.testing.http import ALICE_KEY, BOB_KEY, HttpClient, auth

ClientFactory = Callable[..., HttpClient]
GREETING = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}


class Capture(logging.Handler):
    """Every record, with the log context as production's handler adds it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        """Every record as production prints it, but the test's own HTTP client's (httpx)."""
        formatter = JsonFormatter()
        return [formatter.format(r) for r in self.records if r.name != "httpx"]

    def access(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == "convkit.access"]


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Everything logged anywhere, at DEBUG, while the test runs."""
    root = logging.getLogger()
    handler, level = Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    alembic = logging.getLogger("alembic").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(alembic)


# -- settings and formats ------------------------------------------------------------------------


def test_log_level_and_format_settings() -> None:
    s = Settings.from_env({"LOG_LEVEL": "debug", "LOG_FORMAT": "TEXT"})
    assert (s.log_level, s.log_format) == ("DEBUG", "text")
    assert (Settings().log_level, Settings().log_format) == ("INFO", "json")
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL must be DEBUG, .* not 'loud'$"):
        Settings.from_env({"LOG_LEVEL": "loud"})
    with pytest.raises(ConfigError, match=r"^LOG_FORMAT must be json or text, not 'xml'$"):
        Settings.from_env({"LOG_FORMAT": "xml"})


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_reads_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    """LOG_FORMAT=text prints ``key=value`` fields; the default is one JSON object a line with
    the log context; LOG_LEVEL=WARNING drops INFO."""
    log = logging.getLogger("convkit.test")
    configure_logging(environ={"LOG_FORMAT": "text"})
    with log_context(job_id="j-1", user_id="acme"):
        log.info("hello", extra={"attempt": 2})
    text = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\S+Z INFO convkit.test hello attempt=2 job_id=j-1 user_id=acme", text)
    configure_logging(environ={})
    with log_context(job_id="j-1", request_id=None):
        log.info("hello")
    line = json.loads(capsys.readouterr().err)
    assert {k: line[k] for k in ("level", "logger", "message", "job_id")} == {
        "level": "info",
        "logger": "convkit.test",
        "message": "hello",
        "job_id": "j-1",
    }
    assert "request_id" not in line  # None values are left out
    configure_logging(environ={"LOG_LEVEL": "WARNING"})
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(x)["message"] for x in capsys.readouterr().err.splitlines()] == ["loud"]
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        configure_logging(environ={"LOG_LEVEL": "chatty"})


def test_log_context_nests_and_restores() -> None:
    """bind() adds to the enclosing context, which is restored whole when it ends."""
    from convkit.logs import bind

    with log_context(request_id="r1"):
        with log_context(job_id="j1"):
            bind(user_id="acme")
            assert current_context() == {"request_id": "r1", "job_id": "j1", "user_id": "acme"}
        assert current_context() == {"request_id": "r1"}
    assert current_context() == {}


# -- the access log and request ids --------------------------------------------------------------


def test_one_access_line_per_request(
    framework: str, kit: ConvKit, client_factory: ClientFactory, captured: Capture
) -> None:
    """Each request logs one INFO line with method, route template, status, duration, tenant
    and request id, the same from every adapter."""
    client = client_factory(framework, kit)
    r = client.post(client.url("/jobs"), headers=auth(ALICE_KEY), json=GREETING)
    job_id = r.json()["id"]
    client.get(client.url(f"/jobs/{job_id}"), headers=auth(ALICE_KEY))
    client.get(client.url("/jobs"), headers=auth("not-a-key"))
    lines = captured.access()
    assert [(x.levelname, x.getMessage()) for x in lines] == [
        ("INFO", "POST /jobs 202"),
        ("INFO", "GET /jobs/{job_id} 200"),
        ("INFO", "GET /jobs 401"),
    ]
    post, get, denied = lines
    assert (post.method, post.route, post.status, post.user_id) == ("POST", "/jobs", 202, "alice")  # type: ignore[attr-defined]
    assert post.duration_s >= 0  # type: ignore[attr-defined]
    assert re.fullmatch(r"[0-9a-f]{32}", post.request_id)  # type: ignore[attr-defined]
    assert get.job_id == job_id  # type: ignore[attr-defined]
    assert not hasattr(denied, "user_id")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.a_b", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("has space", False),
        ("-leading-dash", False),
        ("évian", False),
        ("a\\b", False),
    ],
)
def test_request_id_is_kept_only_when_a_short_safe_token(
    given: str, kept: bool, kit: ConvKit, client_factory: ClientFactory, captured: Capture
) -> None:
    """X-Request-ID comes back as sent when it is a short safe token, else a generated id; on
    every answer, errors and unknown routes included."""
    client = client_factory("flask", kit)
    echoed = []
    for path in ("/health", "/nowhere", "/jobs"):
        r = client.get(client.url(path), headers={"X-Request-ID": given})
        echoed.append(r.headers["X-Request-ID"])
    if kept:
        assert echoed == [given] * 3
    else:
        assert all(re.fullmatch(r"[0-9a-f]{32}", e) for e in echoed)
        assert len(set(echoed)) == 3
    assert [x.request_id for x in captured.access()] == echoed  # type: ignore[attr-defined]


def test_job_fields_on_every_line_of_its_life(
    framework: str, kit: ConvKit, client_factory: ClientFactory, captured: Capture
) -> None:
    """The submit request's id is stored with the job; every line about the job, in the API
    and in the worker, carries job_id, user_id, template and that request id."""
    client = client_factory(framework, kit)
    headers = {**auth(ALICE_KEY), "X-Request-ID": "checkout-7f3a"}
    r = client.post(client.url("/jobs"), headers=headers, json=GREETING)
    job_id = r.json()["id"]
    assert kit.store.get(job_id).request_id == "checkout-7f3a"  # type: ignore[union-attr]
    captured.records.clear()
    kit.run_job(job_id)  # the worker side: no request here, the job carries the id
    worker = list(captured.records)
    assert {r.getMessage() for r in worker} >= {"job started", "job succeeded"}
    client.delete(client.url(f"/jobs/{job_id}"), headers=auth(ALICE_KEY))
    about_job = [r for r in captured.records if getattr(r, "job_id", None) == job_id]
    assert {r.getMessage() for r in about_job} >= {"job started", "job succeeded", "job deleted"}
    for record in [*worker, *about_job]:
        fields = {k: getattr(record, k, None) for k in ("job_id", "user_id", "template")}
        assert fields == {"job_id": job_id, "user_id": "alice", "template": "greeting"}, record
    assert {getattr(r, "request_id", None) for r in worker} == {"checkout-7f3a"}


# -- a client leaving mid-body -------------------------------------------------------------------

_BOUNDARY = "cut-off-boundary"
_MULTIPART = (
    f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="format"\r\n\r\npdf\r\n'
    f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.html"\r\n\r\n'
    "<html><body>"
).encode()


def _cut_off_request(framework: str, kit: ConvKit, content_type: str, partial: bytes) -> int:
    """POST /api/v1/jobs declaring 20,000 bytes and sending ``partial`` before leaving."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", "20000"),
        ("Authorization", f"Bearer {ALICE_KEY}"),
    ]
    if framework == "fastapi":
        return _asgi_cut_off(kit, headers, partial)
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app: Any
    if framework == "flask":
        from convkit.adapters.flask import create_app

        app = create_app(kit)
    else:
        from convkit.adapters.django import create_wsgi_app

        app = create_wsgi_app(kit)
    builder = EnvironBuilder(path="/api/v1/jobs", method="POST", headers=headers)
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ["wsgi.input"] = io.BytesIO(partial)
    environ["CONTENT_TYPE"] = content_type  # the builder made up a boundary of its own
    environ["CONTENT_LENGTH"] = "20000"
    body, status, _ = run_wsgi_app(app, environ)
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return int(status.split()[0])


def _asgi_cut_off(kit: ConvKit, headers: list[tuple[str, str]], partial: bytes) -> int:
    from convkit.adapters.fastapi import create_app

    app = create_app(kit)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": partial, "more_body": True},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/jobs",
        "raw_path": b"/api/v1/jobs",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


@pytest.mark.parametrize(
    ("content_type", "partial"),
    [
        ("application/json", b'{"template": "greeting", "da'),
        (f"multipart/form-data; boundary={_BOUNDARY}", _MULTIPART),
    ],
    ids=["json", "upload"],
)
def test_client_leaving_mid_body_is_one_info_line(
    framework: str, kit: ConvKit, captured: Capture, content_type: str, partial: bytes
) -> None:
    """A client that disconnects while sending its body is one INFO line (status 499), not an
    error with a traceback; nothing is stored."""
    status = _cut_off_request(framework, kit, content_type, partial)
    assert status == 499
    convkit_lines = [r for r in captured.records if r.name.startswith("convkit")]
    assert [(r.name, r.levelname, r.getMessage()) for r in convkit_lines] == [
        ("convkit.access", "INFO", "client disconnected before sending the whole body")
    ]
    # Django adds its own WARNING for every 4xx answer, as for a 404; nothing is an error.
    assert not [r for r in captured.records if r.levelno >= logging.ERROR or r.exc_info]
    assert kit.store.claimable() == []


# -- no secret in any line -----------------------------------------------------------------------

SECRET_WRONG_KEY = "wrong-key-0f9e8d7c6b5a"
SECRET_METRICS_TOKEN = "metrics-token-1a2b3c4d5e"
SECRET_SIGNATURE = "X-Amz-Signature=5ecre7519na7ure"


def test_no_secret_is_ever_logged(
    framework: str,
    kit_factory: Callable[..., ConvKit],
    client_factory: ClientFactory,
    captured: Capture,
    tmp_path: Path,
) -> None:
    """Jobs through every path of the API (submit, upload, poll, download, delete, errors, bad
    keys, metrics) logged at DEBUG by every library: no key, token or signature appears."""
    from tests.test_uploads import HTML, multipart

    kit = kit_factory(metrics_token=SECRET_METRICS_TOKEN)
    client = client_factory(framework, kit)
    url = client.url
    alice, bob = auth(ALICE_KEY), {"X-API-Key": BOB_KEY}
    r = client.post(url("/jobs"), headers={**alice, "Idempotency-Key": "k1"}, json=GREETING)
    job_id = r.json()["id"]
    client.post(url("/jobs"), headers=bob, json={**GREETING, "template": "page"})
    client.post(url("/jobs"), headers=bob, json={"template": "boom", "format": "txt"})
    client.post(url("/jobs"), headers=alice, json={"template": "hidden", "format": "txt"})
    bad_json = {**alice, "Content-Type": "application/json"}
    client.post(url("/jobs"), headers=bad_json, body=b"{not json")
    headers, body = multipart({"format": "pdf"}, ("a.html", HTML))
    upload = client.post(url("/jobs"), headers=headers, body=body).json()["id"]
    for job in kit.store.claimable():
        kit.run_job(job)
    client.get(url(f"/jobs/{job_id}"), headers=alice)
    client.get(url(f"/jobs/{job_id}/result?{SECRET_SIGNATURE}"), headers=alice)
    client.head(url(f"/jobs/{job_id}/result"), headers=alice)
    client.get(url(f"/jobs/{job_id}"), headers=bob)
    client.get(url("/jobs"), headers=auth(SECRET_WRONG_KEY))
    client.get(url("/jobs"), headers={"X-API-Key": SECRET_WRONG_KEY})
    client.get("/metrics", headers=auth(SECRET_WRONG_KEY))
    client.get("/metrics", headers=auth(SECRET_METRICS_TOKEN))
    client.delete(url(f"/jobs/{job_id}"), headers=alice)
    client.delete(url(f"/jobs/{upload}"), headers=alice)
    text = "\n".join(captured.lines())
    assert "POST /jobs 202" in text and "job succeeded" in text  # the log is not empty
    for secret in (ALICE_KEY, BOB_KEY, SECRET_WRONG_KEY, SECRET_METRICS_TOKEN, "5ecre7519na7ure"):
        assert secret not in text, secret
