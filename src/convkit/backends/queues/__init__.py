"""Built-in queues: ``inline`` (worker threads of this process) and ``redis`` (Redis Streams)."""

from __future__ import annotations

from convkit.hookspecs import hookimpl
from convkit.registry import BackendSpec


@hookimpl
def register_queues() -> list[BackendSpec]:
    """Offer the built-in queue backends."""
    return [
        BackendSpec("inline", "convkit.backends.queues.inline:create_inline_queue"),
        BackendSpec(
            "redis",
            "convkit.backends.queues.redis_streams:create_redis_streams_queue",
            extra="redis",
        ),
    ]
