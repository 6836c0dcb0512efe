"""A tiny third-party-style plugin used by the tests: a `.shout` engine that upper-cases."""

from __future__ import annotations

from typing import Any

from convkit import hookimpl
from convkit.ports import RenderedDocument, Template, TemplateEngine


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
