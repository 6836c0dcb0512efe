"""How a template error names its place: one formatter for every engine."""

from __future__ import annotations

from convkit.ports import Template

__all__ = ["where"]


def where(template: Template, line: int | None) -> str:
    """The prefix of every template error message: ``template 'name' (origin), line N``."""
    where = f"template {template.name!r}"
    if template.origin != "<memory>":
        where += f" ({template.origin})"
    return f"{where}, line {line}" if line else where
