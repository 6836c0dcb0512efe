"""convkit: templates + JSON data -> documents, and documents -> other formats, as durable jobs."""

from __future__ import annotations

from typing import Any

from convkit.errors import ConvKitError, ConvkitError
from convkit.hookspecs import hookimpl
from convkit.job import Job, JobError, JobResult, JobSpec, JobState, RetryPolicy
from convkit.plugins import get_plugin_manager
from convkit.settings import Setting, Settings, Tenant

__all__ = [
    "ConvKit",
    "ConvKitError",
    "ConvkitError",
    "Job",
    "JobError",
    "JobResult",
    "JobSpec",
    "JobState",
    "RetryPolicy",
    "Setting",
    "Settings",
    "Tenant",
    "__version__",
    "convert",
    "get_plugin_manager",
    "hookimpl",
    "render",
]


def __getattr__(name: str) -> Any:
    # Lazy, so `import convkit` stays cheap and free of SQLAlchemy/Jinja imports.
    if name == "__version__":
        from convkit._version import __version__

        return __version__
    if name == "ConvKit":
        from convkit.service import ConvKit

        return ConvKit
    if name == "render":
        from convkit.embed import render

        return render
    if name == "convert":
        from convkit.embed import convert

        return convert
    raise AttributeError(f"module 'convkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names live in __getattr__ only; list them so dir() and completion show them.
    return sorted(set(__all__) | set(globals()))
