"""Built-in queues: ``inline`` (worker threads of this process), ``redis`` (Redis Streams,
``convkit[redis]``) and ``celery`` (Celery workers, ``convkit[celery]``)."""

from __future__ import annotations

from convkit.hookspecs import hookimpl
from convkit.registry import BackendSpec


@hookimpl
def register_queues() -> list[BackendSpec]:
    """Offer the built-in queue backends."""
    return [
        BackendSpec("inline", "convkit.backends.queues.inline:create_inline_queue"),
        BackendSpec("celery", "convkit.backends.queues.celery:create_celery_queue", extra="celery"),
        BackendSpec(
            "redis",
            "convkit.backends.queues.redis_streams:create_redis_streams_queue",
            extra="redis",
        ),
    ]
