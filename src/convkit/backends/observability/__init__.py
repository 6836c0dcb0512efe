"""Built-in observability: Prometheus metrics (``convkit[metrics]``) and OpenTelemetry spans
(``convkit[otel]``), each installed per ConvKit instance when its library is there.

Heavy modules beside this one (``prometheus.py``, ``tracing.py``) are imported when a kit is
built, never when the plugin manager is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from convkit.hookspecs import hookimpl
from convkit.settings import Setting

if TYPE_CHECKING:
    from convkit.service import ConvKit


@hookimpl
def register_settings() -> list[Setting]:
    """The metrics' own variables."""
    return [
        Setting(
            "METRICS_TENANT_LABEL",
            "bool",
            False,
            "Add a `tenant` label to the job counters (one series per tenant: few tenants only).",
        ),
        Setting(
            "PROMETHEUS_MULTIPROC_DIR",
            "str",
            None,
            "An empty folder shared by several server processes; read by prometheus_client.",
            accepts="a writable folder",
        ),
    ]


@hookimpl
def kit_created(kit: ConvKit) -> None:
    """Give the new instance its metrics registry and, when configured, its tracer."""
    from convkit.backends.observability import prometheus, tracing

    prometheus.install(kit)
    tracing.install(kit)


@hookimpl
def metrics_exposition(kit: ConvKit) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The Prometheus text exposition of ``kit``'s metrics (404 when metrics are off)."""
    from convkit.backends.observability.prometheus import metrics_response

    return metrics_response(kit)
