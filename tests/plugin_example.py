"""A tiny third-party-style plugin used by the tests: a `.shout` engine that upper-cases, and a
job store under its own ``recording://`` scheme."""

from __future__ import annotations

from typing import Any

from convkit import hookimpl
from convkit.ports import JobStore, RenderedDocument, Template, TemplateEngine
from convkit.registry import BackendSpec


class ShoutEngine(TemplateEngine):
    name = "shout"
    suffixes = {".shout": "txt"}

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        return RenderedDocument(template.source.upper(), "txt")


@hookimpl
def register_template_engines() -> list[TemplateEngine]:
    return [ShoutEngine()]


def create_recording_store(url: str, settings: Any, *, clock: Any) -> JobStore:
    """``recording:///path.db``: the built-in SQL store on an SQLite file, registered under a
    scheme of its own, as a third-party job store would be."""
    from convkit.backends.jobstores.sql.store import create_job_store

    return create_job_store("sqlite:" + url.split(":", 1)[1], clock=clock)


@hookimpl
def register_job_stores() -> list[BackendSpec]:
    return [BackendSpec("recording", "tests.plugin_example:create_recording_store")]
