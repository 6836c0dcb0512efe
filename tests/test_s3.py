"""S3 through s3fs against moto's server: multipart uploads that leave no parts behind,
readiness on a fresh prefix, STORAGE_OPTIONS, signed result URLs, upload clean-up, and
`convkit serve` / `convkit doctor` configured from the environment alone."""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from convkit.backends.storages.fsspec import FsspecStorage, create_fsspec_storage
from convkit.errors import ConfigError, ServiceUnavailable, StorageError
from convkit.job import JobSpec, JobState
from convkit.service import ConvKit
from convkit.settings import Settings, Tenant
from convkit.testing.http import make_client
from convkit.testing.storage import FailingStream
from tests.conftest import S3_BUCKET, s3_client
from tests.test_restart import _free_port

#: s3fs's smallest part size: makes a 12 MB artifact a three-part upload.
SMALL_PARTS = {"default_block_size": 5 * 2**20}
BIG = 12 * 2**20
SECRET = "convkit-test-secret"
GREETING = JobSpec(template="greeting", format="txt", data={"name": "Ada"})
HTML = b"<html><body><h1>Uploaded</h1></body></html>"


def storage_on(s3_options: dict[str, Any], prefix: str = "artifacts", **extra: Any) -> Any:
    return create_fsspec_storage(
        f"s3://{S3_BUCKET}/{prefix}", Settings(storage_options={**s3_options, **extra})
    )


def spy(
    monkeypatch: pytest.MonkeyPatch, storage: FsspecStorage, *, fail: str | None = None
) -> list[str]:
    """Record the S3 calls s3fs's file objects make; with ``fail``, the second and later calls
    of that name raise ConnectionError (an injected network fault mid-upload)."""
    calls: list[str] = []
    real = storage.fs.call_s3

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if method == fail and calls.count(method) > 1:
            raise ConnectionError(f"injected fault in {method}")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(storage.fs, "call_s3", call)
    return calls


def pending_uploads(s3_options: dict[str, Any]) -> list[Any]:
    """Multipart uploads S3 holds for the bucket, asked behind s3fs's back."""
    found = s3_client(s3_options).list_multipart_uploads(Bucket=S3_BUCKET)
    return list(found.get("Uploads", []))


# --------------------------------------------------------------------------------------------------
# Multipart uploads


def test_large_artifact_goes_up_in_parts(
    s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MB artifact is a multipart upload of 5 MB parts and reads back intact."""
    storage = storage_on(s3_options, **SMALL_PARTS)
    calls = spy(monkeypatch, storage)
    payload = os.urandom(BIG)
    assert storage.put("t/job1/big.pdf", io.BytesIO(payload)) == BIG
    assert calls.count("upload_part") == 3
    assert "complete_multipart_upload" in calls
    assert storage.read("t/job1/big.pdf") == payload
    assert pending_uploads(s3_options) == []


def test_source_failing_mid_upload_leaves_no_parts(
    s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source stream breaks after two parts went up: the multipart upload is aborted,
    never completed, and neither the key nor any part remains."""
    storage = storage_on(s3_options, **SMALL_PARTS)
    calls = spy(monkeypatch, storage)
    with pytest.raises((StorageError, ConnectionResetError)):
        storage.put("t/job1/big.pdf", io.BufferedReader(FailingStream(BIG)))
    assert calls.count("upload_part") >= 2, calls
    assert "complete_multipart_upload" not in calls
    assert pending_uploads(s3_options) == []
    assert not storage.exists("t/job1/big.pdf")
    assert storage.list("t") == []


def test_s3_failing_mid_upload_leaves_no_parts(
    s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 stops taking parts after the first one: the put fails with StorageError and the
    multipart upload is aborted, so no part is billed forever."""
    storage = storage_on(s3_options, **SMALL_PARTS)
    storage.put("t/job1/big.pdf", b"previous")
    spy(monkeypatch, storage, fail="upload_part")
    with pytest.raises(StorageError):
        storage.put("t/job1/big.pdf", io.BytesIO(os.urandom(BIG)))
    assert pending_uploads(s3_options) == []
    assert storage.read("t/job1/big.pdf") == b"previous"


# --------------------------------------------------------------------------------------------------
# Readiness, options, credentials


def test_readiness_passes_on_a_fresh_prefix(s3_options: dict[str, Any]) -> None:
    """A prefix nothing was ever written under is ready, and checking leaves no object."""
    storage = storage_on(s3_options, "never/used")
    storage.check()
    listed = s3_client(s3_options).list_objects_v2(Bucket=S3_BUCKET)
    assert listed["KeyCount"] == 0


def test_readiness_fails_without_the_bucket(s3_options: dict[str, Any]) -> None:
    """A bucket that does not exist is 'storage unreachable', not a crash."""
    storage = create_fsspec_storage(
        "s3://no-such-bucket/prefix", Settings(storage_options=s3_options)
    )
    with pytest.raises(ServiceUnavailable, match="storage unreachable"):
        storage.check()


def test_storage_options_from_the_environment(s3_options: dict[str, Any]) -> None:
    """STORAGE_URL and STORAGE_OPTIONS (JSON) are all it takes to reach a MinIO-like server."""
    settings = Settings.from_env(
        {"STORAGE_URL": f"s3://{S3_BUCKET}/env", "STORAGE_OPTIONS": json.dumps(s3_options)}
    )
    storage = create_fsspec_storage(settings.storage_url, settings)
    storage.put("t/a", b"via env")
    body = s3_client(s3_options).get_object(Bucket=S3_BUCKET, Key="env/t/a")["Body"]
    assert body.read() == b"via env"
    assert type(storage).signed_urls and not type(storage).atomic_move


def test_credentials_in_the_url_are_refused_without_showing_them() -> None:
    """s3fs would take ``key:secret@`` as part of the bucket name: refuse it, redacted."""
    with pytest.raises(ConfigError) as info:
        create_fsspec_storage(f"s3://AKIDEXAMPLE:{SECRET}@bucket/prefix", Settings())
    assert "STORAGE_OPTIONS" in info.value.message
    assert SECRET not in info.value.message and "AKIDEXAMPLE" not in info.value.message


def test_local_folder_declares_atomic_move(tmp_path: Path) -> None:
    """A local folder renames atomically and cannot sign URLs."""
    storage = create_fsspec_storage(str(tmp_path / "s"), Settings())
    assert type(storage).atomic_move and not type(storage).signed_urls


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STORAGE_OPTIONS": '{"secret": "abc"'}, "STORAGE_OPTIONS"),
        ({"STORAGE_OPTIONS": '["abc"]'}, "STORAGE_OPTIONS"),
        ({"KEEP_UPLOADS": "maybe"}, "KEEP_UPLOADS"),
        ({"RESULT_URL_MODE": "proxy"}, "RESULT_URL_MODE"),
        ({"RESULT_URL_TTL_SECONDS": "0"}, "RESULT_URL_TTL_SECONDS"),
        ({"RESULT_URL_TTL_SECONDS": "700000"}, "RESULT_URL_TTL_SECONDS"),
        ({"STARTUP_WAIT_SECONDS": "-1"}, "STARTUP_WAIT_SECONDS"),
    ],
)
def test_bad_settings_are_one_line_errors(env: dict[str, str], variable: str) -> None:
    """Each bad value stops start-up with one line naming the variable (never its value for
    STORAGE_OPTIONS, which holds secrets)."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.message.startswith(variable)
    assert "\n" not in info.value.message
    assert "abc" not in info.value.message


def test_settings_defaults_and_values() -> None:
    """Defaults: stream results for 300 s URLs, uploads dropped, 60 s start-up wait."""
    default = Settings.from_env({})
    assert (default.result_url_mode, default.result_url_ttl_seconds) == ("stream", 300)
    assert (default.keep_uploads, default.startup_wait_seconds, default.storage_options) == (
        False,
        60,
        {},
    )
    s = Settings.from_env(
        {
            "STORAGE_OPTIONS": '{"anon": true}',
            "KEEP_UPLOADS": "true",
            "RESULT_URL_MODE": "Redirect",
            "RESULT_URL_TTL_SECONDS": "60",
            "STARTUP_WAIT_SECONDS": "0",
        }
    )
    assert (s.storage_options, s.keep_uploads, s.result_url_mode) == (
        {"anon": True},
        True,
        "redirect",
    )
    assert (s.result_url_ttl_seconds, s.startup_wait_seconds) == (60, 0)
    assert "anon" not in repr(s), "storage options may hold secrets: never in repr"


# --------------------------------------------------------------------------------------------------
# Signed result URLs and upload clean-up through a ConvKit on S3


@pytest.fixture
def s3_kit(
    tmp_path: Path, s3_options: dict[str, Any], templates_dir: Path
) -> Iterator[Callable[..., ConvKit]]:
    kits: list[ConvKit] = []

    def build(**overrides: Any) -> ConvKit:
        settings = Settings(
            **{
                "api_keys": {"k": Tenant("alice")},
                "database_url": f"sqlite:///{tmp_path / f'jobs-{len(kits)}.db'}",
                "storage_url": f"s3://{S3_BUCKET}/kit",
                "storage_options": s3_options,
                "templates_dir": str(templates_dir),
                **overrides,
            }
        )
        kit = ConvKit.from_settings(settings, migrate=True)
        kits.append(kit)
        return kit

    yield build
    for kit in kits:
        kit.close()


def test_redirect_mode_is_refused_on_a_local_folder(tmp_path: Path) -> None:
    """RESULT_URL_MODE=redirect on storage that cannot sign stops start-up, in one line."""
    settings = Settings(
        result_url_mode="redirect",
        storage_url=str(tmp_path / "s"),
        database_url=f"sqlite:///{tmp_path / 'j.db'}",
    )
    with pytest.raises(ConfigError, match="RESULT_URL_MODE=redirect") as info:
        ConvKit.from_settings(settings)
    assert "\n" not in info.value.message


def test_result_redirects_to_a_working_s3_url(s3_kit: Callable[..., ConvKit]) -> None:
    """In redirect mode the API answers 307 with a presigned S3 URL that plain urllib reads
    the artifact from, with no API key; the URL expires after RESULT_URL_TTL_SECONDS."""
    kit = s3_kit(result_url_mode="redirect", result_url_ttl_seconds=90)
    tenant = kit.settings.tenant_for("k")
    assert tenant is not None
    job, _ = kit.submit(tenant, GREETING)
    kit.run_job(job.id)
    with make_client("flask", kit) as client:
        r = client.get(client.url(f"/jobs/{job.id}/result"), headers={"X-API-Key": "k"})
    assert r.status == 307, r.body
    location = r.headers["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["90"]
    with urllib.request.urlopen(location, timeout=30) as response:  # noqa: S310  # moto's URL
        assert response.read() == b"Hello Ada!\n"


@pytest.mark.libreoffice
@pytest.mark.parametrize("keep", [False, True])
def test_upload_is_deleted_once_its_job_succeeded(
    s3_kit: Callable[..., ConvKit], s3_options: dict[str, Any], keep: bool
) -> None:
    """An upload job's source goes once the result is stored; with KEEP_UPLOADS it stays
    beside the result until the job is deleted."""
    kit = s3_kit(keep_uploads=keep)
    tenant = kit.settings.tenant_for("k")
    assert tenant is not None
    job, _ = kit.submit_upload(tenant, io.BytesIO(HTML), filename="a.html", format="pdf")
    assert job.spec.source is not None
    done = kit.run_job(job.id)
    assert done is not None and done.status is JobState.SUCCEEDED, done
    expected = sorted([f"alice/{job.id}/a.pdf", *([job.spec.source.key] if keep else [])])
    assert kit.storage.list(f"alice/{job.id}") == expected
    kit.delete(tenant, job.id)
    assert kit.storage.list("alice") == []


# --------------------------------------------------------------------------------------------------
# `convkit serve` and `convkit doctor` on S3, configured by the environment alone


def _env(tmp_path: Path, s3_options: dict[str, Any], templates_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "API_KEY": "e2e-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "STORAGE_URL": f"s3://{S3_BUCKET}/fresh-prefix",
        "STORAGE_OPTIONS": json.dumps(s3_options),
        "TEMPLATES_DIR": str(templates_dir),
        "RESULT_URL_MODE": "redirect",
        "WORKER_THREADS": "1",
    }


def _json(port: int, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer e2e-key", "Content-Type": "application/json"}
    conn.request(method, f"/api/v1{path}", json.dumps(body) if body else None, headers)
    try:
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null"), response.headers
    finally:
        conn.close()


@pytest.mark.slow
def test_serve_on_s3_from_the_environment(
    tmp_path: Path, s3_options: dict[str, Any], templates_dir: Path
) -> None:
    """`convkit serve` with STORAGE_URL=s3://bucket/fresh-prefix and STORAGE_OPTIONS: ready at
    once on the empty prefix, a job's artifact lands in S3, the result redirects to a URL that
    serves it, and no credential reaches the logs."""
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "convkit.cli", "serve", "--port", str(port)],
            env=_env(tmp_path, s3_options, templates_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, ready, _ = _json(port, "GET", "/ready")
                    break
                except OSError:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            assert status == 200, ready
            assert ready["checks"]["storage"] == "ok"
            status, job, _ = _json(
                port,
                "POST",
                "/jobs",
                {"template": "greeting", "format": "txt", "data": {"name": "Ada"}},
            )
            assert status == 202, job
            while job["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline + 60, job
                time.sleep(0.1)
                _, job, _ = _json(port, "GET", f"/jobs/{job['id']}")
            assert job["status"] == "succeeded", job
            status, _, headers = _json(port, "GET", f"/jobs/{job['id']}/result")
            assert status == 307
            with urllib.request.urlopen(headers["Location"], timeout=30) as r:  # noqa: S310
                assert r.read() == b"Hello Ada!\n"
            key = f"fresh-prefix/default/{job['id']}/greeting.txt"
            assert (
                s3_client(s3_options).head_object(Bucket=S3_BUCKET, Key=key)["ContentLength"] == 11
            )
        finally:
            proc.terminate()
            proc.wait(30)
    assert SECRET not in log.read_text()


@pytest.mark.slow
def test_doctor_never_shows_credentials(
    tmp_path: Path, s3_options: dict[str, Any], templates_dir: Path
) -> None:
    """`convkit doctor` on S3 shows the storage URL and its health, never the secret from
    STORAGE_OPTIONS; a URL carrying credentials is one redacted line and exit 2."""
    env = {**_env(tmp_path, s3_options, templates_dir), "RESULT_URL_MODE": "stream"}
    ok = subprocess.run(
        [sys.executable, "-m", "convkit.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert f"STORAGE_URL: s3://{S3_BUCKET}/fresh-prefix" in ok.stdout, ok.stdout + ok.stderr
    assert "storage: ok" in ok.stdout, ok.stdout
    assert SECRET not in ok.stdout + ok.stderr
    env["STORAGE_URL"] = f"s3://AKIDEXAMPLE:{SECRET}@{S3_BUCKET}/x"
    bad = subprocess.run(
        [sys.executable, "-m", "convkit.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert SECRET not in bad.stdout + bad.stderr
    assert "AKIDEXAMPLE" not in bad.stdout + bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("convkit: error:")
