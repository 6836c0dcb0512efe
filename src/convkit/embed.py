"""One call to render a document without a server or a database."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convkit.errors import TemplateNotFound, ValidationError
from convkit.formats import normalize_format
from convkit.pipeline import ConverterTable, EngineTable, converted, validate_locale
from convkit.plugins import get_plugin_manager
from convkit.ports import Template
from convkit.settings import Settings

__all__ = ["convert", "render"]


def render(
    template: str | Path,
    data: dict[str, Any],
    *,
    to: str | None = None,
    locale: str | None = None,
    options: dict[str, Any] | None = None,
    plugins: Iterable[object | str] = (),
    settings: Settings | None = None,
) -> bytes:
    """Render the template file ``template`` with ``data`` and return the document's bytes.

    The file's suffix picks the engine (``.html``, ``.txt``, ``.docx``, …); ``to`` is the output
    format (default: the template's own, so no conversion runs). Uses the same plugins, engines
    and converters as the service; ``settings`` default to the environment's
    (``CONVKIT_PLUGINS``, ``OFFICE_TIMEOUT_SECONDS``).

    :raises TemplateNotFound: no such file.
    :raises TemplateError: the template fails to render (422 in the API).
    :raises ValidationError: bad data, locale, format or options.
    :raises ConversionError: the converter failed.
    """
    path = Path(template)
    if not path.is_file():
        raise TemplateNotFound(f"no template file {str(path)!r}")
    if not isinstance(data, dict):
        raise ValidationError("data must be a JSON object (a dict)", code="invalid_field")
    settings = settings or Settings.from_env()
    pm = get_plugin_manager([*settings.plugins, *plugins])
    settings = settings.with_plugin_settings(pm)
    engines = EngineTable.from_plugins(pm, settings)
    engine, fmt = engines.for_suffix(path.suffix)
    tpl = Template(
        name=path.stem,
        engine=engine.name,
        format=fmt,
        source=path.read_bytes(),
        origin=str(path),
    )
    locale = validate_locale(locale)
    doc = engines.render(tpl, data, locale=locale, options=options)
    target = normalize_format(to) if to else doc.format
    if target == doc.format:
        return doc.content
    converters = ConverterTable.from_plugins(pm, settings)
    try:
        converter = converters.require(doc.format, target)
        with converted(
            converter,
            doc.content,
            source_format=doc.format,
            target_format=target,
            options=options,
            locale=locale,
        ) as out:
            return out.read_bytes()
    finally:
        converters.close()


def convert(
    document: str | Path,
    to: str,
    *,
    options: dict[str, Any] | None = None,
    locale: str | None = None,
    source_format: str | None = None,
    plugins: Iterable[object | str] = (),
    settings: Settings | None = None,
) -> bytes:
    """Convert the document file ``document`` to the format ``to`` and return its bytes.

    The source format comes from ``source_format`` or the file's suffix. Uses the same
    converters (and option checks) as upload conversion jobs.

    :raises ValidationError: ``document_not_found``, ``unsupported_format``, a bad option.
    :raises ConversionError: the converter failed.
    """
    path = Path(document)
    if not path.is_file():
        raise ValidationError(f"no document file {str(path)!r}", code="document_not_found")
    settings = settings or Settings.from_env()
    source = normalize_format(source_format or path.suffix)
    target = normalize_format(to)
    locale = validate_locale(locale)
    pm = get_plugin_manager([*settings.plugins, *plugins])
    settings = settings.with_plugin_settings(pm)
    converters = ConverterTable.from_plugins(pm, settings)
    try:
        converter = converters.require(source, target)
        converter.validate_options(source, target, options or {})
        with converted(
            converter,
            path,
            source_format=source,
            target_format=target,
            options=options,
            locale=locale,
        ) as out:
            return out.read_bytes()
    finally:
        converters.close()
