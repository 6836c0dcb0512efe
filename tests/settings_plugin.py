"""A tiny third-party-style plugin that declares settings: a `.repeat` engine repeating the
template's text REPEAT_TIMES times (REPEAT_TOKEN is a secret it never uses)."""

from __future__ import annotations

from typing import Any

from convkit import Settings, hookimpl
from convkit.ports import RenderedDocument, Template, TemplateEngine
from convkit.settings import Setting


def _at_most_ten(value: int) -> None:
    if value > 10:
        raise ValueError(f"must be at most 10, not {value}")


class RepeatEngine(TemplateEngine):
    name = "repeat"
    suffixes = {".repeat": "txt"}

    def __init__(self, times: int) -> None:
        self.times = times

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        return RenderedDocument(template.source * self.times, "txt")


@hookimpl
def register_settings() -> list[Setting]:
    return [
        Setting(
            "REPEAT_TIMES",
            "int",
            2,
            "How often .repeat templates repeat.",
            minimum=1,
            validator=_at_most_ten,
        ),
        Setting("REPEAT_TOKEN", "str", None, "A secret the repeat plugin keeps.", secret=True),
    ]


@hookimpl
def register_template_engines(settings: Settings) -> list[TemplateEngine]:
    return [RepeatEngine(settings.get("REPEAT_TIMES"))]
