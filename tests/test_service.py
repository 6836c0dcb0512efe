"""The ConvKit service: job lifecycle, retries, leases, sweeping, cleanup and lifecycle hooks."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from convkit import ConvKit, JobSpec, JobState, Settings, Tenant, hookimpl
from convkit.backends.jobstores.sql.store import create_job_store
from convkit.backends.queues.inline import InlineQueue
from convkit.backends.storages.memory import MemoryStorage
from convkit.errors import (
    ConversionError,
    ConversionTimeout,
    Forbidden,
    JobNotFinished,
    NotFound,
    ServiceUnavailable,
    ValidationError,
)
from convkit.job import JobError
from convkit.ports import Converter, Queue
from convkit.testing import FakeClock

TENANT = Tenant("acme")
OTHER = Tenant("globex")


class FlakyConverter(Converter):
    """txt -> "upper": upper-cases the text; raises ``errors`` in turn first (an injected fault)."""

    name = "flaky"

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.calls = 0
        self.gate: threading.Event | None = None

    def targets(self, source_format: str) -> frozenset[str]:
        return frozenset({"upper"}) if source_format == "txt" else frozenset()

    def convert(
        self,
        src: Path,
        dst: Path,
        *,
        source_format: str,
        target_format: str,
        options: dict[str, Any] | None = None,
        locale: str | None = None,
    ) -> None:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.errors:
            raise self.errors.pop(0)
        dst.write_bytes(src.read_bytes().upper())


class Recorder:
    """A plugin that records every lifecycle event and offers the flaky converter."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.converter = FlakyConverter()

    @hookimpl
    def register_converters(self) -> list[Converter]:
        return [self.converter]

    @hookimpl
    def job_submitted(self, job: Any) -> None:
        self.events.append(("submitted", job.id, {}))

    @hookimpl
    def job_started(self, job: Any) -> None:
        self.events.append(("started", job.id, {"attempt": job.attempts}))

    @hookimpl
    def job_succeeded(self, job: Any, duration_s: float) -> None:
        self.events.append(("succeeded", job.id, {"duration_s": duration_s}))

    @hookimpl
    def job_failed(self, job: Any, error: JobError, will_retry: bool) -> None:
        self.events.append(("failed", job.id, {"code": error.code, "will_retry": will_retry}))

    @hookimpl
    def job_deleted(self, job: Any) -> None:
        self.events.append(("deleted", job.id, {}))

    def names(self, job_id: str) -> list[str]:
        return [name for name, jid, _ in self.events if jid == job_id]


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "greeting.txt").write_text("Hello {{ name }}!")
    (d / "page.html").write_text("<p>{{ name }}</p>")
    (d / "boom.txt").write_text("{{ 1 // zero }}")
    return d


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def kit(tmp_path: Path, templates: Path, clock: FakeClock, recorder: Recorder) -> Any:
    settings = Settings(
        api_keys={"k1": TENANT, "k2": OTHER},
        templates_dir=str(templates),
        job_lease_seconds=30,
        max_attempts=3,
        file_ttl_hours=1,
    )
    store = create_job_store(f"sqlite:///{tmp_path / 'jobs.db'}", settings, clock=clock)
    store.migrate()
    kit = ConvKit.from_settings(
        settings,
        plugins=[recorder],
        store=store,
        storage=MemoryStorage(),
        queue=InlineQueue(threads=1),
        clock=clock,
    )
    # Retries in these tests are driven by hand, not by timers.
    kit.retry = type(kit.retry)(max_attempts=3, backoff_base_s=3600)
    yield kit
    kit.close()


def submit(kit: ConvKit, template: str = "greeting", fmt: str = "txt", **kw: Any) -> Any:
    job, created = kit.submit(
        TENANT, JobSpec(template=template, format=fmt, data={"name": "Ada"}, **kw)
    )
    assert created
    return job


class TestSubmit:
    def test_validates_and_normalizes(self, kit: ConvKit) -> None:
        """Format is lower-cased and the locale made canonical before the job is stored."""
        job = submit(kit, fmt="TXT", locale="en-us")
        assert (job.format, job.spec.locale, job.status) == ("txt", "en_US", JobState.QUEUED)

    @pytest.mark.parametrize(
        ("spec", "code"),
        [
            (JobSpec("../x", "txt"), "invalid_template_name"),
            (JobSpec("missing", "txt"), "template_not_found"),
            (JobSpec("greeting", "mp3"), "unsupported_format"),
            (JobSpec("greeting", "p d f"), "invalid_format"),
            (JobSpec("greeting", "txt", locale="xx_YY"), "invalid_locale"),
            # Babel would silently substitute these (und -> en_US, Hant -> Hans).
            (JobSpec("greeting", "txt", locale="und"), "invalid_locale"),
            (JobSpec("greeting", "txt", locale="zh_Hant_HK_abcdefgh"), "invalid_locale"),
        ],
    )
    def test_rejects_bad_specs_and_stores_nothing(
        self, kit: ConvKit, spec: JobSpec, code: str
    ) -> None:
        """Each invalid request is a 422 with its own code and leaves no row behind."""
        with pytest.raises(ValidationError) as err:
            kit.submit(TENANT, spec)
        assert err.value.code == code
        assert kit.list(TENANT).jobs == []

    def test_template_not_allowed(self, kit: ConvKit) -> None:
        """A tenant limited to some templates gets 403 for the others."""
        limited = Tenant("acme", frozenset({"page"}))
        with pytest.raises(Forbidden):
            kit.submit(limited, JobSpec("greeting", "txt"))

    def test_queue_down_is_503_and_stores_nothing(self, kit: ConvKit) -> None:
        """While the queue is down, submit answers 503 and keeps no row (runbook)."""
        kit.queue.stop()
        with pytest.raises(ServiceUnavailable):
            kit.submit(TENANT, JobSpec("greeting", "txt"))
        assert kit.list(TENANT).jobs == []

    def test_hook_job_submitted(self, kit: ConvKit, recorder: Recorder) -> None:
        """job_submitted fires once for a new job and not for an idempotent replay."""
        spec = JobSpec("greeting", "txt", data={"name": "Ada"})
        job, _ = kit.submit(TENANT, spec, idempotency_key="k")
        again, created = kit.submit(TENANT, spec, idempotency_key="k")
        assert (again.id, created) == (job.id, False)
        assert recorder.names(job.id) == ["submitted"]


class TestRunJob:
    def test_hook_job_started(self, kit: ConvKit, recorder: Recorder) -> None:
        """job_started fires once per attempt with the attempt number."""
        job = submit(kit)
        kit.run_job(job.id)
        assert ("started", job.id, {"attempt": 1}) in recorder.events

    def test_hook_job_succeeded(self, kit: ConvKit, recorder: Recorder) -> None:
        """A rendered job stores its artifact under <tenant>/<job-id>/ and fires job_succeeded."""
        job = submit(kit)
        done = kit.run_job(job.id)
        assert done is not None and done.status is JobState.SUCCEEDED
        assert done.result is not None
        assert done.result.key == f"acme/{job.id}/greeting.txt"
        assert kit.storage.read(done.result.key) == b"Hello Ada!"
        assert recorder.names(job.id) == ["submitted", "started", "succeeded"]

    def test_conversion_runs_when_formats_differ(self, kit: ConvKit, recorder: Recorder) -> None:
        """The converter runs only when the rendered format is not the requested one."""
        kit.run_job(submit(kit).id)
        assert recorder.converter.calls == 0
        job = submit(kit, fmt="upper")
        done = kit.run_job(job.id)
        assert done is not None and done.result is not None
        assert kit.storage.read(done.result.key) == b"HELLO ADA!"
        assert recorder.converter.calls == 1

    def test_running_a_job_twice_is_harmless(self, kit: ConvKit) -> None:
        """A redelivered message for a finished job does nothing (every broker redelivers)."""
        job = submit(kit)
        assert kit.run_job(job.id) is not None
        assert kit.run_job(job.id) is None
        assert kit.get(TENANT, job.id).attempts == 1

    def test_hook_job_failed(self, kit: ConvKit, recorder: Recorder) -> None:
        """A render error fails the job at once (not retryable) with its code and message."""
        job = submit(kit, template="boom")
        done = kit.run_job(job.id)
        assert done is not None and done.status is JobState.FAILED
        assert done.error is not None and done.error.code == "template_error"
        assert recorder.events[-1] == (
            "failed",
            job.id,
            {"code": "template_error", "will_retry": False},
        )

    def test_retryable_error_requeues_then_succeeds(
        self, kit: ConvKit, recorder: Recorder, clock: FakeClock
    ) -> None:
        """A converter crash requeues the job; the next attempt succeeds."""
        recorder.converter.errors = [ConversionError("soffice crashed")]
        job = submit(kit, fmt="upper")
        after = kit.run_job(job.id)
        assert after is not None and after.status is JobState.QUEUED
        assert after.error is not None and after.error.code == "conversion_failed"
        assert kit.run_job(job.id) is None  # the backoff holds, durably, in the database
        clock.advance(61)
        done = kit.run_job(job.id)
        assert done is not None and done.status is JobState.SUCCEEDED
        assert done.attempts == 2

    def test_attempts_are_bounded(self, kit: ConvKit, recorder: Recorder, clock: FakeClock) -> None:
        """A document that times out on every attempt ends failed after max_attempts."""
        recorder.converter.errors = [ConversionTimeout("stuck") for _ in range(5)]
        job = submit(kit, fmt="upper")
        for _ in range(5):
            kit.run_job(job.id)
            clock.advance(61)
        final = kit.get(TENANT, job.id)
        assert final.status is JobState.FAILED
        assert final.attempts == 3
        assert final.error is not None and final.error.code == "conversion_timeout"

    def test_dead_worker_job_is_taken_over_after_lease(
        self, kit: ConvKit, clock: FakeClock
    ) -> None:
        """A job claimed by a worker that died is claimable again once its lease expires."""
        job = submit(kit)
        assert kit.store.claim(job.id, lease_s=30) is not None  # a worker that then dies
        assert kit.run_job(job.id) is None
        clock.advance(31)
        done = kit.run_job(job.id)
        assert done is not None and done.status is JobState.SUCCEEDED and done.attempts == 2

    def test_sweep_requeues_and_fails_exhausted(
        self, kit: ConvKit, clock: FakeClock, recorder: Recorder
    ) -> None:
        """The sweeper enqueues unheld jobs and fails jobs whose last attempt's worker died."""
        job = submit(kit)
        for _ in range(3):
            assert kit.store.claim(job.id, lease_s=30) is not None
            clock.advance(31)
        waiting = submit(kit)
        assert kit.sweep() == 1  # only `waiting`
        final = kit.get(TENANT, job.id)
        assert final.status is JobState.FAILED
        assert final.error is not None and final.error.code == "worker_lost"
        assert ("failed", job.id, {"code": "worker_lost", "will_retry": False}) in recorder.events
        assert kit.get(TENANT, waiting.id).status is JobState.QUEUED

    def test_delete_while_running_leaves_no_artifact(
        self, kit: ConvKit, recorder: Recorder
    ) -> None:
        """Deleting a running job: the worker's late artifact is removed, no row comes back."""
        recorder.converter.gate = threading.Event()
        job = submit(kit, fmt="upper")
        t = threading.Thread(target=kit.run_job, args=(job.id,))
        t.start()
        while recorder.names(job.id)[-1:] != ["started"]:
            t.join(0.01)
        kit.delete(TENANT, job.id)
        recorder.converter.gate.set()
        t.join()
        assert kit.store.get(job.id) is None
        assert kit.storage.list("acme") == []


class TestReadAndDelete:
    def test_other_tenant_sees_404(self, kit: ConvKit) -> None:
        """Another tenant's job is indistinguishable from a missing one."""
        job = submit(kit)
        with pytest.raises(NotFound):
            kit.get(OTHER, job.id)
        with pytest.raises(NotFound):
            kit.delete(OTHER, job.id)
        assert kit.get(TENANT, job.id).id == job.id

    def test_result_before_success_is_409(self, kit: ConvKit) -> None:
        """open_result is a 409 while the job is queued, and for a failed job."""
        job = submit(kit)
        with pytest.raises(JobNotFinished):
            kit.open_result(TENANT, job.id)
        bad = submit(kit, template="boom")
        kit.run_job(bad.id)
        with pytest.raises(JobNotFinished) as err:
            kit.open_result(TENANT, bad.id)
        assert err.value.code == "job_failed"

    def test_hook_job_deleted(self, kit: ConvKit, recorder: Recorder) -> None:
        """DELETE removes the artifact and the row, and fires job_deleted once."""
        job = submit(kit)
        kit.run_job(job.id)
        _, chunks = kit.open_result(TENANT, job.id)
        assert b"".join(chunks) == b"Hello Ada!"
        kit.delete(TENANT, job.id)
        assert kit.storage.list("acme") == []
        with pytest.raises(NotFound):
            kit.get(TENANT, job.id)
        assert recorder.names(job.id)[-1] == "deleted"

    def test_sweep_leaves_fresh_jobs_to_a_redelivering_broker(
        self, tmp_path: Path, templates: Path, clock: FakeClock
    ) -> None:
        """In front of a queue that redelivers, the sweeper re-enqueues a queued job only once
        it has been due for a lease (its message likely lost), not every job the broker holds;
        a running job whose lease expired is re-enqueued at once."""

        class Broker(Queue):
            name = "broker"
            redelivers = True

            def __init__(self) -> None:
                self.sent: list[str] = []

            def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
                self.sent.append(job_id)

        settings = Settings(
            api_keys={"k1": TENANT}, templates_dir=str(templates), job_lease_seconds=30
        )
        store = create_job_store(f"sqlite:///{tmp_path / 'b.db'}", settings, clock=clock)
        store.migrate()
        broker = Broker()
        kit = ConvKit.from_settings(
            settings, store=store, storage=MemoryStorage(), queue=broker, clock=clock
        )
        try:
            lost = submit(kit)
            clock.advance(31)
            fresh = submit(kit)
            broker.sent.clear()
            assert kit.sweep() == 1 and broker.sent == [lost.id]
            running = submit(kit)
            assert kit.store.claim(running.id, lease_s=5) is not None
            clock.advance(6)
            broker.sent.clear()
            kit.sweep()
            assert set(broker.sent) == {lost.id, running.id}
            assert fresh.id not in broker.sent
        finally:
            kit.close()

    def test_cleanup_removes_only_expired(self, kit: ConvKit, clock: FakeClock) -> None:
        """cleanup deletes rows and artifacts older than FILE_TTL_HOURS, keeps newer ones."""
        old = submit(kit)
        kit.run_job(old.id)
        clock.advance(2 * 3600)
        new = submit(kit)
        kit.run_job(new.id)
        assert kit.cleanup() == 1
        assert [j.id for j in kit.list(TENANT).jobs] == [new.id]
        assert kit.storage.list("acme") == [f"acme/{new.id}/greeting.txt"]

    def test_ready_reports_each_dependency(self, kit: ConvKit) -> None:
        """ready() names every dependency; a stopped queue shows as down."""
        assert set(kit.ready()) == {"database", "queue", "storage", "converter"}
        kit.queue.stop()
        assert kit.ready()["queue"] != "ok"

    def test_template_names_respect_allow_lists(self, kit: ConvKit) -> None:
        """The template list shows only names the tenant may use."""
        assert kit.template_names(TENANT) == ["boom", "greeting", "page"]
        assert kit.template_names(Tenant("x", frozenset({"page"}))) == ["page"]


class TestStorageImages:
    """``{"$image": {"storage_key": ...}}`` in job data reads the tenant's own stored files."""

    @staticmethod
    def _docx_job(kit: ConvKit, templates: Path, key: str) -> Any:
        from convkit.testing.builders.docx import docx, p

        (templates / "logo.docx").write_bytes(docx(p("Logo: {{ logo }}!")))
        job, _ = kit.submit(
            TENANT,
            JobSpec("logo", "docx", data={"logo": {"$image": {"storage_key": key}}}),
        )
        return kit.run_job(job.id)

    def test_own_image_is_embedded(self, kit: ConvKit, templates: Path) -> None:
        """An image the tenant stored is embedded in the rendered document."""
        import io
        import zipfile

        from tests.test_docx import PNG

        kit.storage.put("acme/assets/logo.png", PNG)
        done = self._docx_job(kit, templates, "acme/assets/logo.png")
        assert done is not None and done.status is JobState.SUCCEEDED, done
        assert done.result is not None
        package = zipfile.ZipFile(io.BytesIO(kit.storage.read(done.result.key)))
        media = [n for n in package.namelist() if n.startswith("word/media/")]
        assert [package.read(n) for n in media] == [PNG]

    def test_other_tenants_image_reads_as_missing(self, kit: ConvKit, templates: Path) -> None:
        """Another tenant's key fails the job as if the file did not exist."""
        from tests.test_docx import PNG

        kit.storage.put("globex/assets/logo.png", PNG)
        done = self._docx_job(kit, templates, "globex/assets/logo.png")
        assert done is not None and done.status is JobState.FAILED
        assert done.error is not None and done.error.code == "invalid_rich_content"
        assert "no stored file" in done.error.message
