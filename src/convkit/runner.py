"""The worker side of a job: claim -> produce -> finish, with a lease keeper, the retry decision,
the sweeper and TTL cleanup.

Every step is idempotent, because every broker redelivers: a claim is one conditional update,
an artifact's key is fixed per job, and every finishing transition is fenced by the attempt
number (arq's and rq's job lifecycles; dramatiq's retry policy as a value plus a pure backoff).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import attrs
import pluggy

from convkit.errors import ConvKitError, ValidationError
from convkit.formats import media_type
from convkit.job import Job, JobError, JobResult, JobSource, RetryPolicy, compute_backoff
from convkit.logs import log_context
from convkit.pipeline import ConverterTable, EngineTable, converted
from convkit.ports import Clock, Converter, JobStore, Queue, Storage, TemplateSource
from convkit.settings import Settings
from convkit.templating.scope import MAX_IMAGE_BYTES

__all__ = ["Runner", "call_event", "job_prefix", "log_fields"]

log = logging.getLogger("convkit.runner")


def job_prefix(job: Job) -> str:
    """The storage folder of a job's files: ``<tenant>/<job-id>``."""
    return f"{job.tenant}/{job.id}"


def log_fields(job: Job) -> dict[str, Any]:
    """The fields every job log line carries (``user_id`` is the runbook's name for tenant;
    ``request_id`` when the job came through the HTTP API)."""
    fields: dict[str, Any] = {"job_id": job.id, "user_id": job.tenant, "template": job.template}
    if job.request_id is not None:
        fields["request_id"] = job.request_id
    return fields


def call_event(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> None:
    """Call the lifecycle hook ``name``; a broken plugin is logged, never fails a job."""
    try:
        getattr(pm.hook, name)(**kwargs)
    except Exception:
        log.exception("plugin hook %s raised", name)


@attrs.define
class _LeaseKeeper:
    """Renews a running job's lease every third of its length while the job runs."""

    store: JobStore
    job: Job
    lease_s: float
    lost: bool = False
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> _LeaseKeeper:
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{self.job.id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.store.heartbeat(self.job.id, self.job.attempts, lease_s=self.lease_s):
                    self.lost = True
                    return
            except Exception:  # a database blip: try again next beat, the lease has slack
                log.warning("lease renewal failed", extra={"job_id": self.job.id}, exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@attrs.define(eq=False)  # hashed by identity: one job may run twice here after a takeover
class _Attempt:
    """One attempt running in this process. Its lock orders the attempt's finishing transition
    against a hand-back: after :meth:`Runner.release_running` released it, the attempt records
    no outcome (the release gave the attempt number back, so the next claim reuses it and a
    late ``fail`` would otherwise pass the store's fence)."""

    job: Job
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    released: bool = False
    finished: bool = False


@attrs.define
class Runner:
    """Runs jobs by id against one instance's backends. Safe to call from many threads and many
    processes at once: the job store's conditional updates decide who holds a job."""

    settings: Settings
    pm: pluggy.PluginManager
    store: JobStore
    storage: Storage
    queue: Queue
    templates: TemplateSource
    engines: EngineTable
    converters: ConverterTable
    retry: RetryPolicy
    clock: Clock
    _running: set[_Attempt] = attrs.field(factory=set, init=False)
    _cond: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _handed_back: list[str] = attrs.field(factory=list, init=False)

    # -- one attempt ---------------------------------------------------------------------------
    def run_job(self, job_id: str) -> Job | None:
        """Claim ``job_id`` and run one attempt. Safe to call for any id, any number of times:
        a job someone else holds, or that is finished, is left alone (returns None). After
        :meth:`release_running`, a claimed job is handed straight back (returns None)."""
        claiming = time.monotonic()
        job = self.store.claim(job_id, lease_s=self.settings.job_lease_seconds)
        if job is None:
            return None
        call_event(
            self.pm,
            "phase_finished",
            job=job,
            phase="claim",
            duration_s=time.monotonic() - claiming,
        )
        att = _Attempt(job)
        with self._cond:
            stopping = self._stopping
            if not stopping:
                self._running.add(att)
        if stopping:
            self._hand_back(att)
            return None
        try:
            # Every line logged while the attempt runs carries the job's fields.
            with log_context(**log_fields(job)):
                return self._run_attempt(att)
        finally:
            with self._cond:
                self._running.discard(att)
                self._cond.notify_all()

    def _run_attempt(self, att: _Attempt) -> Job | None:
        job = att.job
        fields = log_fields(job)
        log.info("job started", extra={**fields, "attempt": job.attempts})
        call_event(self.pm, "job_started", job=job)
        started = time.monotonic()
        error: JobError
        retryable: bool
        with _LeaseKeeper(self.store, job, self.settings.job_lease_seconds):
            try:
                result = self.produce(job)
            except ConvKitError as exc:
                error, retryable = JobError(exc.code, exc.message), exc.retryable
            except Exception as exc:
                if not att.released:  # a handed-back attempt's work was killed on purpose
                    log.exception("job crashed", extra=fields)
                error = JobError("internal_error", f"{type(exc).__name__}: {exc}")
                retryable = True
            else:
                return self._finish_success(att, result, time.monotonic() - started)
        return self._finish_failure(att, error, retryable)

    def _commit(self, att: _Attempt, transition: Callable[[], bool]) -> bool:
        """Run the attempt's finishing ``transition`` unless the attempt was handed back."""
        with att.lock:
            if att.released:
                log.info("job outcome dropped: handed back", extra=log_fields(att.job))
                return False
            att.finished = True
            return transition()

    def _finish_success(self, att: _Attempt, result: JobResult, duration: float) -> Job | None:
        job = att.job
        if not self._commit(att, lambda: self.store.succeed(job.id, job.attempts, result)):
            if att.released:
                return None
            # Fenced out: the job was deleted meanwhile, or our lease was taken over. Only a
            # deleted job's artifact must go; a newer attempt writes the same key itself.
            if self.store.get(job.id) is None:
                self.storage.delete_prefix(job_prefix(job))
            log.warning("job outcome discarded (lease lost or job deleted)", extra=log_fields(job))
            return None
        if job.spec.source is not None and not self.settings.keep_uploads:
            # The result is committed, so the upload has done its work. Failing to delete it
            # only keeps it until the job is deleted (purge removes the whole prefix).
            try:
                self.storage.delete(job.spec.source.key)
            except Exception:
                log.warning("uploaded source not deleted", extra=log_fields(job), exc_info=True)
        done = self.store.get(job.id) or job
        log.info(
            "job succeeded",
            extra={**log_fields(done), "attempt": job.attempts, "duration_s": round(duration, 3)},
        )
        call_event(self.pm, "job_succeeded", job=done, duration_s=duration)
        return done

    def _finish_failure(self, att: _Attempt, error: JobError, retryable: bool) -> Job | None:
        job = att.job
        will_retry = retryable and job.attempts < job.max_attempts
        delay = compute_backoff(job.attempts, self.retry) if will_retry else 0.0
        ok = self._commit(
            att,
            lambda: (
                self.store.requeue(job.id, job.attempts, error, delay_s=delay)
                if will_retry
                else self.store.fail(job.id, job.attempts, error)
            ),
        )
        if not ok:
            return None
        if will_retry:
            self._enqueue_retry(job.id, delay)
        log.warning(
            "job attempt failed" if will_retry else "job failed",
            extra={
                **log_fields(job),
                "attempt": job.attempts,
                "error_code": error.code,
                "error_message": error.message,
            },
        )
        call_event(self.pm, "job_failed", job=job, error=error, will_retry=will_retry)
        return self.store.get(job.id)

    def _enqueue_retry(self, job_id: str, delay: float) -> None:
        # The row already says queued with a not-before time: a failed enqueue only delays
        # the retry until the sweeper finds it.
        try:
            self.queue.enqueue(job_id, delay_s=delay)
        except Exception:
            log.warning("re-enqueue failed", extra={"job_id": job_id}, exc_info=True)

    # -- stopping ------------------------------------------------------------------------------
    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no attempt runs in this process; False if some
        still run then."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, max(0.0, timeout))

    def release_running(self) -> list[str]:
        """Hand back every attempt running in this process, and every one claimed from now on,
        with :meth:`JobStore.release` (queued again, the attempt not counted, claimable at once
        by another worker). A handed-back attempt records no outcome whatever its work does
        next: the caller stops that work (``kit.converters.shutdown()`` kills LibreOffice).
        For graceful stops, once the grace is over; returns the ids handed back."""
        with self._cond:
            self._stopping = True
            running = list(self._running)
        return [att.job.id for att in running if self._hand_back(att)]

    def handed_back(self) -> list[str]:
        """Ids of every job handed back since :meth:`release_running`: those running then, and
        those claimed afterwards (whose queue message was consumed; a queue that does not
        redeliver them needs them published again)."""
        with self._cond:
            return list(self._handed_back)

    def _hand_back(self, att: _Attempt) -> bool:
        with att.lock:
            if att.finished:
                return False
            att.released = True
        try:
            ok = self.store.release(att.job.id, att.job.attempts)
        except Exception:  # the database is down: the lease expires and the sweeper recovers it
            log.warning("job hand-back failed", extra=log_fields(att.job), exc_info=True)
            return False
        if ok:
            log.info("job handed back", extra={**log_fields(att.job), "attempt": att.job.attempts})
            with self._cond:
                self._handed_back.append(att.job.id)
        return ok

    @contextlib.contextmanager
    def _phase(self, job: Job, phase: str) -> Iterator[None]:
        """Time one step of an attempt for the ``phase_finished`` event (metrics, tracing)."""
        started = time.monotonic()
        try:
            yield
        finally:
            duration = time.monotonic() - started
            call_event(self.pm, "phase_finished", job=job, phase=phase, duration_s=duration)

    # -- producing the artifact ----------------------------------------------------------------
    def produce(self, job: Job) -> JobResult:
        """Render (or fetch the upload), convert if needed, store. Idempotent: the key is fixed
        per job, and storage writes are atomic."""
        if job.spec.source is not None:
            return self._produce_upload(job, job.spec.source)
        if job.template is None:
            raise ValidationError(
                "a job needs a template or an uploaded document", code="invalid_job"
            )
        template = self.templates.load(job.template)
        with self._phase(job, "render"):
            doc = self.engines.render(
                template,
                job.spec.data,
                locale=job.spec.locale,
                options=job.spec.options,
                image_loader=self._image_loader(job.tenant),
            )
        filename = f"{job.template}.{job.format}"
        key = f"{job_prefix(job)}/{filename}"
        if doc.format == job.format:
            with self._phase(job, "store"):
                size = self.storage.put(key, doc.content)
        else:
            # The converter table may have changed since submission: 422 again, not a crash.
            converter = self.converters.require(doc.format, job.format)
            size = self._convert_and_store(job, converter, doc.content, doc.format, key)
        return JobResult(key=key, filename=filename, media_type=media_type(job.format), size=size)

    def _image_loader(self, tenant: str) -> Callable[[str], bytes]:
        """Reads ``{"$image": {"storage_key": ...}}`` images from storage, only under the
        tenant's own prefix: another tenant's key reads as missing (no enumeration)."""

        def load(key: str) -> bytes:
            if not key.startswith(f"{tenant}/"):
                raise FileNotFoundError(key)
            with self.storage.open(key) as fh:
                return fh.read(MAX_IMAGE_BYTES + 1)  # the parser refuses anything larger

        return load

    def _produce_upload(self, job: Job, source: JobSource) -> JobResult:
        converter = self.converters.require(source.format, job.format)
        filename = f"{Path(source.filename).stem or 'document'}.{job.format}"
        key = f"{job_prefix(job)}/{_key_name(filename, job.format)}"
        try:
            fh = self.storage.open(source.key)
        except FileNotFoundError:
            raise ValidationError("the uploaded document is gone", code="source_missing") from None
        with fh:
            size = self._convert_and_store(job, converter, fh, source.format, key)
        return JobResult(key=key, filename=filename, media_type=media_type(job.format), size=size)

    def _convert_and_store(
        self, job: Job, converter: Converter, src: bytes | IO[bytes], source_format: str, key: str
    ) -> int:
        with contextlib.ExitStack() as stack:
            with self._phase(job, "convert"):
                out = stack.enter_context(
                    converted(
                        converter,
                        src,
                        source_format=source_format,
                        target_format=job.format,
                        options=job.spec.options,
                        locale=job.spec.locale,
                    )
                )
            with self._phase(job, "store"):
                return self.storage.put_file(key, out)

    # -- maintenance ---------------------------------------------------------------------------
    def sweep(self) -> int:
        """Re-enqueue jobs nobody holds (queued, or running with an expired lease) and fail the
        ones whose worker died on their last attempt. Returns how many ids were enqueued.

        In front of a queue that ``redelivers`` (Redis Streams, Celery), a queued job is
        re-enqueued only once it has been due for ``JOB_LEASE_SECONDS``: the broker holds the
        fresher ones."""
        for job in self.store.exhausted():
            error = JobError(
                "worker_lost", "the worker running this job stopped on its last attempt"
            )
            if self.store.fail(job.id, job.attempts, error, lease_expired=True):
                log.warning("job failed", extra={**log_fields(job), "error_code": error.code})
                call_event(self.pm, "job_failed", job=job, error=error, will_retry=False)
        due_before = None
        if self.queue.redelivers:
            # The broker keeps every job it was given and hands it out again when a consumer
            # dies; re-publishing all queued jobs each round would only pile up duplicates.
            # A job due for longer than a lease without being claimed has likely lost its
            # message (a broker restarted empty): re-enqueue those.
            due_before = self.clock() - timedelta(seconds=self.settings.job_lease_seconds)
        ids = self.store.claimable(due_before=due_before)
        for job_id in ids:
            self.queue.enqueue(job_id)
        return len(ids)

    def cleanup(self) -> int:
        """Delete artifacts and rows older than ``FILE_TTL_HOURS``; return how many jobs."""
        ttl = self.settings.file_ttl_hours
        if ttl <= 0:
            return 0
        before = self.clock() - timedelta(hours=ttl)
        count = 0
        while batch := self.store.expired(before, limit=100):
            for job in batch:
                self.purge(job)
                count += 1
        return count

    def purge(self, job: Job) -> None:
        """Delete a job's files and row, safe against a worker finishing meanwhile."""
        # Artifacts, row, artifacts again: a worker finishing between the first two steps
        # stores its result while the row still exists; the second pass removes it, and a
        # worker finishing after the row is gone is fenced out and removes its own.
        self.storage.delete_prefix(job_prefix(job))
        deleted = self.store.delete(job.id)
        self.storage.delete_prefix(job_prefix(job))
        if deleted:
            log.info("job deleted", extra=log_fields(job))
            call_event(self.pm, "job_deleted", job=job)


def _key_name(filename: str, fmt: str) -> str:
    """A storage-key-safe file name for an upload's result (the download keeps the client's)."""
    key_name = re.sub(r"[^A-Za-z0-9._@+=-]", "_", filename).lstrip("._-") or "document"
    suffix = f".{fmt}"
    if len(key_name) > 200:  # a key segment holds at most 200 characters
        key_name = key_name[: 200 - len(suffix)] + suffix
    if key_name == f"source.{fmt}":  # never overwrite the upload with its result
        key_name = f"result.{fmt}"
    return key_name
