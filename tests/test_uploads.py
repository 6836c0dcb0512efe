"""Upload conversion jobs (multipart POST /jobs), template introspection and data schemas,
through every adapter."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from convkit.service import ConvKit
from convkit.testing.http import ALICE_KEY, BOB_KEY, HttpClient, assert_error, auth, wait_for_job
from convkit.worker import Worker

BOUNDARY = "convkit-test-boundary"
HTML = (
    b"<html><body><h1>Quarterly upload</h1><p>Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln</p></body></html>"
)


def multipart(
    fields: dict[str, str], file: tuple[str, bytes] | None = None, *, extra: str | None = None
) -> tuple[dict[str, str], bytes]:
    """A multipart/form-data body with text ``fields`` and an optional ``file`` part."""
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    if file is not None:
        filename, content = file
        out.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        out.write(content + b"\r\n")
    if extra is not None:
        out.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{extra}"\r\n\r\nx\r\n'.encode()
        )
    out.write(f"--{BOUNDARY}--\r\n".encode())
    headers = {**auth(ALICE_KEY), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return headers, out.getvalue()


class TestUploadErrors:
    """Bad uploads get a clear 4xx and leave neither a row nor a stored file."""

    @pytest.mark.parametrize(
        ("fields", "file", "status", "code"),
        [
            ({"format": "pdf"}, None, 422, "missing_field"),
            ({}, ("a.html", HTML), 422, "missing_field"),
            ({"format": "mp3"}, ("a.html", HTML), 422, "unsupported_format"),
            ({"format": "pdf"}, ("a.unknownext", HTML), 422, "unsupported_format"),
            ({"format": "pdf"}, ("blob", HTML), 422, "missing_source_format"),
            ({"format": "pdf", "options": "[1]"}, ("a.html", HTML), 422, "invalid_field"),
            ({"format": "pdf", "options": "{oops"}, ("a.html", HTML), 422, "invalid_field"),
            ({"format": "pdf", "locale": "xx_YY"}, ("a.html", HTML), 422, "invalid_locale"),
        ],
    )
    def test_rejected(
        self,
        http_client: HttpClient,
        kit: ConvKit,
        fields: dict[str, str],
        file: tuple[str, bytes] | None,
        status: int,
        code: str,
    ) -> None:
        """Each malformed upload is refused with its own code; nothing is stored."""
        headers, body = multipart(fields, file)
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert_error(r, status, code)
        alice = kit.settings.tenant_for(ALICE_KEY)
        assert alice is not None
        assert kit.list(alice).jobs == []
        assert kit.storage.list(alice.name) == []

    def test_a_file_name_without_suffix_asks_for_source_format(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """`curl -F file=@blob -F format=pdf`: the answer says to send `source_format`, which
        then makes the same upload a job."""
        headers, body = multipart({"format": "pdf"}, ("blob", HTML))
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        error = assert_error(r, 422, "missing_source_format")
        assert error["message"] == (
            "cannot tell the document's format from its file name 'blob': "
            'send source_format (such as "docx")'
        )
        headers, body = multipart({"format": "pdf", "source_format": "html"}, ("blob", HTML))
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert r.status == 202, r.body
        assert kit.storage.list("alice") == [f"alice/{r.json()['id']}/source.html"]

    def test_unknown_field(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A form field convkit does not know is a 422, not silently ignored."""
        headers, body = multipart({"format": "pdf"}, ("a.html", HTML), extra="colour")
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert_error(r, 422, "unknown_field")

    def test_truncated_body_is_refused(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A body cut off before its closing boundary (a client that disconnected mid-upload)
        is a 400, never a job on half a document."""
        headers, body = multipart({"format": "pdf"}, ("a.html", HTML))
        cut = body[: body.index(b"\r\n--" + BOUNDARY.encode() + b"--")]
        r = http_client.post(http_client.url("/jobs"), body=cut, headers=headers)
        assert_error(r, 400, "invalid_form")
        assert kit.storage.list("alice") == []

    def test_deeply_nested_options_are_refused(self, http_client: HttpClient, kit: ConvKit) -> None:
        """Options nested past the JSON depth limit are a 422 and leave no upload behind."""
        deep = "[" * 900 + "]" * 900
        headers, body = multipart(
            {"format": "pdf", "options": '{"x": ' + deep + "}"}, ("a.html", HTML)
        )
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert_error(r, 422, "invalid_field")
        assert kit.storage.list("alice") == []

    def test_long_file_name_keeps_its_suffix(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A 250-character file name is shortened with its suffix kept, and the upload's key
        stays a valid storage key."""
        headers, body = multipart({"format": "pdf"}, ("x" * 250 + ".html", HTML))
        r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert r.status == 202, r.body
        assert kit.storage.list("alice") == [f"alice/{r.json()['id']}/source.html"]

    def test_malformed_multipart(self, http_client: HttpClient) -> None:
        """A body that is not multipart despite its content type is a 400."""
        headers = {**auth(ALICE_KEY), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        r = http_client.post(http_client.url("/jobs"), body=b"garbage", headers=headers)
        assert 400 <= r.status < 500
        assert "error" in r.json()

    def test_too_large_is_413(
        self, kit_factory: Callable[..., ConvKit], client_factory: Callable[..., HttpClient]
    ) -> None:
        """A document over MAX_UPLOAD_BYTES is a 413 and leaves nothing behind."""
        kit = kit_factory(max_upload_bytes=1000)
        client = client_factory("flask", kit)
        headers, body = multipart({"format": "pdf"}, ("a.html", b"x" * 5000))
        r = client.post(client.url("/jobs"), body=body, headers=headers)
        assert_error(r, 413, "payload_too_large")
        alice = kit.settings.tenant_for(ALICE_KEY)
        assert alice is not None
        assert kit.list(alice).jobs == []
        assert kit.storage.list(alice.name) == []


class TestUploads:
    def test_upload_is_stored_and_replayed_idempotently(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """The upload goes through storage under the job's folder; a retried submit with the
        same Idempotency-Key returns the same job and keeps one copy."""
        headers, body = multipart({"format": "pdf", "locale": "de-DE"}, ("Q3 report.html", HTML))
        headers["Idempotency-Key"] = "upload-1"
        first = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert first.status == 202, first.body
        job = first.json()
        assert (job["template"], job["format"], job["locale"]) == (None, "pdf", "de_DE")
        again = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
        assert again.status == 202
        assert again.json()["id"] == job["id"]
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert kit.storage.list("alice") == [f"alice/{job['id']}/source.html"]
        assert kit.storage.read(f"alice/{job['id']}/source.html") == HTML

    def test_delete_removes_the_upload(self, http_client: HttpClient, kit: ConvKit) -> None:
        """DELETE removes the uploaded document with the job."""
        headers, body = multipart({"format": "pdf"}, ("a.html", HTML))
        job = http_client.post(http_client.url("/jobs"), body=body, headers=headers).json()
        r = http_client.delete(http_client.url(f"/jobs/{job['id']}"), headers=auth(ALICE_KEY))
        assert r.status == 204
        assert kit.storage.list("alice") == []

    @pytest.mark.libreoffice
    def test_upload_converts_end_to_end(self, http_client: HttpClient, kit: ConvKit) -> None:
        """An uploaded HTML document becomes a PDF named after the upload, with its text."""
        from pypdf import PdfReader

        worker = Worker(kit)
        worker.start()
        try:
            headers, body = multipart({"format": "pdf"}, ("Q3 report.html", HTML))
            r = http_client.post(http_client.url("/jobs"), body=body, headers=headers)
            assert r.status == 202, r.body
            job = wait_for_job(http_client, r.headers["Location"], key=ALICE_KEY)
            assert job["status"] == "succeeded", job
            pdf = http_client.get(job["result_url"], headers=auth(ALICE_KEY))
        finally:
            worker.stop()
        assert pdf.status == 200
        assert 'filename="Q3 report.pdf"' in pdf.headers["Content-Disposition"]
        text = PdfReader(io.BytesIO(pdf.body)).pages[0].extract_text()
        assert "Quarterly upload" in text
        assert "Grüße aus Köln" in text


class TestTemplateInfo:
    def test_info_lists_engine_formats_and_variables(self, http_client: HttpClient) -> None:
        """GET /templates/{name} tells a client what to send."""
        r = http_client.get(http_client.url("/templates/greeting"), headers=auth(ALICE_KEY))
        assert r.status == 200, r.body
        info = r.json()
        assert (info["name"], info["engine"], info["format"]) == ("greeting", "jinja", "txt")
        assert "txt" in info["formats"] and "pdf" in info["formats"]
        assert info["variables"] == ["name"]
        assert info["schema"] is None

    def test_info_errors(self, http_client: HttpClient) -> None:
        """Unknown is 404, not allowed is 403 (before existence), bad name is 422."""
        r = http_client.get(http_client.url("/templates/absent"), headers=auth(ALICE_KEY))
        assert_error(r, 404, "template_not_found")
        r = http_client.get(http_client.url("/templates/hidden"), headers=auth(ALICE_KEY))
        assert_error(r, 403, "template_not_allowed")
        r = http_client.get(http_client.url("/templates/.env"), headers=auth(ALICE_KEY))
        assert_error(r, 422, "invalid_template_name")
        r = http_client.get(http_client.url("/templates/page"), headers=auth(BOB_KEY))
        assert r.status == 200

    def test_schema_validates_data_at_submission(
        self, http_client: HttpClient, kit: ConvKit, templates_dir: Path
    ) -> None:
        """With greeting.schema.json beside the template, bad data is a 422 naming the path,
        and no job is stored; good data is accepted."""
        schema = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 20}},
        }
        (templates_dir / "greeting.schema.json").write_text(json.dumps(schema))
        bad = {"template": "greeting", "format": "txt", "data": {"name": 42}}
        r = http_client.post(http_client.url("/jobs"), json=bad, headers=auth(ALICE_KEY))
        err = assert_error(r, 422, "invalid_data")
        assert "/name" in err["message"]
        alice = kit.settings.tenant_for(ALICE_KEY)
        assert alice is not None
        assert kit.list(alice).jobs == []
        good = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}
        r = http_client.post(http_client.url("/jobs"), json=good, headers=auth(ALICE_KEY))
        assert r.status == 202
        info = http_client.get(http_client.url("/templates/greeting"), headers=auth(ALICE_KEY))
        assert info.json()["schema"] == schema

    def test_broken_schema_is_a_template_error(
        self, http_client: HttpClient, templates_dir: Path
    ) -> None:
        """A schema file that is not a JSON Schema is reported as the template's problem."""
        (templates_dir / "greeting.schema.json").write_text('{"type": 12}')
        good = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}
        r = http_client.post(http_client.url("/jobs"), json=good, headers=auth(ALICE_KEY))
        err = assert_error(r, 422, "template_error")
        assert "greeting.schema.json" in err["message"]
