"""The ConvKit facade: build an instance from settings, and the client operations (submit,
get, list, delete, open a result, templates, readiness).

Framework-free: the HTTP layer, the CLI and embedding apps all call this one object. The worker
side (claim, produce, finish, retry, sweep, cleanup) is :mod:`convkit.runner`; the render and
convert steps are :mod:`convkit.pipeline`.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import pluggy

from convkit.errors import (
    ConfigError,
    Conflict,
    ConvKitError,
    Forbidden,
    JobNotFinished,
    NotFound,
    ServiceUnavailable,
    TemplateNotFound,
    ValidationError,
)
from convkit.formats import normalize_format
from convkit.job import (
    Job,
    JobResult,
    JobSource,
    JobSpec,
    JobState,
    RetryPolicy,
    check_json_depth,
    new_job_id,
)
from convkit.logs import bind
from convkit.names import validate_template_name
from convkit.pipeline import ConverterTable, EngineTable, validate_locale
from convkit.plugins import get_plugin_manager
from convkit.ports import (
    Clock,
    DoctorCheck,
    JobPage,
    JobStore,
    Queue,
    Storage,
    Template,
    TemplateSource,
    utcnow,
)
from convkit.registry import Registry
from convkit.runner import Runner, call_event, log_fields
from convkit.settings import Settings, Tenant

__all__ = ["ConvKit", "open_job_store"]

log = logging.getLogger("convkit.service")


def open_job_store(
    settings: Settings, pm: pluggy.PluginManager | None = None, *, clock: Clock = utcnow
) -> JobStore:
    """The job store ``DATABASE_URL`` names, from whichever plugin registers its scheme.

    :raises ConfigError: no plugin registers the scheme.
    :raises BackendUnavailable: the backend's extra is not installed (with the pip hint).
    """
    pm = pm or get_plugin_manager(settings.plugins)
    scheme = settings.database_url.split(":", 1)[0].split("+", 1)[0]
    reg = Registry.from_hook_results("job store", pm.hook.register_job_stores())
    store: JobStore = reg.get(scheme).load()(settings.database_url, settings, clock=clock)
    return store


@attrs.define
class ConvKit:
    """One convkit instance: its plugin manager, backends and settings.

    Build it with :meth:`from_settings`; several can live in one process (tests, multi-tenant apps).
    """

    settings: Settings
    pm: pluggy.PluginManager
    store: JobStore
    storage: Storage
    queue: Queue
    templates: TemplateSource
    engines: EngineTable
    converters: ConverterTable
    clock: Clock = utcnow
    #: This process runs jobs (``convkit worker``, ``serve`` with in-process workers, an
    #: embedding app). ``serve`` sets it False when it runs none (an API-only replica): its
    #: readiness then leaves out the checks marked ``jobs_only`` (the converter).
    runs_jobs: bool = True
    retry: RetryPolicy = attrs.field()
    runner: Runner = attrs.field(init=False)
    _probes: dict[str, _Probe] = attrs.field(factory=dict, init=False, repr=False)
    _closed: bool = False

    @retry.default
    def _retry_default(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.settings.max_attempts)

    def __attrs_post_init__(self) -> None:
        self.runner = Runner(
            settings=self.settings,
            pm=self.pm,
            store=self.store,
            storage=self.storage,
            queue=self.queue,
            templates=self.templates,
            engines=self.engines,
            converters=self.converters,
            retry=self.retry,
            clock=self.clock,
        )
        # A queue that routes by job kind (Celery: conversion and render queues) reads rows
        # through this kit, and its eager mode runs jobs on it.
        self.queue.attach(self)
        call_event(self.pm, "kit_created", kit=self)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        plugins: Iterable[object | str] = (),
        store: JobStore | None = None,
        storage: Storage | None = None,
        queue: Queue | None = None,
        templates: TemplateSource | None = None,
        clock: Clock = utcnow,
        migrate: bool = False,
    ) -> ConvKit:
        """Build every backend the settings name, through the plugin manager.

        Explicit ``store``/``storage``/``queue``/``templates`` win over the settings (tests and
        embedding apps pass their own). With ``migrate=True`` an empty database gets its schema.

        :raises ConfigError: a setting names no backend, or the schema is outdated.
        """
        settings = settings or Settings.from_env()
        pm = get_plugin_manager([*settings.plugins, *plugins])
        settings = settings.with_plugin_settings(pm)  # plugins' own variables, validated
        if storage is None:
            scheme = _url_scheme(settings.storage_url)
            reg = Registry.from_hook_results("storage", pm.hook.register_storages())
            storage = reg.get(scheme, fallback="*").load()(settings.storage_url, settings)
        if settings.result_url_mode == "redirect" and not storage.signed_urls:
            raise ConfigError(
                "RESULT_URL_MODE=redirect needs a storage that signs URLs (S3); "
                f"the {storage.name} storage cannot"
            )
        if store is None:
            store = open_job_store(settings, pm, clock=clock)
            if migrate:
                _migrate_if_empty(store)
        if queue is None:
            reg = Registry.from_hook_results("queue", pm.hook.register_queues())
            queue = reg.get(settings.queue).load()(settings)
        engines = EngineTable.from_plugins(pm, settings)
        if templates is None:
            from convkit.templates import FileTemplateSource

            templates = FileTemplateSource(settings.templates_dir, engines.engines())
        return cls(
            settings=settings,
            pm=pm,
            store=store,
            storage=storage,
            queue=queue,
            templates=templates,
            engines=engines,
            converters=ConverterTable.from_plugins(pm, settings),
            clock=clock,
        )

    # -- client operations -------------------------------------------------------------------
    def submit(
        self,
        tenant: Tenant,
        spec: JobSpec,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate, store and enqueue a template job; return ``(job, created)``.

        A retried submit with the same ``idempotency_key`` returns the first job and
        ``created=False``; the same key with a different request is a 409. Nothing is stored
        when validation fails, and nothing is left behind when the queue is down (503).
        ``request_id`` and ``traceparent`` (the submit request's, as the HTTP layer checked
        them) are stored with the job for the worker's logs and spans.
        """
        spec = self.validate(tenant, spec)
        _check_idempotency_key(idempotency_key)
        # Refuse early while the queue is down: nothing stored, the client backs off (runbook).
        self.queue.check()
        job = self._new_job(tenant, spec, idempotency_key, spec.fingerprint())
        job = attrs.evolve(job, request_id=request_id, traceparent=traceparent)
        return self._store_and_enqueue(job)

    def submit_upload(
        self,
        tenant: Tenant,
        document: IO[bytes],
        *,
        filename: str,
        format: str,  # the API's field name
        locale: str | None = None,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        source_format: str | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[Job, bool]:
        """Store an uploaded document and enqueue its conversion; return ``(job, created)``.

        The document goes through the storage port (``<tenant>/<job-id>/source.<format>``), so a
        worker on another machine can read it. Its format comes from ``source_format`` or the
        file name's suffix. Unsupported pairs and bad options are a 422 before anything is stored;
        a failed submit leaves neither the upload nor a row behind.
        """
        safe_name = _safe_filename(filename)
        suffix = Path(safe_name).suffix
        if not (source_format or suffix):
            raise ValidationError(
                f"cannot tell the document's format from its file name {safe_name!r}: "
                'send source_format (such as "docx")',
                code="missing_source_format",
            )
        src_fmt = normalize_format(source_format or suffix)
        fmt = normalize_format(format)
        locale = validate_locale(locale)
        options = dict(options or {})
        check_json_depth("options", options)
        converter = self.converters.require(src_fmt, fmt)
        converter.validate_options(src_fmt, fmt, options)
        _check_idempotency_key(idempotency_key)
        self.queue.check()
        job_id = new_job_id()
        key = f"{tenant.name}/{job_id}/source.{src_fmt}"
        digest = hashlib.sha256()
        hashing: Any = _HashingReader(document, digest)  # a readable stream is all put() needs
        # From the first byte stored to the row committed, any failure removes the upload:
        # an upload is never left behind without its job.
        try:
            self.storage.put(key, hashing)
            spec = JobSpec(
                template=None,
                format=fmt,
                locale=locale,
                options=options,
                source=JobSource(key=key, format=src_fmt, filename=safe_name),
            )
            request_hash = spec.fingerprint(digest.hexdigest())
            job = attrs.evolve(
                self._new_job(tenant, spec, idempotency_key, request_hash),
                id=job_id,
                request_id=request_id,
                traceparent=traceparent,
            )
            stored, created = self._store_and_enqueue(job)
        except BaseException:
            self.storage.delete_prefix(f"{tenant.name}/{job_id}")
            raise
        if not created:  # an idempotent replay: the first upload is the one that counts
            self.storage.delete_prefix(f"{tenant.name}/{job_id}")
        return stored, created

    def _new_job(
        self, tenant: Tenant, spec: JobSpec, idempotency_key: str | None, request_hash: str
    ) -> Job:
        return Job(
            id=new_job_id(),
            tenant=tenant.name,
            spec=spec,
            status=JobState.QUEUED,
            created_at=self.clock(),
            max_attempts=self.retry.max_attempts,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )

    def _store_and_enqueue(self, job: Job) -> tuple[Job, bool]:
        stored, created = self.store.create(job)
        if not created:
            if stored.request_hash != job.request_hash:
                raise Conflict(
                    "this Idempotency-Key was used for a different request",
                    code="idempotency_conflict",
                )
            return stored, False
        try:
            self.queue.enqueue(stored.id)
        except ConvKitError:
            # No orphaned row: the client was told 503 and will retry.
            self.store.delete(stored.id)
            raise
        except Exception as exc:
            self.store.delete(stored.id)
            raise ServiceUnavailable(f"queue unavailable: {exc}") from exc
        _bind_job(stored)
        log.info("job submitted", extra=log_fields(stored))
        call_event(self.pm, "job_submitted", job=stored)
        if self.queue.completes_on_enqueue:
            # An eager queue (CELERY_TASK_ALWAYS_EAGER) has run the job already: answer with it.
            return self.store.get(stored.id) or stored, True
        return stored, True

    def validate(self, tenant: Tenant, spec: JobSpec) -> JobSpec:
        """Check a spec against the tenant's rights, the templates and the converters; return
        it normalized (format lower-case, locale canonical). Raises 403/422."""
        template = self._load_for(tenant, spec.template, missing_status=422)
        fmt = normalize_format(spec.format)
        locale = validate_locale(spec.locale)
        if fmt != template.format:
            converter = self.converters.require(
                template.format,
                fmt,
                hint=f"template {spec.template!r} renders {template.format}; it cannot be "
                f"converted to {fmt!r} (possible: {', '.join(self.formats_for(template))})",
            )
            converter.validate_options(template.format, fmt, spec.options)
        # Compile now so a syntax error is a 422 at submission, not a failed job later.
        self.engines.for_template(template).check(template)
        self._validate_data(template, spec.data)
        return attrs.evolve(spec, format=fmt, locale=locale)

    def _load_for(self, tenant: Tenant, name: str | None, *, missing_status: int) -> Template:
        """Load a template the tenant may use: 422 for a bad name, 403 when not allowed, then
        404 or 422 (``missing_status``) when absent; the allow-list is checked before existence,
        so a forbidden name never tells whether it exists."""
        name = validate_template_name(name)
        if not tenant.may_use(name, self.settings.allowed_templates):
            raise Forbidden(
                f"template {name!r} is not allowed for this tenant", code="template_not_allowed"
            )
        try:
            return self.templates.load(name)
        except TemplateNotFound as exc:
            if missing_status == 404:
                raise
            raise ValidationError(exc.message, code="template_not_found") from None

    def _validate_data(self, template: Template, data: dict[str, Any]) -> None:
        """Validate job data against ``<name>.schema.json`` beside the template, if there is one."""
        schema = self._schema_for(template)
        if schema is None:
            return
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path)
            raise ValidationError(
                f"data does not match the template's schema at /{path}: {error.message}",
                code="invalid_data",
            )

    def _schema_for(self, template: Template) -> dict[str, Any] | None:
        return self.templates.schema(template.name)

    def template_info(self, tenant: Tenant, name: str) -> dict[str, Any]:
        """What a client needs to build a form: engine, formats and the variables it reads."""
        template = self._load_for(tenant, name, missing_status=404)
        engine = self.engines.for_template(template)
        engine.check(template)
        info: dict[str, Any] = {
            "name": template.name,
            "engine": engine.name,
            "format": template.format,
            "formats": self.formats_for(template),
            "variables": sorted(engine.variables(template)),
            "schema": self._schema_for(template),
        }
        return info

    def formats_for(self, template: Template) -> builtins.list[str]:
        """The template's own format and every format a converter makes of it, sorted."""
        return sorted({template.format} | self.converters.targets(template.format))

    def get(self, tenant: Tenant, job_id: str) -> Job:
        """The tenant's job; another tenant's job is 404 like a missing one (no enumeration)."""
        job = self.store.get(job_id, tenant=tenant.name) if _plausible_id(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        _bind_job(job)
        return job

    def list(
        self,
        tenant: Tenant | None,
        *,
        status: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """The tenant's jobs (every tenant's with None: operators), only those in ``status``
        if given, newest first; 422 for a malformed cursor."""
        name = None if tenant is None else tenant.name
        return self.store.list(name, status=status, limit=limit, cursor=cursor)

    def retry_job(self, tenant: Tenant | None, job_id: str) -> Job:
        """Put a failed job back in the queue with fresh attempts (``attempts`` 0; its last
        error stays until an attempt finishes) and enqueue it; return it, queued. ``tenant``
        None: any tenant's job (operators, ``convkit jobs retry``).

        :raises NotFound: no such job (for this tenant): ``job_not_found``.
        :raises Conflict: the job is not failed: ``job_not_failed``.
        :raises ServiceUnavailable: the queue is down; nothing changed.
        """
        name = None if tenant is None else tenant.name
        job = self.store.get(job_id, tenant=name) if _plausible_id(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        self.queue.check()
        if not self.store.retry(job.id):
            now = self.store.get(job.id) or job
            raise Conflict(
                f"job {job_id} is {now.status.value}; only a failed job can be retried",
                code="job_not_failed",
            )
        log.info("job retried", extra=log_fields(job))
        try:
            self.queue.enqueue(job.id)
        except Exception:  # the row says queued: the sweeper enqueues it
            log.warning("enqueue after retry failed", extra=log_fields(job), exc_info=True)
        return self.store.get(job.id) or job

    def delete(self, tenant: Tenant, job_id: str) -> None:
        """Delete the artifact, then the row (so a retried DELETE after a failure finishes)."""
        self.runner.purge(self.get(tenant, job_id))

    def open_result(self, tenant: Tenant, job_id: str) -> tuple[Job, Iterator[bytes]]:
        """The finished job and its artifact's bytes; 409 while it is not succeeded."""
        job, result = self._succeeded(tenant, job_id)
        try:
            return job, self.storage.iter_chunks(result.key)
        except FileNotFoundError:
            raise _result_missing(job_id) from None

    def result_url(self, tenant: Tenant, job_id: str) -> str:
        """A signed URL reading the finished job's artifact for RESULT_URL_TTL_SECONDS
        (``RESULT_URL_MODE=redirect``); 409 while it is not succeeded, 404 when it is gone."""
        _, result = self._succeeded(tenant, job_id)
        if not self.storage.exists(result.key):
            raise _result_missing(job_id)
        return self.storage.signed_url(result.key, expires_s=self.settings.result_url_ttl_seconds)

    def _succeeded(self, tenant: Tenant, job_id: str) -> tuple[Job, JobResult]:
        job = self.get(tenant, job_id)
        if job.status is JobState.FAILED:
            raise JobNotFinished(f"job {job_id} failed; it has no result", code="job_failed")
        if job.status is not JobState.SUCCEEDED or job.result is None:
            raise JobNotFinished(f"job {job_id} is {job.status.value}; poll until succeeded")
        return job, job.result

    def template_names(self, tenant: Tenant) -> builtins.list[str]:
        return [
            n for n in self.templates.names() if tenant.may_use(n, self.settings.allowed_templates)
        ]

    def doctor_checks(self) -> builtins.list[DoctorCheck]:
        """Every check of this instance: the ports' own (database, queue, storage, converter,
        all readiness checks) and those plugins add through the ``doctor_checks`` hook."""
        checks = [
            DoctorCheck("database", _ok(self.store.check), readiness=True),
            DoctorCheck("queue", _ok(self.queue.check), readiness=True),
            DoctorCheck("storage", _ok(self.storage.check), readiness=True),
            DoctorCheck("converter", _ok(self._check_converters), readiness=True, jobs_only=True),
        ]
        for extra in self.pm.hook.doctor_checks(kit=self):
            checks.extend(extra)
        return checks

    def ready(self, *, details: bool = True) -> dict[str, str]:
        """Readiness of what this process uses: ``{"database": "ok", "queue": "...error..."}``
        (the readiness checks of :meth:`doctor_checks`, without the ``jobs_only`` ones unless
        :attr:`runs_jobs`). A failing one shows its error message, or ``"failing"`` without
        ``details`` (for callers without a key)."""
        checks = [
            c for c in self.doctor_checks() if c.readiness and (self.runs_jobs or not c.jobs_only)
        ]
        out: dict[str, str] = {}
        for check in checks:
            probe = self._probes.setdefault(check.name, _Probe())
            healthy, detail = probe.result(check, READY_CHECK_TIMEOUT_S)
            out[check.name] = "ok" if healthy else (detail if details else "failing")
        return out

    def _check_converters(self) -> None:
        for converter in self.converters:
            converter.check()

    # -- worker side (see convkit.runner) ----------------------------------------------------------
    def run_job(self, job_id: str) -> Job | None:
        """Claim ``job_id`` and run one attempt (:meth:`convkit.runner.Runner.run_job`)."""
        return self.runner.run_job(job_id)

    def sweep(self) -> int:
        """Re-enqueue jobs nobody holds (:meth:`convkit.runner.Runner.sweep`)."""
        return self.runner.sweep()

    def cleanup(self) -> int:
        """Delete expired jobs and their files (:meth:`convkit.runner.Runner.cleanup`)."""
        return self.runner.cleanup()

    def close(self) -> None:
        """Stop the queue and release backends; converters shut down for good (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.queue.stop()
        self.queue.close()
        self.converters.shutdown()
        self.store.close()


def _bind_job(job: Job) -> None:
    """The rest of this request's log lines (its access line too) name the job it is about."""
    bind(job_id=job.id, user_id=job.tenant, template=job.template)


#: Longest a readiness check may keep ``GET /ready`` waiting, in seconds. A check still running
#: then reports failing, and keeps running alone: one thread per check however many probes
#: come in, so a hung dependency (an S3 endpoint that accepts and never answers) cannot pile up
#: threads and starve the API's other requests (Kubernetes' own probe timeout is 1 s).
READY_CHECK_TIMEOUT_S = 2.0


@attrs.define
class _Probe:
    """One readiness check run at most once at a time (single-flight), waited for with a
    timeout."""

    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _thread: threading.Thread | None = None
    _last: tuple[bool, str] = (False, "not checked yet")

    def result(self, check: DoctorCheck, timeout: float) -> tuple[bool, str]:
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._run, args=(check,), name=f"convkit-ready-{check.name}"
                )
                thread.daemon = True
                self._thread = thread
                thread.start()
        thread.join(timeout)
        if thread.is_alive():
            return False, f"no answer within {timeout:g} s"
        return self._last

    def _run(self, check: DoctorCheck) -> None:
        self._last = check.result()


def _ok(check: Callable[[], None]) -> Callable[[], str]:
    def run() -> str:
        check()
        return "ok"

    return run


def _migrate_if_empty(store: JobStore) -> None:
    """Create the schema of a never-migrated database; refuse to run on an outdated one (an
    upgrade is `convkit migrate`'s deliberate step, before new code rolls out)."""
    if not store.needs_migration():
        return
    if store.is_empty():
        store.migrate()
        return
    raise ConfigError("the job database schema is outdated: run `convkit migrate` first")


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise ValidationError(
            "Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key"
        )


def _safe_filename(name: str) -> str:
    """The last path part of a client's file name, reduced to safe characters."""
    base = re.split(r"[\\/]", name or "")[-1].strip()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    if len(base) > 200:  # shorten the stem, keep the suffix: it tells the format
        stem, dot, ext = base.rpartition(".")
        base = f"{stem[: 199 - len(ext)]}.{ext}" if dot and len(ext) <= 10 else base[:200]
    return base or "document"


class _HashingReader:
    """Wraps a binary stream, hashing what is read (the upload's fingerprint, in one pass)."""

    def __init__(self, stream: IO[bytes], digest: Any) -> None:
        self._stream = stream
        self._digest = digest

    def read(self, n: int = -1) -> bytes:
        chunk = self._stream.read(n)
        self._digest.update(chunk)
        return chunk


def _result_missing(job_id: str) -> NotFound:
    return NotFound(f"the result of job {job_id} is gone", code="result_missing")


def _plausible_id(job_id: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f-]{36}", job_id))


def _url_scheme(url: str) -> str:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", url)
    # A Windows drive letter or a plain path is local.
    return m.group(1).lower() if m and len(m.group(1)) > 1 else "file"
