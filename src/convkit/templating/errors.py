"""How a template error names its place and which code it carries: one formatter and one
exception table for every engine.

Every message has one shape, and never shows a server path::

    template 't', line 3: 'nope' is undefined                                   (HTML, text)
    template 't', word/document.xml, paragraph 1: tag "{{ nope.attr }}": 'nope' is undefined
    template 't', content.xml, paragraph 1: tag "{{ nope.attr }}": ...          (ODT)
    template 't', sheet 'Sheet1', cell A1: tag "{{ nope.attr }}": ...           (XLSX)

Importing this module imports no template library.
"""

from __future__ import annotations

from convkit.errors import TemplateError
from convkit.ports import Template

__all__ = ["as_template_error", "where"]

#: Longest tag text quoted in a message, in characters.
MAX_TAG_SHOWN = 120


def where(template: Template, *places: str | None, tag: str | None = None) -> str:
    """The prefix of every template error message: the template's name, then each place that is
    not None (``"word/document.xml"``, ``"paragraph 3"``, ``"line 7"``), then the tag, if known.
    """
    text = ", ".join([f"template {template.name!r}", *(p for p in places if p)])
    if tag:
        shown = tag if len(tag) <= MAX_TAG_SHOWN else tag[: MAX_TAG_SHOWN - 3] + "..."
        text += f': tag "{shown}"'
    return text


def as_template_error(exc: BaseException, prefix: str) -> TemplateError:
    """The one exception -> error-code table: ``exc`` (raised while compiling or rendering a
    template) as a TemplateError whose message is ``prefix: <what went wrong>``.

    ``template_limit_exceeded`` for the sandbox's size guards (``'x' * 10**9``), an exhausted
    output budget or deadline (already TemplateErrors with that code) and MemoryError;
    ``template_error`` (or the TemplateError's own code) for everything else.
    """
    from jinja2 import TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

    from convkit.templating.sandbox import TemplateLimitError

    code = "template_error"
    if isinstance(exc, TemplateError):
        message, code = exc.message, exc.code
    elif isinstance(exc, TemplateLimitError):
        message, code = f"sandbox: {exc}", "template_limit_exceeded"
    elif isinstance(exc, SecurityError):
        message = f"sandbox: {exc}"
    elif isinstance(exc, UndefinedError | TemplateSyntaxError):
        message = exc.message or type(exc).__name__
    elif isinstance(exc, RecursionError):
        message = "recursion too deep"
    elif isinstance(exc, MemoryError):
        message, code = "out of memory", "template_limit_exceeded"
    else:
        message = f"{type(exc).__name__}: {exc}"
    return TemplateError(f"{prefix}: {message}", code=code)
