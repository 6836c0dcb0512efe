"""Settings from the environment: validated, with a one-line error naming the variable."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import attrs

from convkit.errors import ConfigError

__all__ = ["Settings", "Tenant"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def _bool(var: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{var} must be true or false, not {value!r}")


def _number(var: str, value: str, *, minimum: float, integer: bool = False) -> float:
    kind = "a whole number" if integer else "a number"
    try:
        n = int(value) if integer else float(value)
    except ValueError:
        raise ConfigError(f"{var} must be {kind} >= {minimum:g}, not {value!r}") from None
    if not math.isfinite(n):
        raise ConfigError(f"{var} must be {kind} >= {minimum:g}, not {value!r}")
    if n < minimum:
        raise ConfigError(f"{var} must be >= {minimum:g}, not {value!r}")
    return n


def _templates(var: str, value: str, sep: str = ",") -> frozenset[str]:
    names = frozenset(n.strip() for n in value.split(sep) if n.strip())
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ConfigError(f"{var} lists an invalid template name {bad[0]!r}")
    return names


def _parse_api_keys(value: str) -> dict[str, Tenant]:
    """``KEY=TENANT[:TEMPLATE|TEMPLATE...]``, comma-separated."""
    keys: dict[str, Tenant] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        key, eq, rest = entry.partition("=")
        tenant, _, templates = rest.partition(":")
        key, tenant = key.strip(), tenant.strip()
        if not eq or not key or not _NAME.match(tenant):
            position = len(keys) + 1
            raise ConfigError(
                "API_KEYS must be comma-separated KEY=TENANT[:TEMPLATE|TEMPLATE...] entries; "
                f"entry {position} is not"
            )
        if key in keys:
            raise ConfigError("API_KEYS lists one key twice")
        allowed = _templates("API_KEYS", templates, "|") if templates else None
        keys[key] = Tenant(tenant, allowed)
    return keys


@attrs.frozen
class Settings:
    """Everything convkit reads from the environment. Build with :meth:`from_env`."""

    #: API key -> tenant. Empty means no key is configured (``serve`` then generates one and
    #: prints it once; every other route stays closed).
    api_keys: dict[str, Tenant] = attrs.field(factory=dict, repr=False)
    allowed_templates: frozenset[str] | None = None
    database_url: str = "sqlite:///convkit.db"
    redis_url: str | None = None
    storage_url: str = "storage"
    templates_dir: str = "templates"
    #: Artifacts and rows older than this are removed by ``convkit cleanup`` (0: never).
    file_ttl_hours: float = 24.0
    celery_task_always_eager: bool = False
    queue: str = "inline"
    max_request_bytes: int = 10 * 1024 * 1024
    #: In-process worker threads started by ``serve`` with the inline queue (0: none).
    worker_threads: int = 2
    #: A running job's lease; renewed every third of it, so a dead worker's job is free
    #: again at most this long after its last heartbeat.
    job_lease_seconds: float = 30.0
    sweep_interval_seconds: float = 10.0
    max_attempts: int = 3
    #: Longest one LibreOffice conversion may take before its process is killed and restarted.
    office_timeout_s: float = 60.0
    #: Warm LibreOffice processes (0: one per CPU core).
    office_pool_size: int = 0
    #: A LibreOffice process is recycled after this many conversions ...
    office_max_tasks: int = 200
    #: ... or when its resident memory exceeds this many MiB (0: no limit).
    office_max_rss_mb: int = 1024
    #: Largest uploaded document for a conversion job (multipart POST /jobs).
    max_upload_bytes: int = 100 * 1024 * 1024
    plugins: tuple[str, ...] = ()
    # --- redis queue settings (to convert) ---
    #: Names the Redis keys of ``CONVKIT_QUEUE=redis`` (``{<prefix>}:jobs``, ...).
    redis_queue_prefix: str = "convkit"
    #: Bounds every enqueue and readiness check: the broker's connect and read timeouts.
    broker_timeout_seconds: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kw: dict[str, object] = {}
        keys: dict[str, Tenant] = {}
        if env.get("API_KEY"):
            keys[env["API_KEY"]] = Tenant("default")
        if env.get("API_KEYS"):
            for key, tenant in _parse_api_keys(env["API_KEYS"]).items():
                if key in keys:
                    raise ConfigError("API_KEYS repeats the key given in API_KEY")
                keys[key] = tenant
        kw["api_keys"] = keys
        if env.get("ALLOWED_TEMPLATES", "").strip():
            kw["allowed_templates"] = _templates("ALLOWED_TEMPLATES", env["ALLOWED_TEMPLATES"])
        for var, field in (
            ("DATABASE_URL", "database_url"),
            ("STORAGE_URL", "storage_url"),
            ("TEMPLATES_DIR", "templates_dir"),
        ):
            if var in env:
                if not env[var].strip():
                    raise ConfigError(f"{var} must not be empty")
                kw[field] = env[var].strip()
        if env.get("DATABASE_URL") and not re.match(r"^[a-z][a-z0-9+]*://", env["DATABASE_URL"]):
            raise ConfigError(
                "DATABASE_URL must be a SQLAlchemy URL such as sqlite:///convkit.db or "
                "postgresql+psycopg://user:pass@host/db"
            )
        if env.get("REDIS_URL"):
            if not re.match(r"^rediss?://", env["REDIS_URL"]):
                raise ConfigError("REDIS_URL must start with redis:// or rediss://")
            kw["redis_url"] = env["REDIS_URL"]
        if "FILE_TTL_HOURS" in env:
            kw["file_ttl_hours"] = _number("FILE_TTL_HOURS", env["FILE_TTL_HOURS"], minimum=0)
        if "CELERY_TASK_ALWAYS_EAGER" in env:
            kw["celery_task_always_eager"] = _bool(
                "CELERY_TASK_ALWAYS_EAGER", env["CELERY_TASK_ALWAYS_EAGER"]
            )
        if env.get("CONVKIT_QUEUE"):
            q = env["CONVKIT_QUEUE"].strip().lower()
            if not _NAME.match(q):
                raise ConfigError(f"CONVKIT_QUEUE must be a queue name like inline, not {q!r}")
            kw["queue"] = q
        ints = (
            ("MAX_REQUEST_BYTES", "max_request_bytes", 1),
            ("WORKER_THREADS", "worker_threads", 0),
            ("MAX_ATTEMPTS", "max_attempts", 1),
            ("OFFICE_POOL_SIZE", "office_pool_size", 0),
            ("OFFICE_MAX_TASKS", "office_max_tasks", 1),
            ("OFFICE_MAX_RSS_MB", "office_max_rss_mb", 0),
            ("MAX_UPLOAD_BYTES", "max_upload_bytes", 1),
        )
        for var, field, minimum in ints:
            if var in env:
                kw[field] = int(_number(var, env[var], minimum=minimum, integer=True))
        floats = (
            ("JOB_LEASE_SECONDS", "job_lease_seconds", 0.5),
            ("SWEEP_INTERVAL_SECONDS", "sweep_interval_seconds", 0.1),
            ("OFFICE_TIMEOUT_S", "office_timeout_s", 1),
        )
        for var, field, fmin in floats:
            if var in env:
                kw[field] = _number(var, env[var], minimum=fmin)
        # --- redis queue settings (to convert) ---
        if "REDIS_QUEUE_PREFIX" in env:
            prefix = env["REDIS_QUEUE_PREFIX"].strip()
            # The queue wraps the prefix in a hash tag ({prefix}): braces would break its keys.
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", prefix):
                raise ConfigError(
                    "REDIS_QUEUE_PREFIX must be 1-64 letters, digits or _.:- (no braces), "
                    f"not {prefix!r}"
                )
            kw["redis_queue_prefix"] = prefix
        if "BROKER_TIMEOUT_SECONDS" in env:
            kw["broker_timeout_seconds"] = _number(
                "BROKER_TIMEOUT_SECONDS", env["BROKER_TIMEOUT_SECONDS"], minimum=0.05
            )
        if env.get("CONVKIT_PLUGINS"):
            kw["plugins"] = tuple(p.strip() for p in env["CONVKIT_PLUGINS"].split(",") if p.strip())
        return cls(**kw)  # type: ignore[arg-type]

    def tenant_for(self, key: str) -> Tenant | None:
        """The tenant owning ``key`` (constant-time compare against every configured key)."""
        import hmac

        found: Tenant | None = None
        for candidate, tenant in self.api_keys.items():
            # NOTE: no early exit, so timing does not tell which key matched or how many exist.
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = tenant
        return found
