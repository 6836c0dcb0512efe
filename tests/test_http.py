"""The v1 HTTP API through the FastAPI, Flask and Django adapters.

:class:`TestHttpContract` runs the shipped contract once per adapter; the rest checks what only a
comparison of adapters, a real converter or generated input can show (several pin bugs this
suite once found: deep JSON, Unicode digits, calendar-edge cursors, OPTIONS/TRACE, repeated query
parameters, chunked bodies on Django, two Django apps in one process).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convkit.http.openapi import openapi_bytes
from convkit.service import ConvKit
from convkit.testing.http import (
    ALICE_KEY,
    CONTRACT_TEMPLATES,
    FRAMEWORKS,
    HttpClient,
    HttpContract,
    Response,
    assert_error,
    auth,
    wait_for_job,
)
from convkit.worker import Worker

ClientFactory = Callable[..., HttpClient]

TEMPLATES = Path(__file__).parent / "templates"
GREETING = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}


class TestHttpContract(HttpContract):
    """The contract suite, once per adapter (``http_client`` is parametrized in conftest)."""


def test_test_templates_are_the_contract_templates() -> None:
    """``tests/templates`` holds exactly the templates the contract documents."""
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in TEMPLATES.iterdir()}
    assert on_disk == dict(CONTRACT_TEMPLATES)


# -- the same API from every adapter ---------------------------------------------------------------


def test_openapi_is_byte_identical_across_adapters(
    kit: ConvKit, client_factory: ClientFactory
) -> None:
    """/openapi.json is the very same bytes, with the same type, from all three adapters."""
    answers = [client_factory(fw, kit).get("/api/v1/openapi.json") for fw in FRAMEWORKS]
    assert [r.status for r in answers] == [200, 200, 200]
    assert {r.headers["Content-Type"] for r in answers} == {"application/json"}
    fastapi, flask, django = (r.body for r in answers)
    assert fastapi == flask == django == openapi_bytes()


def _answer(r: Response) -> tuple[int, str, Any, str | None, str | None]:
    return (
        r.status,
        r.media_type,
        r.json(),
        r.headers.get("Allow"),
        r.headers.get("WWW-Authenticate"),
    )


def test_fixed_answers_are_identical_across_adapters(
    kit: ConvKit, client_factory: ClientFactory
) -> None:
    """Requests whose answer holds no job id get the same status, headers and JSON body from
    every adapter (the API is written once)."""
    body = json.dumps(GREETING).encode()
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/api/v1/health", {}, None),
        ("GET", "/api/v1/jobs", {}, None),
        ("GET", "/api/v1/jobs", auth("wrong"), None),
        ("GET", "/api/v1/jobs?limit=0", auth(ALICE_KEY), None),
        ("GET", "/api/v1/jobs?cursor=nope", auth(ALICE_KEY), None),
        ("GET", "/api/v1/nope", {}, None),
        ("PUT", "/api/v1/jobs", auth(ALICE_KEY), None),
        ("GET", "/api/v1/jobs/00000000-0000-4000-8000-000000000000", auth(ALICE_KEY), None),
        ("POST", "/api/v1/jobs", {**auth(ALICE_KEY), "Content-Type": "text/plain"}, body),
        ("POST", "/api/v1/jobs", {**auth(ALICE_KEY), "Content-Type": "application/json"}, b"{oops"),
        ("GET", "/api/v1/templates", auth(ALICE_KEY), None),
    ]
    clients = [client_factory(fw, kit) for fw in FRAMEWORKS]
    for method, path, headers, payload in requests:
        answers = [_answer(c.request(method, path, headers=headers, body=payload)) for c in clients]
        assert answers[0] == answers[1] == answers[2], (method, path, answers)


def test_api_follows_its_mount_point(
    framework: str, kit: ConvKit, client_factory: ClientFactory
) -> None:
    """Mounted under another prefix, ``Location`` and ``result_url`` name that prefix and work."""
    client = client_factory(framework, kit, prefix="/convert/v2")
    r = client.post("/convert/v2/jobs", headers=auth(ALICE_KEY), json=GREETING)
    assert r.status == 202, r.body
    assert r.headers["Location"] == f"/convert/v2/jobs/{r.json()['id']}"
    kit.run_job(r.json()["id"])
    job = client.get(r.headers["Location"], headers=auth(ALICE_KEY)).json()
    assert job["result_url"] == f"/convert/v2/jobs/{job['id']}/result"
    assert client.get(job["result_url"], headers=auth(ALICE_KEY)).body == b"Hello Ada!\n"
    assert client.get("/api/v1/health").status == 404


@pytest.mark.django
def test_django_clients_reuse_the_one_urlconf(kit: ConvKit, client_factory: ClientFactory) -> None:
    """A second DjangoClient, opened after the first closed, serves its own kit."""
    first = client_factory("django", kit)
    assert first.get("/api/v1/health").status == 200
    first.close()
    assert first.get("/api/v1/health").status == 404
    second = client_factory("django", kit, prefix="/other")
    assert second.get("/other/health").status == 200


# -- real LibreOffice, real worker -----------------------------------------------------------------


def _require_soffice() -> None:
    if shutil.which("soffice") or shutil.which("libreoffice"):
        return
    reason = "LibreOffice (soffice) is not on PATH"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.mark.libreoffice
@pytest.mark.slow
def test_html_to_pdf_end_to_end(http_client: HttpClient, kit: ConvKit) -> None:
    """page.html -> pdf through a started Worker and real LibreOffice: the download is a PDF
    whose text holds the submitted data."""
    from pypdf import PdfReader

    _require_soffice()
    payload = {
        "template": "page",
        "format": "pdf",
        "data": {
            "title": "Quarterly Inventory",
            "items": [
                {"name": "Sprocket", "qty": 12},
                {"name": "Flange", "qty": 7},
            ],
        },
    }
    worker = Worker(kit)
    worker.start()
    try:
        r = http_client.post(http_client.url("/jobs"), headers=auth(ALICE_KEY), json=payload)
        assert r.status == 202, r.body
        job = wait_for_job(http_client, r.headers["Location"], key=ALICE_KEY, timeout=180)
    finally:
        worker.stop(grace_s=60)
    assert job["status"] == "succeeded", job
    download = http_client.get(job["result_url"], headers=auth(ALICE_KEY))
    assert download.status == 200
    assert download.body.startswith(b"%PDF")
    assert download.headers["Content-Type"] == "application/pdf"
    assert download.headers["Content-Disposition"] == 'attachment; filename="page.pdf"'
    import io

    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(download.body)).pages)
    assert "Quarterly Inventory" in text
    assert "Sprocket: 12" in text


# -- generated input -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_submit_like = st.fixed_dictionaries(
    {},
    optional={
        "template": _json
        | st.sampled_from(
            ["greeting", "page", "boom", "broken", "hidden", "absent", "../etc/passwd", ""]
        ),
        "format": _json | st.sampled_from(["txt", "PDF", "png", ".pdf", "docx", ""]),
        "data": _json,
        "locale": _json | st.sampled_from(["en_US", "de-DE", "xx", "zz_ZZ", "en_US_POSIX"]),
        "options": _json,
        "extra": _json,
    },
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    _submit_like.map(lambda v: json.dumps(v).encode()),
)


@pytest.mark.parametrize("framework", [pytest.param("flask", marks=pytest.mark.flask)])
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=_bodies,
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain"]
    ),
)
def test_post_jobs_never_answers_5xx(
    http_client: HttpClient, body: bytes, content_type: str
) -> None:
    """Whatever the body of POST /jobs, the answer is a 202 job or a 4xx JSON error."""
    r = http_client.post(
        http_client.url("/jobs"),
        body=body,
        headers={**auth(ALICE_KEY), "Content-Type": content_type},
    )
    if r.status == 202:
        assert r.json()["status"] == "queued"
    else:
        assert 400 <= r.status < 500, (r.status, r.body)
        assert_error(r, r.status)


# -- inputs that once reached a 500 ---------------------------------------------------------------


def test_deeply_nested_body_is_a_4xx(http_client: HttpClient, kit: ConvKit) -> None:
    """A body of 50,000 ``[`` (within MAX_REQUEST_BYTES) is refused as bad JSON, not a 500."""
    r = http_client.post(
        http_client.url("/jobs"),
        body=b"[" * 50_000,
        headers={**auth(ALICE_KEY), "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_json")


def test_deeply_nested_data_is_a_4xx(http_client: HttpClient, kit: ConvKit) -> None:
    """``data`` nested 600 levels deep is refused with a 4xx, not a 500."""
    body = (
        b'{"template": "greeting", "format": "txt", "data": {"x": '
        + b"[" * 600
        + b"]" * 600
        + b"}}"
    )
    r = http_client.post(
        http_client.url("/jobs"),
        body=body,
        headers={**auth(ALICE_KEY), "Content-Type": "application/json"},
    )
    assert 400 <= r.status < 500, (r.status, r.body)


def test_non_ascii_digit_limit_is_422(http_client: HttpClient) -> None:
    """``?limit=²`` (a Unicode digit ``int()`` refuses) is 422 invalid_limit, not a 500."""
    r = http_client.get(http_client.url("/jobs?limit=%C2%B2"), headers=auth(ALICE_KEY))
    assert_error(r, 422, "invalid_limit")


def test_out_of_range_cursor_is_422(http_client: HttpClient) -> None:
    """A cursor whose time cannot be expressed in UTC is 422 invalid_cursor, not a 500."""
    raw = json.dumps(["0001-01-01T00:00:00+01:00", "x"]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = http_client.get(http_client.url(f"/jobs?cursor={cursor}"), headers=auth(ALICE_KEY))
    assert_error(r, 422, "invalid_cursor")


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_any_method_gets_the_api_405(http_client: HttpClient, method: str) -> None:
    """A method no route takes reaches the API: 405 JSON with the API's ``Allow``."""
    r = http_client.request(method, http_client.url("/jobs"), headers=auth(ALICE_KEY))
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST, GET"


def test_repeated_query_parameter_gets_one_answer(
    kit: ConvKit, client_factory: ClientFactory
) -> None:
    """``?limit=2&limit=abc`` gets the same status from every adapter."""
    statuses = {
        fw: client_factory(fw, kit)
        .get("/api/v1/jobs?limit=2&limit=abc", headers=auth(ALICE_KEY))
        .status
        for fw in FRAMEWORKS
    }
    assert len(set(statuses.values())) == 1, statuses


@pytest.mark.django
def test_django_create_wsgi_app_serves_its_own_kit(
    kit: ConvKit, kit_factory: Callable[..., ConvKit]
) -> None:
    """Two ``create_wsgi_app`` calls in one process: each app serves its own kit."""
    from werkzeug.test import Client

    from convkit.adapters.django import create_wsgi_app

    first = Client(create_wsgi_app(kit))
    first.get("/api/v1/health").close()  # the first app has served a request
    other = kit_factory()
    second = Client(create_wsgi_app(other))
    r = second.post("/api/v1/jobs", json=GREETING, headers=auth(ALICE_KEY))
    try:
        assert r.status_code == 202, r.get_data()[:200]
    finally:
        r.close()
    alice = kit.settings.tenant_for(ALICE_KEY)
    assert alice is not None
    assert len(other.list(alice).jobs) == 1
    assert kit.list(alice).jobs == []
