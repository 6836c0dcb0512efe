"""The ConvKit service: submit, get, list, delete, open a result, run a job, sweep, clean up.

Framework-free: the HTTP layer, the CLI and embedding apps all call this one object.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import attrs
import pluggy

from convkit.errors import (
    Conflict,
    ConvKitError,
    Forbidden,
    JobNotFinished,
    NotFound,
    ServiceUnavailable,
    TemplateNotFound,
    ValidationError,
)
from convkit.formats import media_type, normalize_format
from convkit.job import (
    Job,
    JobError,
    JobResult,
    JobSource,
    JobSpec,
    JobState,
    RetryPolicy,
    check_json_depth,
    compute_backoff,
    new_job_id,
)
from convkit.plugins import get_plugin_manager
from convkit.ports import (
    Clock,
    Converter,
    JobPage,
    JobStore,
    Queue,
    Storage,
    Template,
    TemplateEngine,
    TemplateSource,
    utcnow,
)
from convkit.registry import Registry
from convkit.settings import Settings, Tenant
from convkit.templating.scope import MAX_IMAGE_BYTES, image_loader_scope

__all__ = ["ConvKit", "EngineTable", "validate_locale"]

log = logging.getLogger("convkit.service")

_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_locale(locale: object) -> str | None:
    """Return a normalized locale (``en_US``) or None; unknown locales -> 422 invalid_locale."""
    if locale is None:
        return None
    if not isinstance(locale, str) or not _LOCALE.match(locale):
        raise ValidationError(f"invalid locale {locale!r}", code="invalid_locale")
    import babel

    try:
        parsed = babel.Locale.parse(locale.replace("-", "_"))
    except (ValueError, babel.UnknownLocaleError):
        raise ValidationError(f"unknown locale {locale!r}", code="invalid_locale") from None
    # Babel fills in "likely" values (und -> en_US, zh_Hant_HK_x -> zh_Hans_HK): a locale it
    # had to change is not the one the client asked for.
    parts = re.split(r"[_-]", locale)
    wanted_script = next((p for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
    wanted_territory = next(
        (p for p in parts[1:] if (len(p) == 2 and p.isalpha()) or (len(p) == 3 and p.isdigit())),
        None,
    )
    if (
        parts[0].lower() != parsed.language
        or (wanted_script and wanted_script.title() != parsed.script)
        or (wanted_territory and wanted_territory.upper() != parsed.territory)
        or len(parts) > 1 + bool(wanted_script) + bool(wanted_territory)
    ):
        raise ValidationError(f"unknown locale {locale!r}", code="invalid_locale")
    return str(parsed)


@attrs.define
class EngineTable:
    """Template engines by name and by suffix, built from ``register_template_engines``."""

    by_name: dict[str, TemplateEngine]

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager, settings: Settings) -> EngineTable:
        from convkit.errors import ConfigError

        by_name: dict[str, TemplateEngine] = {}
        seen_suffix: dict[str, str] = {}
        for engines in reversed(pm.hook.register_template_engines(settings=settings)):
            for engine in engines:
                if engine.name in by_name:
                    raise ConfigError(f"two plugins register the template engine {engine.name!r}")
                for suffix in engine.suffixes:
                    if suffix in seen_suffix:
                        raise ConfigError(
                            f"template engines {seen_suffix[suffix]!r} and {engine.name!r} "
                            f"both claim {suffix!r}"
                        )
                    seen_suffix[suffix] = engine.name
                by_name[engine.name] = engine
        return cls(by_name)

    def engines(self) -> list[TemplateEngine]:
        return list(self.by_name.values())

    def for_suffix(self, suffix: str) -> tuple[TemplateEngine, str]:
        for engine in self.by_name.values():
            if suffix.lower() in engine.suffixes:
                return engine, engine.suffixes[suffix.lower()]
        known = sorted(s for e in self.by_name.values() for s in e.suffixes)
        raise ValidationError(
            f"no template engine handles {suffix!r} files (known: {', '.join(known)})",
            code="unsupported_template",
        )


def converters_from_plugins(pm: pluggy.PluginManager, settings: Settings) -> list[Converter]:
    # pluggy answers later-registered plugins first: third-party converters win a pair.
    results = pm.hook.register_converters(settings=settings, hook=pm.hook)
    return [c for result in results for c in result]


def find_converter(converters: Iterable[Converter], source: str, target: str) -> Converter | None:
    for converter in converters:
        if target in converter.targets(source):
            return converter
    return None


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
    converters: builtins.list[Converter]
    clock: Clock = utcnow
    retry: RetryPolicy = attrs.field()
    _timers: set[threading.Timer] = attrs.field(factory=set, repr=False)
    _closed: bool = False

    @retry.default
    def _retry_default(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.settings.max_attempts)

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
        """
        settings = settings or Settings.from_env()
        pm = get_plugin_manager([*settings.plugins, *plugins])
        settings = settings.with_plugin_settings(pm)  # plugins' own variables, validated
        if store is None:
            scheme = settings.database_url.split(":", 1)[0].split("+", 1)[0]
            reg = Registry.from_hook_results("job store", pm.hook.register_job_stores())
            store = reg.get(scheme).load()(settings.database_url, settings, clock=clock)
            if migrate:
                _migrate_if_empty(store)
        if storage is None:
            scheme = _url_scheme(settings.storage_url)
            reg = Registry.from_hook_results("storage", pm.hook.register_storages())
            storage = reg.get(scheme, fallback="*").load()(settings.storage_url, settings)
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
            converters=converters_from_plugins(pm, settings),
            clock=clock,
        )

    # -- client operations -------------------------------------------------------------------
    def submit(
        self, tenant: Tenant, spec: JobSpec, *, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Validate, store and enqueue a template job; return ``(job, created)``.

        A retried submit with the same ``idempotency_key`` returns the first job and
        ``created=False``; the same key with a different request is a 409. Nothing is stored
        when validation fails, and nothing is left behind when the queue is down (503).
        """
        spec = self.validate(tenant, spec)
        _check_idempotency_key(idempotency_key)
        # Refuse early while the queue is down: nothing stored, the client backs off (runbook).
        self.queue.check()
        job = self._new_job(tenant, spec, idempotency_key, spec.fingerprint())
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
    ) -> tuple[Job, bool]:
        """Store an uploaded document and enqueue its conversion; return ``(job, created)``.

        The document goes through the storage port (``<tenant>/<job-id>/source.<format>``), so a
        worker on another machine can read it. Its format comes from ``source_format`` or the
        file name's suffix. Unsupported pairs and bad options are a 422 before anything is stored;
        a failed submit leaves neither the upload nor a row behind.
        """
        safe_name = _safe_filename(filename)
        src_fmt = normalize_format(source_format or Path(safe_name).suffix or "")
        fmt = normalize_format(format)
        locale = validate_locale(locale)
        options = dict(options or {})
        check_json_depth("options", options)
        converter = find_converter(self.converters, src_fmt, fmt)
        if converter is None:
            raise ValidationError(f"cannot convert {src_fmt} to {fmt}", code="unsupported_format")
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
                self._new_job(tenant, spec, idempotency_key, request_hash), id=job_id
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
        log.info("job submitted", extra=_log_fields(stored))
        self._event("job_submitted", job=stored)
        return stored, True

    def validate(self, tenant: Tenant, spec: JobSpec) -> JobSpec:
        """Check a spec against the tenant's rights, the templates and the converters; return
        it normalized (format lower-case, locale canonical). Raises 403/422."""
        template = self._load_for(tenant, spec.template, missing_status=422)
        fmt = normalize_format(spec.format)
        locale = validate_locale(spec.locale)
        converter = None
        if fmt != template.format:
            converter = find_converter(self.converters, template.format, fmt)
        if fmt != template.format and converter is None:
            raise ValidationError(
                f"template {spec.template!r} renders {template.format}; it cannot be converted "
                f"to {fmt!r} (possible: {', '.join(self.formats_for(template))})",
                code="unsupported_format",
            )
        if converter is not None:
            converter.validate_options(template.format, fmt, spec.options)
        # Compile now so a syntax error is a 422 at submission, not a failed job later.
        self._engine(template).check(template)
        self._validate_data(template, spec.data)
        return attrs.evolve(spec, format=fmt, locale=locale)

    def _load_for(self, tenant: Tenant, name: str | None, *, missing_status: int) -> Template:
        """Load a template the tenant may use: 422 for a bad name, 403 when not allowed, then
        404 or 422 (``missing_status``) when absent; the allow-list is checked before existence,
        so a forbidden name never tells whether it exists."""
        if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
            raise ValidationError(f"invalid template name {name!r}", code="invalid_template_name")
        if not tenant.may_use(name, self.settings.allowed_templates):
            raise Forbidden(
                f"template {name!r} is not allowed for this client", code="template_not_allowed"
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
        loader = getattr(self.templates, "schema", None)
        if loader is None:
            return None
        schema: dict[str, Any] | None = loader(template.name)
        return schema

    def template_info(self, tenant: Tenant, name: str) -> dict[str, Any]:
        """What a client needs to build a form: engine, formats and the variables it reads."""
        template = self._load_for(tenant, name, missing_status=404)
        engine = self._engine(template)
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
        out = {template.format}
        for converter in self.converters:
            out |= converter.targets(template.format)
        return sorted(out)

    def get(self, tenant: Tenant, job_id: str) -> Job:
        """The tenant's job; another tenant's job is 404 like a missing one (no enumeration)."""
        job = self.store.get(job_id, tenant=tenant.name) if _plausible_id(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        return job

    def list(self, tenant: Tenant, *, limit: int = 50, cursor: str | None = None) -> JobPage:
        return self.store.list(tenant.name, limit=limit, cursor=cursor)

    def delete(self, tenant: Tenant, job_id: str) -> None:
        """Delete the artifact, then the row (so a retried DELETE after a failure finishes)."""
        job = self.get(tenant, job_id)
        self._delete(job)

    def _delete(self, job: Job) -> None:
        # Artifacts, row, artifacts again: a worker finishing between the first two steps
        # stores its result while the row still exists; the second pass removes it, and a
        # worker finishing after the row is gone is fenced out and removes its own.
        self.storage.delete_prefix(_job_prefix(job))
        deleted = self.store.delete(job.id)
        self.storage.delete_prefix(_job_prefix(job))
        if deleted:
            log.info("job deleted", extra=_log_fields(job))
            self._event("job_deleted", job=job)

    def open_result(self, tenant: Tenant, job_id: str) -> tuple[Job, Iterator[bytes]]:
        """The finished job and its artifact's bytes; 409 while it is not succeeded."""
        job = self.get(tenant, job_id)
        if job.status is JobState.FAILED:
            raise JobNotFinished(f"job {job_id} failed; it has no result", code="job_failed")
        if job.status is not JobState.SUCCEEDED or job.result is None:
            raise JobNotFinished(f"job {job_id} is {job.status.value}; poll until succeeded")
        try:
            return job, self.storage.iter_chunks(job.result.key)
        except FileNotFoundError:
            raise NotFound(f"the result of job {job_id} is gone", code="result_missing") from None

    def template_names(self, tenant: Tenant) -> builtins.list[str]:
        return [
            n for n in self.templates.names() if tenant.may_use(n, self.settings.allowed_templates)
        ]

    def ready(self) -> dict[str, str]:
        """Readiness of each dependency: ``{"database": "ok", "queue": "...error..."}``."""
        out: dict[str, str] = {}
        checks = {
            "database": self.store.check,
            "queue": self.queue.check,
            "storage": self.storage.check,
            "converter": self._check_converters,
        }
        for name, check in checks.items():
            try:
                check()
                out[name] = "ok"
            except Exception as exc:
                out[name] = str(exc) or type(exc).__name__
        return out

    def _check_converters(self) -> None:
        for converter in self.converters:
            converter.check()

    # -- worker side -------------------------------------------------------------------------
    def run_job(self, job_id: str) -> Job | None:
        """Claim ``job_id`` and run one attempt. Safe to call for any id, any number of times:
        a job someone else holds, or that is finished, is left alone (returns None)."""
        job = self.store.claim(job_id, lease_s=self.settings.job_lease_seconds)
        if job is None:
            return None
        fields = _log_fields(job)
        log.info("job started", extra={**fields, "attempt": job.attempts})
        self._event("job_started", job=job)
        started = time.monotonic()
        error: JobError
        retryable: bool
        with _LeaseKeeper(self.store, job, self.settings.job_lease_seconds):
            try:
                result = self._produce(job)
            except ConvKitError as exc:
                error, retryable = JobError(exc.code, exc.message), exc.retryable
            except Exception as exc:
                log.exception("job crashed", extra=fields)
                error = JobError("internal_error", f"{type(exc).__name__}: {exc}")
                retryable = True
            else:
                return self._finish_success(job, result, time.monotonic() - started)
        return self._finish_failure(job, error, retryable)

    def _finish_success(self, job: Job, result: JobResult, duration: float) -> Job | None:
        if not self.store.succeed(job.id, job.attempts, result):
            # Fenced out: the job was deleted meanwhile, or our lease was taken over. Only a
            # deleted job's artifact must go; a newer attempt writes the same key itself.
            if self.store.get(job.id) is None:
                self.storage.delete_prefix(_job_prefix(job))
            log.warning("job outcome discarded (lease lost or job deleted)", extra=_log_fields(job))
            return None
        done = self.store.get(job.id) or job
        log.info(
            "job succeeded",
            extra={**_log_fields(done), "attempt": job.attempts, "duration_s": round(duration, 3)},
        )
        self._event("job_succeeded", job=done, duration_s=duration)
        return done

    def _finish_failure(self, job: Job, error: JobError, retryable: bool) -> Job | None:
        will_retry = retryable and job.attempts < job.max_attempts
        if will_retry:
            delay = compute_backoff(job.attempts, self.retry)
            ok = self.store.requeue(job.id, job.attempts, error, delay_s=delay)
            if ok:
                self._enqueue_later(job.id, delay)
        else:
            ok = self.store.fail(job.id, job.attempts, error)
        if not ok:
            return None
        log.warning(
            "job attempt failed" if will_retry else "job failed",
            extra={
                **_log_fields(job),
                "attempt": job.attempts,
                "error_code": error.code,
                "error_message": error.message,
            },
        )
        self._event("job_failed", job=job, error=error, will_retry=will_retry)
        return self.store.get(job.id)

    def _enqueue_later(self, job_id: str, delay: float) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            try:
                self.queue.enqueue(job_id)
            except Exception:  # the sweeper will find it: the row says queued
                log.warning("re-enqueue failed", extra={"job_id": job_id}, exc_info=True)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _produce(self, job: Job) -> JobResult:
        """Render (or fetch the upload), convert if needed, store. Idempotent: the key is fixed
        per job."""
        if job.spec.source is not None:
            return self._produce_upload(job, job.spec.source)
        if job.template is None:
            raise ValidationError(
                "a job needs a template or an uploaded document", code="invalid_job"
            )
        template = self.templates.load(job.template)
        with image_loader_scope(self._image_loader(job.tenant)):
            doc = self._engine(template).render(
                template, job.spec.data, locale=job.spec.locale, options=job.spec.options
            )
        filename = f"{job.template}.{job.format}"
        key = f"{_job_prefix(job)}/{filename}"
        if doc.format == job.format:
            size = self.storage.put(key, doc.content)
        else:
            converter = find_converter(self.converters, doc.format, job.format)
            if converter is None:  # the converter table changed since submission
                raise ValidationError(
                    f"cannot convert {doc.format} to {job.format}", code="unsupported_format"
                )
            with tempfile.TemporaryDirectory(prefix="convkit-job-") as tmp:
                src = Path(tmp) / f"input.{doc.format}"
                dst = Path(tmp) / f"output.{job.format}"
                src.write_bytes(doc.content)
                converter.convert(
                    src,
                    dst,
                    source_format=doc.format,
                    target_format=job.format,
                    options=job.spec.options,
                    locale=job.spec.locale,
                )
                size = self.storage.put_file(key, dst)
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
        converter = find_converter(self.converters, source.format, job.format)
        if converter is None:
            raise ValidationError(
                f"cannot convert {source.format} to {job.format}", code="unsupported_format"
            )
        filename = f"{Path(source.filename).stem or 'document'}.{job.format}"
        # The download keeps the client's name; the storage key only takes key-safe characters.
        key_name = re.sub(r"[^A-Za-z0-9._@+=-]", "_", filename).lstrip("._-") or "document"
        suffix = f".{job.format}"
        if len(key_name) > 200:  # a key segment holds at most 200 characters
            key_name = key_name[: 200 - len(suffix)] + suffix
        if key_name == f"source.{job.format}":  # never overwrite the upload with its result
            key_name = f"result.{job.format}"
        key = f"{_job_prefix(job)}/{key_name}"
        with tempfile.TemporaryDirectory(prefix="convkit-job-") as tmp:
            src = Path(tmp) / f"input.{source.format}"
            dst = Path(tmp) / f"output.{job.format}"
            try:
                with self.storage.open(source.key) as fh, open(src, "wb") as out:
                    shutil.copyfileobj(fh, out, 1024 * 1024)
            except FileNotFoundError:
                raise ValidationError(
                    "the uploaded document is gone", code="source_missing"
                ) from None
            converter.convert(
                src,
                dst,
                source_format=source.format,
                target_format=job.format,
                options=job.spec.options,
                locale=job.spec.locale,
            )
            size = self.storage.put_file(key, dst)
        return JobResult(key=key, filename=filename, media_type=media_type(job.format), size=size)

    def _engine(self, template: Template) -> TemplateEngine:
        try:
            return self.engines.by_name[template.engine]
        except KeyError:
            raise ValidationError(
                f"template {template.name!r} needs the engine {template.engine!r}, "
                "which no plugin provides",
                code="unsupported_template",
            ) from None

    def sweep(self) -> int:
        """Re-enqueue jobs nobody holds (queued, or running with an expired lease) and fail the
        ones whose worker died on their last attempt. Returns how many ids were enqueued."""
        for job in self.store.exhausted():
            error = JobError(
                "worker_lost", "the worker running this job stopped on its last attempt"
            )
            if self.store.fail(job.id, job.attempts, error, lease_expired=True):
                log.warning("job failed", extra={**_log_fields(job), "error_code": error.code})
                self._event("job_failed", job=job, error=error, will_retry=False)
        ids = self.store.claimable()
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
                self._delete(job)
                count += 1
        return count

    def close(self) -> None:
        """Stop workers and timers and release backends (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        self.queue.stop()
        for converter in self.converters:
            # shutdown() where a converter has it: final, unlike close().
            getattr(converter, "shutdown", converter.close)()
        self.store.close()

    # -- helpers -----------------------------------------------------------------------------
    def _event(self, name: str, **kwargs: Any) -> None:
        try:
            getattr(self.pm.hook, name)(**kwargs)
        except Exception:  # a broken plugin never fails a job
            log.exception("plugin hook %s raised", name)


def _migrate_if_empty(store: JobStore) -> None:
    """Create the schema of a never-migrated database; refuse to run on an outdated one (an
    upgrade is `convkit migrate`'s deliberate step, before new code rolls out)."""
    migratable: Any = store
    if not hasattr(migratable, "needs_migration") or not migratable.needs_migration():
        return
    if migratable.is_empty():
        migratable.migrate()
        return
    from convkit.errors import ConfigError

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


def _job_prefix(job: Job) -> str:
    return f"{job.tenant}/{job.id}"


def _plausible_id(job_id: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f-]{36}", job_id))


def _url_scheme(url: str) -> str:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", url)
    # A Windows drive letter or a plain path is local.
    return m.group(1).lower() if m and len(m.group(1)) > 1 else "file"


def _log_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "user_id": job.tenant, "template": job.template}
