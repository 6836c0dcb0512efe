"""One call to render a document without a server or a database."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convkit.errors import TemplateNotFound, ValidationError
from convkit.formats import normalize_format
from convkit.plugins import get_plugin_manager
from convkit.ports import Template
from convkit.service import (
    EngineTable,
    converters_from_plugins,
    find_converter,
    validate_locale,
)
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

    The file's suffix picks the engine (``.html``, ``.txt``, …); ``to`` is the output format
    (default: the template's own, so no conversion runs). Uses the same plugins, engines and
    converters as the service; ``settings`` default to the environment's (``CONVKIT_PLUGINS``,
    ``OFFICE_TIMEOUT_SECONDS``).
    """
    path = Path(template)
    if not path.is_file():
        raise TemplateNotFound(f"no template file {str(path)!r}")
    if not isinstance(data, dict):
        raise ValidationError("data must be a JSON object (a dict)", code="invalid_field")
    settings = settings or Settings.from_env()
    pm = get_plugin_manager([*settings.plugins, *plugins])
    settings = settings.with_plugin_settings(pm)
    engine, fmt = EngineTable.from_plugins(pm, settings).for_suffix(path.suffix)
    tpl = Template(
        name=path.stem,
        engine=engine.name,
        format=fmt,
        source=path.read_bytes(),
        origin=str(path),
    )
    locale = validate_locale(locale)
    doc = engine.render(tpl, data, locale=locale, options=options or {})
    target = normalize_format(to) if to else doc.format
    if target == doc.format:
        return doc.content
    converters = converters_from_plugins(pm, settings)
    converter = find_converter(converters, doc.format, target)
    if converter is None:
        raise ValidationError(f"cannot convert {doc.format} to {target}", code="unsupported_format")
    try:
        with tempfile.TemporaryDirectory(prefix="convkit-render-") as tmp:
            src = Path(tmp) / f"input.{doc.format}"
            dst = Path(tmp) / f"output.{target}"
            src.write_bytes(doc.content)
            converter.convert(
                src,
                dst,
                source_format=doc.format,
                target_format=target,
                options=options or {},
                locale=locale,
            )
            return dst.read_bytes()
    finally:
        for c in converters:
            c.close()


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
    converters = converters_from_plugins(pm, settings)
    try:
        converter = find_converter(converters, source, target)
        if converter is None:
            raise ValidationError(f"cannot convert {source} to {target}", code="unsupported_format")
        converter.validate_options(source, target, options or {})
        with tempfile.TemporaryDirectory(prefix="convkit-convert-") as tmp:
            dst = Path(tmp) / f"output.{target}"
            converter.convert(
                path,
                dst,
                source_format=source,
                target_format=target,
                options=options or {},
                locale=locale,
            )
            return dst.read_bytes()
    finally:
        for c in converters:
            c.close()
