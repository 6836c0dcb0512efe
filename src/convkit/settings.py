"""Settings from the environment: declared once, validated, one-line errors naming the variable.

Every variable is a :class:`Setting` declaration: convkit's own are :data:`CORE_SETTINGS`,
plugins add theirs with the ``register_settings`` hook. ``docs/configuration.md`` and
``convkit doctor`` are generated from the same declarations.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from convkit.errors import ConfigError
from convkit.names import TEMPLATE_NAME

if TYPE_CHECKING:
    import pluggy

__all__ = ["CORE_SETTINGS", "TYPES", "Setting", "Settings", "Tenant", "redact_url"]

log = logging.getLogger("convkit.settings")

_ENV = re.compile(r"^[A-Z][A-Z0-9_]*$")

#: The built-in value types of a :class:`Setting` (a callable ``parse(text) -> value`` is the
#: escape hatch for any other syntax).
TYPES = ("str", "bool", "int", "float", "seconds", "url", "list", "json")


@attrs.frozen
class Tenant:
    """Who a key belongs to, and which templates that tenant may use (None: all allowed)."""

    name: str
    allowed_templates: frozenset[str] | None = None

    def may_use(self, template: str, global_allowed: frozenset[str] | None) -> bool:
        for allowed in (global_allowed, self.allowed_templates):
            if allowed is not None and template not in allowed:
                return False
        return True


@attrs.frozen
class Setting:
    """One environment variable: its name, type, default and one-line doc.

    ``type`` is one of :data:`TYPES` or a callable ``parse(text) -> value`` raising
    ``ValueError("lists ...")`` (then ``accepts`` is required). ``"seconds"`` is a number of
    seconds and its name must end in ``_SECONDS``. ``minimum`` bounds ``int``, ``float`` and
    ``seconds``; ``schemes`` limits a ``url`` (``("redis", "rediss")``). ``validator(value)`` runs
    on the parsed value and refuses it with ``ValueError("must ...")``; a ``ValueError``'s message
    follows the variable's name in the one-line error. ``accepts`` replaces the derived "what it
    accepts" text of the docs and errors (``"a whole number >= 1"``). ``field`` is the
    :class:`Settings` attribute of a core setting (plugins' settings have none: read them with
    :meth:`Settings.get`). ``deprecated_names`` are still read, with a warning. A ``secret``
    value is never printed. ``plugin`` is filled in by convkit: the declaring plugin's name.
    """

    env: str
    type: str | Callable[[str], Any]
    default: Any
    doc: str
    validator: Callable[[Any], object] | None = None
    minimum: float | None = None
    schemes: tuple[str, ...] = ()
    accepts: str | None = None
    field: str | None = None
    deprecated_names: tuple[str, ...] = ()
    secret: bool = False
    plugin: str | None = None

    def __attrs_post_init__(self) -> None:
        # A malformed declaration is a plugin author's bug: fail when it is written, not parsed.
        for name in (self.env, *self.deprecated_names):
            if not _ENV.match(name):
                raise ValueError(f"setting name {name!r} is not UPPER_SNAKE_CASE")
        if callable(self.type):
            if not self.accepts:
                raise ValueError(f"{self.env}: a custom type needs accepts='...'")
        elif self.type not in TYPES:
            raise ValueError(f"{self.env}: unknown type {self.type!r}; use one of {TYPES}")
        if self.type == "seconds" and not self.env.endswith("_SECONDS"):
            raise ValueError(f"{self.env}: a duration's name ends in _SECONDS")
        if self.minimum is not None and self.type not in ("int", "float", "seconds"):
            raise ValueError(f"{self.env}: minimum applies to int, float and seconds only")
        if "\n" in self.doc or not self.doc.strip():
            raise ValueError(f"{self.env}: doc must be one line")

    def describe(self) -> str:
        """What the variable accepts, as docs and errors say it (``"a whole number >= 1"``)."""
        if self.accepts:
            return self.accepts
        at_least = "" if self.minimum is None else f" >= {self.minimum:g}"
        described = {
            "str": "a non-empty string",
            "bool": "true or false",
            "int": f"a whole number{at_least}",
            "float": f"a number{at_least}",
            "seconds": f"a number of seconds{at_least}",
            "url": "a URL starting with "
            + (" or ".join(f"{s}://" for s in self.schemes) if self.schemes else "scheme://"),
            "list": "comma-separated values",
            "json": "a JSON value",
        }
        assert isinstance(self.type, str)  # custom types have `accepts`
        return described[self.type]

    def names(self) -> tuple[str, ...]:
        """The variable's name, then its deprecated names."""
        return (self.env, *self.deprecated_names)

    def read(self, environ: Mapping[str, str]) -> Any:
        """The parsed value from ``environ`` (the default when unset).

        Raises :class:`ConfigError` with one line naming the variable that was set. A deprecated
        name is read only when the new one is not set, and warns (logged and
        ``DeprecationWarning``).
        """
        name = self.env
        for old in self.deprecated_names:
            if old in environ:
                ignored = self.env in environ
                message = (
                    f"{old} is deprecated and ignored: {self.env} is set"
                    if ignored
                    else f"{old} is deprecated: rename it to {self.env}"
                )
                log.warning(message)
                warnings.warn(message, DeprecationWarning, stacklevel=3)
                if not ignored:
                    name = old
        if name not in environ:
            return self.default
        return self.parse(environ[name], name)

    def parse(self, raw: str, name: str | None = None) -> Any:
        """``raw`` parsed and validated; errors name ``name`` (default: :attr:`env`)."""
        name = name or self.env
        text = raw.strip()
        if not text:
            # Empty means "off" for a flag and "unset" for a setting without a default; anywhere
            # else it is more likely a broken deployment (`X=$TYPO`) than a wish for the default.
            if self.type == "bool":
                return False
            if self.type == "list":
                return ()
            if self.default is None:
                return None
            raise ConfigError(f"{name} must not be empty")
        try:
            value = self._convert(text, name)
            if self.validator is not None:
                self.validator(value)
        except ValueError as exc:
            raise ConfigError(f"{name} {exc}") from None
        return value

    def _convert(self, text: str, name: str) -> Any:
        shown = "" if self.secret else f", not {text!r}"
        if callable(self.type):
            return self.type(text)
        if self.type == "str":
            return text
        if self.type == "json":
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{name} must be {self.describe()} ({exc})") from None
        if self.type == "bool":
            v = text.lower()
            if v in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return v in ("1", "true", "yes", "on")
            raise ConfigError(f"{name} must be true or false{shown}")
        if self.type == "url":
            # The value is never echoed: a URL may carry a password.
            schemes = "|".join(map(re.escape, self.schemes)) or r"[a-z][a-z0-9+.-]*"
            if not re.match(rf"^(?:{schemes})://", text):
                raise ConfigError(f"{name} must be {self.describe()}")
            return text
        if self.type == "list":
            return tuple(p.strip() for p in text.split(",") if p.strip())
        integer = self.type == "int"
        try:
            n: float = int(text) if integer else float(text)
        except ValueError:
            n = math.nan
        if not math.isfinite(n):
            raise ConfigError(f"{name} must be {self.describe()}{shown}")
        if self.minimum is not None and n < self.minimum:
            raise ConfigError(f"{name} must be >= {self.minimum:g}{shown}")
        return n


# -- core settings: parsers of the syntaxes only convkit's own variables have ----------------------


def _template_names(value: str, sep: str = ",") -> frozenset[str]:
    names = frozenset(n.strip() for n in value.split(sep) if n.strip())
    bad = [n for n in names if not TEMPLATE_NAME.match(n)]
    if bad:
        raise ValueError(f"lists an invalid template name {bad[0]!r}")
    return names


def _parse_api_keys(value: str) -> dict[str, Tenant]:
    """``KEY=TENANT[:TEMPLATE|TEMPLATE...]``, comma-separated. Messages never echo a key."""
    keys: dict[str, Tenant] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        key, eq, rest = entry.partition("=")
        tenant, _, templates = rest.partition(":")
        key, tenant = key.strip(), tenant.strip()
        if not eq or not key or not TEMPLATE_NAME.match(tenant):
            position = len(keys) + 1
            raise ValueError(
                "must be comma-separated KEY=TENANT[:TEMPLATE|TEMPLATE...] entries; "
                f"entry {position} is not"
            )
        if key in keys:
            raise ValueError("lists one key twice")
        allowed = _template_names(templates, "|") if templates else None
        keys[key] = Tenant(tenant, allowed)
    return keys


def _queue_name(value: str) -> str:
    q = value.lower()
    if not TEMPLATE_NAME.match(q):
        raise ValueError(f"must be a queue name of letters, digits, '_', '.', '-', not {q!r}")
    return q


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {value!r}")
    return level


def _log_format(value: str) -> str:
    fmt = value.lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"must be json or text, not {value!r}")
    return fmt


_SQLALCHEMY_URL = (
    "a SQLAlchemy URL such as sqlite:///convkit.db or postgresql+psycopg://user:pass@host/db"
)


def _redis_prefix(value: str) -> str:
    # The queue wraps the prefix in a hash tag ({prefix}): braces would break its keys.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", value):
        raise ValueError(f"must be 1-64 letters, digits or _.:- (no braces), not {value!r}")
    return value


def _storage_options(value: str) -> dict[str, Any]:
    # The value may hold credentials: the error names the problem, never the value.
    try:
        options = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"must be a JSON object ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError(f"must be a JSON object, not a {type(options).__name__}")
    return options


def _result_url_mode(value: str) -> str:
    mode = value.lower()
    if mode not in ("stream", "redirect"):
        raise ValueError(f"must be stream or redirect, not {mode!r}")
    return mode


def _at_most_seven_days(seconds: float) -> None:
    # S3 refuses presigned URLs valid for longer (SigV4's X-Amz-Expires maximum).
    if seconds > 7 * 24 * 3600:
        raise ValueError("must be at most 604800 (7 days)")


def _as_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``, for logs and ``doctor``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", url)


#: convkit's own variables, in the order ``docs/configuration.md`` lists them.
CORE_SETTINGS: tuple[Setting, ...] = (
    Setting("API_KEY", "str", None, "One API key, for the tenant `default`.", secret=True),
    Setting(
        "API_KEYS",
        _parse_api_keys,
        None,
        "Several API keys, each naming its tenant and optionally the templates it may use.",
        accepts="comma-separated KEY=TENANT[:TEMPLATE|TEMPLATE...] entries",
        secret=True,
    ),
    Setting(
        "ALLOWED_TEMPLATES",
        _template_names,
        None,
        "Templates any key may use; others answer 403 (`template_not_allowed`).",
        accepts="comma-separated template names",
        field="allowed_templates",
    ),
    Setting(
        "DATABASE_URL",
        "url",
        "sqlite:///convkit.db",
        "The job database, the source of truth for every job.",
        accepts=_SQLALCHEMY_URL,
        field="database_url",
    ),
    Setting(
        "STORAGE_URL",
        "str",
        "storage",
        "Where artifacts are stored, as `<tenant>/<job-id>/<template>.<format>`.",
        accepts="a folder, a file:// URL, memory:// or an fsspec URL",
        field="storage_url",
    ),
    Setting(
        "STORAGE_OPTIONS",
        _storage_options,
        None,
        "Keyword arguments for the storage's fsspec filesystem (s3fs: `endpoint_url`, `key`, "
        "`secret`, `client_kwargs` ...), passed as they are; never shown or logged.",
        accepts="a JSON object",
        secret=True,
        field="storage_options",
    ),
    Setting(
        "KEEP_UPLOADS",
        "bool",
        False,
        "Keep an upload job's source document after the job succeeded (until the job is deleted).",
        field="keep_uploads",
    ),
    Setting(
        "RESULT_URL_MODE",
        _result_url_mode,
        "stream",
        "`stream`: `GET .../result` streams the artifact; `redirect`: 307 to a signed URL "
        "(a storage that signs, such as S3).",
        accepts="stream or redirect",
        field="result_url_mode",
    ),
    Setting(
        "RESULT_URL_TTL_SECONDS",
        "seconds",
        300.0,
        "How long a signed result URL stays valid (redirect mode).",
        minimum=1,
        validator=_at_most_seven_days,
        field="result_url_ttl_seconds",
    ),
    Setting(
        "STARTUP_WAIT_SECONDS",
        "seconds",
        60.0,
        "`serve`, `worker` and `migrate` wait this long for the database, then fail in one line.",
        minimum=0,
        field="startup_wait_seconds",
    ),
    Setting(
        "TEMPLATES_DIR",
        "str",
        "templates",
        "The folder templates are loaded from, as `<TEMPLATES_DIR>/<name><suffix>`.",
        accepts="a folder",
        field="templates_dir",
    ),
    Setting(
        "FILE_TTL_HOURS",
        "float",
        24.0,
        "`convkit cleanup` deletes jobs older than this with their artifacts (0: never).",
        minimum=0,
        field="file_ttl_hours",
    ),
    Setting(
        "CONVKIT_QUEUE",
        _queue_name,
        "inline",
        "Which queue carries job ids from the API to the workers.",
        accepts="a queue name a plugin registers, any case",
        field="queue",
    ),
    Setting(
        "REDIS_URL",
        "url",
        None,
        "The broker of the `redis` and `celery` queues.",
        schemes=("redis", "rediss"),
        field="redis_url",
    ),
    Setting(
        "REDIS_QUEUE_PREFIX",
        _redis_prefix,
        "convkit",
        "Redis Streams queue: names its keys (`{<prefix>}:jobs`, `{<prefix>}:delayed`).",
        accepts="1-64 letters, digits or _.:- (no braces)",
        field="redis_queue_prefix",
    ),
    Setting(
        "BROKER_TIMEOUT_SECONDS",
        "seconds",
        1.0,
        "Longest wait for the broker when enqueueing or checking it; past it, `POST` answers 503.",
        minimum=0.01,
        field="broker_timeout_seconds",
    ),
    Setting(
        "CELERY_TASK_ALWAYS_EAGER",
        "bool",
        False,
        "Celery queue: run each job inside the submitting call (tests); no broker needed.",
        field="celery_task_always_eager",
    ),
    Setting(
        "CELERY_VISIBILITY_TIMEOUT_SECONDS",
        "seconds",
        3600.0,
        "Celery queue: an unacknowledged message is delivered again after this; must cover the "
        "longest job (see docs/celery.md).",
        minimum=1,
        field="celery_visibility_timeout_seconds",
    ),
    Setting(
        "CELERY_QUEUE_CONVERT",
        _queue_name,
        "convkit-convert",
        "Celery queue: the Celery queue of jobs that need a converter (LibreOffice).",
        accepts="a queue name like convkit-convert",
        field="celery_queue_convert",
    ),
    Setting(
        "CELERY_QUEUE_RENDER",
        _queue_name,
        "convkit-render",
        "Celery queue: the Celery queue of jobs that only render.",
        accepts="a queue name like convkit-render",
        field="celery_queue_render",
    ),
    Setting(
        "WORKER_THREADS",
        "int",
        2,
        "Threads of the inline queue: jobs one process runs at once (0: `serve` runs none).",
        minimum=0,
        field="worker_threads",
    ),
    Setting(
        "JOB_LEASE_SECONDS",
        "seconds",
        30.0,
        "How long a worker holds a running job without renewing it (it renews every third).",
        minimum=0.5,
        field="job_lease_seconds",
    ),
    Setting(
        "SWEEP_INTERVAL_SECONDS",
        "seconds",
        10.0,
        "Pause between two runs of the sweeper, which re-enqueues jobs nobody holds.",
        minimum=0.1,
        field="sweep_interval_seconds",
    ),
    Setting(
        "SHUTDOWN_GRACE_SECONDS",
        "seconds",
        25.0,
        "On SIGTERM, how long running jobs may finish before they are handed back to the queue.",
        minimum=0,
        field="shutdown_grace_seconds",
    ),
    Setting(
        "HEALTH_PORT",
        "int",
        0,
        "Port of `convkit worker`'s probe server (`/health`, `/ready`) on all interfaces (0: off).",
        validator=_port,
        accepts="a port number from 0 to 65535",
        field="health_port",
    ),
    Setting(
        "MAX_ATTEMPTS",
        "int",
        3,
        "How many times a job may run before it fails for good (the first run counts).",
        minimum=1,
        field="max_attempts",
    ),
    Setting(
        "OFFICE_TIMEOUT_SECONDS",
        "seconds",
        60.0,
        "Longest one LibreOffice conversion may take; then its process is killed and restarted.",
        minimum=1,
        field="office_timeout_seconds",
        deprecated_names=("OFFICE_TIMEOUT_S",),
    ),
    Setting(
        "OFFICE_POOL_SIZE",
        "int",
        0,
        "Warm LibreOffice processes converting side by side (0: one per CPU core).",
        minimum=0,
        field="office_pool_size",
    ),
    Setting(
        "OFFICE_MAX_TASKS",
        "int",
        200,
        "A LibreOffice process is replaced by a fresh one after this many conversions.",
        minimum=1,
        field="office_max_tasks",
    ),
    Setting(
        "OFFICE_MAX_RSS_MB",
        "int",
        1024,
        "A LibreOffice process above this resident memory in MiB is replaced (0: no limit).",
        minimum=0,
        field="office_max_rss_mb",
    ),
    Setting(
        "MAX_REQUEST_BYTES",
        "int",
        10 * 1024 * 1024,
        "Largest request body the API reads; larger ones answer 413 (`payload_too_large`).",
        minimum=1,
        field="max_request_bytes",
    ),
    Setting(
        "MAX_UPLOAD_BYTES",
        "int",
        100 * 1024 * 1024,
        "Largest document an upload conversion job accepts; larger ones answer 413.",
        minimum=1,
        field="max_upload_bytes",
    ),
    Setting(
        "LOG_LEVEL",
        _log_level,
        "INFO",
        "Least severe level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
        accepts="DEBUG, INFO, WARNING, ERROR or CRITICAL",
        field="log_level",
    ),
    Setting(
        "LOG_FORMAT",
        _log_format,
        "json",
        "`json`: one JSON object a line, for log collectors; `text`: one plain line, for people.",
        accepts="json or text",
        field="log_format",
    ),
    Setting(
        "METRICS_TOKEN",
        "str",
        None,
        "When set, `convkit serve`'s `GET /metrics` needs `Authorization: Bearer <token>` (else "
        "it is open); a worker's `HEALTH_PORT` serves metrics without it: keep that port "
        "internal.",
        field="metrics_token",
        secret=True,
    ),
    Setting(
        "CONVKIT_PLUGINS",
        "list",
        (),
        "Plugin modules to register besides the built-ins and installed entry points.",
        field="plugins",
    ),
)


def _default(field: str) -> Any:
    """The declared default of a core field, so Settings() and from_env({}) cannot drift."""
    [setting] = [s for s in CORE_SETTINGS if s.field == field]
    return setting.default


def _show(value: Any) -> str:
    if value is None or value == ():
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | frozenset):
        return ", ".join(sorted(value) if isinstance(value, frozenset) else value)
    # The whole user-info goes: for S3 the "user" is the access key id.
    return redact_url(str(value))


@attrs.frozen
class Settings:
    """Everything convkit reads from the environment. Build with :meth:`from_env`.

    Core settings are attributes (``settings.worker_threads``); every declared setting, plugins'
    included, is also ``settings.get("WORKER_THREADS")``.
    """

    #: API key -> tenant, from API_KEY and API_KEYS. Empty means no key is configured
    #: (``serve`` then generates one and prints it once; every other route stays closed).
    api_keys: dict[str, Tenant] = attrs.field(factory=dict, repr=False)
    allowed_templates: frozenset[str] | None = _default("allowed_templates")
    database_url: str = _default("database_url")
    redis_url: str | None = _default("redis_url")
    storage_url: str = _default("storage_url")
    templates_dir: str = _default("templates_dir")
    #: Keyword arguments for the storage's fsspec filesystem; may hold credentials.
    storage_options: dict[str, Any] = attrs.field(default=None, converter=_as_dict, repr=False)
    #: Keep an upload job's source document after the job succeeded.
    keep_uploads: bool = _default("keep_uploads")
    #: ``stream``: GET .../result streams the artifact; ``redirect``: 307 to a signed URL.
    result_url_mode: str = _default("result_url_mode")
    #: How long a signed result URL stays valid (redirect mode).
    result_url_ttl_seconds: float = _default("result_url_ttl_seconds")
    #: ``serve``, ``worker`` and ``migrate`` wait this long for the database before failing.
    startup_wait_seconds: float = _default("startup_wait_seconds")
    #: Artifacts and rows older than this are removed by ``convkit cleanup`` (0: never).
    file_ttl_hours: float = _default("file_ttl_hours")
    celery_task_always_eager: bool = _default("celery_task_always_eager")
    #: Names the Redis keys of ``CONVKIT_QUEUE=redis`` (``{<prefix>}:jobs``, ...).
    redis_queue_prefix: str = _default("redis_queue_prefix")
    #: Longest wait for the broker when publishing or checking it.
    broker_timeout_seconds: float = _default("broker_timeout_seconds")
    #: Redis transport's visibility timeout: an unacknowledged message is delivered again
    #: after it. Must cover the longest job (see convkit.backends.queues.celery).
    celery_visibility_timeout_seconds: float = _default("celery_visibility_timeout_seconds")
    #: Celery queue of jobs that need a converter (LibreOffice) ...
    celery_queue_convert: str = _default("celery_queue_convert")
    #: ... and of jobs that only render.
    celery_queue_render: str = _default("celery_queue_render")
    queue: str = _default("queue")
    max_request_bytes: int = _default("max_request_bytes")
    #: In-process worker threads started by ``serve`` with the inline queue (0: none).
    worker_threads: int = _default("worker_threads")
    #: A running job's lease; renewed every third of it, so a dead worker's job is free
    #: again at most this long after its last heartbeat.
    job_lease_seconds: float = _default("job_lease_seconds")
    sweep_interval_seconds: float = _default("sweep_interval_seconds")
    #: How long a stopping process lets running jobs finish before handing them back.
    shutdown_grace_seconds: float = _default("shutdown_grace_seconds")
    #: ``convkit worker``'s health server port (0: none).
    health_port: int = _default("health_port")
    max_attempts: int = _default("max_attempts")
    #: Longest one LibreOffice conversion may take before its process is killed and restarted.
    office_timeout_seconds: float = _default("office_timeout_seconds")
    #: Warm LibreOffice processes (0: one per CPU core).
    office_pool_size: int = _default("office_pool_size")
    #: A LibreOffice process is recycled after this many conversions ...
    office_max_tasks: int = _default("office_max_tasks")
    #: ... or when its resident memory exceeds this many MiB (0: no limit).
    office_max_rss_mb: int = _default("office_max_rss_mb")
    #: Largest uploaded document for a conversion job (multipart POST /jobs).
    max_upload_bytes: int = _default("max_upload_bytes")
    plugins: tuple[str, ...] = _default("plugins")
    log_level: str = _default("log_level")
    #: ``json`` or ``text``.
    log_format: str = _default("log_format")
    #: The bearer token ``GET /metrics`` requires (None: no token needed).
    metrics_token: str | None = attrs.field(default=_default("metrics_token"), repr=False)
    #: Parsed values of declared settings that have no attribute here (plugins' settings,
    #: API_KEY, API_KEYS), by variable name; unset ones are absent (their default applies).
    values: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    #: Every setting this object knows: the core ones, then those of plugins bound by
    #: :meth:`with_plugin_settings`.
    declarations: tuple[Setting, ...] = attrs.field(default=CORE_SETTINGS, repr=False)
    #: The environment it was read from, so plugins' settings can be read later; empty for
    #: settings built in code.
    source: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read :data:`CORE_SETTINGS` from ``environ`` (default: ``os.environ``).

        Raises :class:`ConfigError` with one line naming the first bad variable. Plugins'
        settings are read by :meth:`with_plugin_settings` once the plugin manager exists (it
        depends on ``CONVKIT_PLUGINS``); ``ConvKit.from_settings`` and ``convkit.render`` do so.
        """
        env = os.environ if environ is None else environ
        fields: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for setting in CORE_SETTINGS:
            value = setting.read(env)
            if setting.field is not None:
                fields[setting.field] = value
            elif any(n in env for n in setting.names()):
                values[setting.env] = value
        keys: dict[str, Tenant] = {}
        if values.get("API_KEY"):
            keys[values["API_KEY"]] = Tenant("default")
        for key, tenant in (values.get("API_KEYS") or {}).items():
            if key in keys:
                raise ConfigError("API_KEYS repeats the key given in API_KEY")
            keys[key] = tenant
        return cls(api_keys=keys, values=values, source=dict(env), **fields)

    def with_plugin_settings(self, pm: pluggy.PluginManager) -> Settings:
        """A copy that also holds the settings ``pm``'s plugins declare (``register_settings``),
        read from :attr:`source`; a value already in :attr:`values` is kept when the
        environment does not set the variable.

        Raises :class:`ConfigError` for a bad value, for a setting declared twice (by two
        plugins, or by a plugin and convkit) and for a declaration that is not a Setting.
        """
        declared = _plugin_declarations(pm)
        values = {s.env: self.values[s.env] for s in CORE_SETTINGS if s.env in self.values}
        for setting in declared:
            if any(n in self.source for n in setting.names()):
                values[setting.env] = setting.read(self.source)
            elif setting.env in self.values:
                values[setting.env] = self.values[setting.env]
        return attrs.evolve(self, values=values, declarations=(*CORE_SETTINGS, *declared))

    def get(self, env: str) -> Any:
        """The value of the declared setting named ``env`` (its default when unset).

        Raises ``KeyError`` when no declaration has that name.
        """
        for setting in self.declarations:
            if setting.env == env:
                if setting.field is not None:
                    return getattr(self, setting.field)
                return self.values.get(env, setting.default)
        raise KeyError(f"no setting named {env!r} is declared")

    def report(self) -> list[tuple[str, str]]:
        """``(name, shown value)`` per declared setting, for ``convkit doctor``: secrets are
        masked, URL passwords hidden, and ``(default)`` or ``(plugin NAME)`` noted."""
        lines = []
        for setting in self.declarations:
            value = self.get(setting.env)
            shown = ("(set, hidden)" if value else "(none)") if setting.secret else _show(value)
            notes = [] if any(n in self.source for n in setting.names()) else ["default"]
            if setting.plugin:
                notes.append(f"plugin {setting.plugin}")
            lines.append((setting.env, f"{shown} ({', '.join(notes)})" if notes else shown))
        return lines

    def tenant_for(self, key: str) -> Tenant | None:
        """The tenant owning ``key`` (constant-time compare against every configured key)."""
        found: Tenant | None = None
        for candidate, tenant in self.api_keys.items():
            # NOTE: no early exit, so timing does not tell which key matched or how many exist.
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = tenant
        return found


def _plugin_declarations(pm: pluggy.PluginManager) -> list[Setting]:
    """Every plugin's ``register_settings`` result, in registration order, each stamped with its
    plugin's name; one variable (or deprecated name) declared twice is a ConfigError."""
    owner = {name: "convkit" for s in CORE_SETTINGS for name in s.names()}
    declared: list[Setting] = []
    # get_hookimpls() lists in registration order; calling each impl names its plugin.
    for impl in pm.hook.register_settings.get_hookimpls():
        returned = impl.function()
        if not isinstance(returned, list | tuple) or not all(
            isinstance(s, Setting) for s in returned
        ):
            raise ConfigError(
                f"plugin {impl.plugin_name!r}: register_settings must return a list of "
                "convkit.settings.Setting"
            )
        for setting in returned:
            for name in setting.names():
                if name in owner:
                    raise ConfigError(
                        f"{name} is declared twice, by {owner[name]!r} and {impl.plugin_name!r}"
                    )
                owner[name] = impl.plugin_name
            declared.append(attrs.evolve(setting, plugin=impl.plugin_name))
    return declared
